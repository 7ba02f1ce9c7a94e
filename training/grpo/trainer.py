"""GRPO for the PromptLoop policy.

Each step: ``per_device_prompts`` prompts per process, ``num_generations`` rollouts each through
the real loop (:func:`~promptloop.training.rollouts.rollout`); every refinement action of a
trajectory shares its final-image reward; advantages are normalised within each prompt's group;
then ``num_iterations`` optimiser updates on the PPO-clipped token loss, whose ratio is taken
against the log-probs recorded when the rollouts were sampled (+ ``beta`` x k3 KL to the
reference policy: the policy as training started, i.e. the same model with its LoRA adapter
disabled, or with the ``init_adapter`` weights swapped in), each accumulated over
``gradient_accumulation_steps`` micro-batches. The output is a peft adapter directory.

    from promptloop.training.config import load_config
    from promptloop.training.grpo.config import GRPOConfig
    from promptloop.training.grpo.trainer import GRPOTrainer
    GRPOTrainer(load_config(GRPOConfig, "training/configs/grpo_tiny.yaml")).train()
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from promptloop.policies.base import SamplingConfig
from promptloop.policies.transformers import TransformersPolicy
from promptloop.rewards.registry import CombinedReward, get_reward, load_reward
from promptloop.schedule import RefineSchedule
from promptloop.training.grpo.config import GRPOConfig, normalise_scale_rewards
from promptloop.training.grpo.credit import ExploringPolicy
from promptloop.training.grpo.loss import LossStats, best_of_group, group_advantages, grpo_loss, raft_loss
from promptloop.training.grpo.replay import ReplayBuffer
from promptloop.training.grpo.sampling import collect_groups, fresh_prompts
from promptloop.training.grpo.screening import SCREEN_FILE, Screening, screen
from promptloop.training.models import load_backbone, load_policy_model, load_prompts
from promptloop.training.rollouts import ActionRecord, RolloutBatch, concat_groups, rollout
from promptloop.training.runtime import Runtime, derived_seed

logger = logging.getLogger("promptloop.training")


class GRPOTrainer:
    """Train a policy's LoRA adapter with GRPO on rollouts of the loop.

    Args:
        config: a :class:`~promptloop.training.grpo.config.GRPOConfig`.
        pipeline / model / processor / reward: already built objects instead of those the config
            names (the model must be a trainable ``peft`` model).
    """

    def __init__(self, config: GRPOConfig, *, pipeline: Any = None, model: Any = None, processor: Any = None,
                 reward: CombinedReward | None = None) -> None:
        config.validate()
        self.config = config
        self.runtime = Runtime(config)
        device = self.runtime.device
        self.pipeline = pipeline if pipeline is not None else load_backbone(config.backbone, device, config.dtype)
        self.base_path = None
        if model is None:
            model, processor, self.base_path = load_policy_model(config, device)
        self.reward = reward if reward is not None else load_reward(config.reward, config.reward_options)
        self.train_prompts = load_prompts(config.prompts)
        self.eval_prompts = load_prompts(config.eval_prompts)[: config.eval_num_prompts]
        self.eval_metrics = {name: get_reward(name) for name in config.eval_metrics}
        self.scale_rewards = normalise_scale_rewards(config.scale_rewards)
        self.replay = (ReplayBuffer(config.replay_buffer_size, config.replay_threshold)
                       if config.replay_fraction > 0 else None)

        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the policy model has no trainable parameters (expected a peft LoRA model)")
        # The KL reference is the policy as training starts. A fresh LoRA starts as the base model
        # (its adapter disabled); a started adapter is kept as a copy of its weights.
        self._reference_weights: dict[str, torch.Tensor] | None = None
        if config.init_adapter and config.beta != 0.0:
            self._reference_weights = {name: p.detach().clone() for name, p in model.named_parameters()
                                       if p.requires_grad}
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                      eps=config.adam_epsilon, weight_decay=config.weight_decay)
        from transformers import get_scheduler

        # The scheduler is not passed through accelerate (which would step it once per process).
        self.scheduler = get_scheduler(config.lr_scheduler_type, optimizer, num_warmup_steps=config.warmup_steps,
                                       num_training_steps=max(1, config.max_steps * config.num_iterations))
        self.model, self.optimizer = self.runtime.accelerator.prepare(model, optimizer)
        self.unwrapped = self.runtime.accelerator.unwrap_model(self.model)
        self.sampling = SamplingConfig(max_new_tokens=config.max_completion_length, temperature=config.temperature,
                                       top_p=config.top_p, return_logprobs=True)
        self.policy = TransformersPolicy(self.unwrapped, processor, self.sampling)
        self.step = 0
        self._adapter_version = -1  # rollout adapters written for a vLLM engine
        self.rollout_policy: Any = self.policy
        if config.rollout_backend == "vllm":
            self.rollout_policy = self._start_vllm()

    # -- vLLM rollouts ----------------------------------------------------------------------
    def _write_rollout_adapter(self) -> Path:
        """Save the current adapter to a fresh folder (one per version: vLLM's prefix cache keys
        include the adapter's path, so KV computed with an older version is never reused)."""
        self._adapter_version += 1
        path = self.runtime.output_dir / f"rollout-adapter-{self.runtime.process_index}" / f"v{self._adapter_version}"
        self.unwrapped.save_pretrained(str(path))
        return path

    def _start_vllm(self) -> Any:
        """An in-process vLLM engine on the base model serving the current adapter as a LoRA."""
        from promptloop.policies.vllm import VLLMPolicy

        if self.base_path is None:
            raise ValueError("rollout_backend=vllm needs the policy loaded from config.policy (a path)")
        path = self._write_rollout_adapter()
        cpu = self.runtime.device.type == "cpu"
        return VLLMPolicy(
            self.base_path, adapter=path, sampling=self.sampling, max_lora_rank=max(8, self.config.lora_r),
            dtype="float32" if cpu else "auto", enforce_eager=True if cpu else None,
            engine_kwargs={"logprobs_mode": "processed_logprobs", "seed": self.config.seed},
        )

    def _sync_rollout_adapter(self) -> None:
        """After an update: write the adapter and load it into the running engine as a new LoRA
        in place of the previous one (no weight merging)."""
        if self.rollout_policy is self.policy:
            return
        previous = Path(self.rollout_policy.adapters["default"])
        self.rollout_policy.add_adapter("default", self._write_rollout_adapter())
        shutil.rmtree(previous, ignore_errors=True)  # the engine holds the weights it loaded

    # -- data -------------------------------------------------------------------------------
    def prompts_for_step(self, step: int) -> list[str]:
        """This process's prompts for ``step``: a fixed function of (seed, step, process), walking
        through per-epoch permutations of the training prompts, so resuming needs only the step."""
        per_step = self.config.per_device_prompts * self.runtime.num_processes
        first = step * per_step + self.runtime.process_index * self.config.per_device_prompts
        out = []
        n = len(self.train_prompts)
        for position in range(first, first + self.config.per_device_prompts):
            epoch, index = divmod(position, n)
            order = list(range(n))
            random.Random(derived_seed(self.config.seed, epoch)).shuffle(order)
            out.append(self.train_prompts[order[index]])
        return out

    def step_prompts(self, step: int) -> list[str]:
        """:meth:`prompts_for_step`, with ``replay_fraction`` of them replaced by prompts drawn
        from the replay buffer (a fixed function of seed, step, process and the buffer)."""
        prompts = self.prompts_for_step(step)
        if self.replay is None:
            return prompts
        count = round(self.config.replay_fraction * len(prompts))
        replayed = self.replay.draw(count, derived_seed(self.config.seed, step, self.runtime.process_index, 4))
        return replayed + [p for p in prompts if p not in replayed][:len(prompts) - len(replayed)]

    def screened_prompts(self) -> list[str]:
        """``screen_prompts``: the training prompts the starting policy gets wrong. The main process
        screens once per output folder: a resumed run reads ``OUTPUT_DIR/screened_prompts.json``
        (re-filtered at the current ``screen_threshold``; screened again only if it holds other
        prompts)."""
        c = self.config
        path = self.runtime.output_dir / SCREEN_FILE
        candidates = self.train_prompts[:c.screen_prompts]
        if self.runtime.is_main and not (path.exists() and Screening.load(path).prompts == candidates):
            seed = derived_seed(c.seed, 20_000)
            cpu = time.process_time()

            def rewards(batch: list[str], start: int) -> list[float]:
                rolled = self._rollout(batch, derived_seed(seed, start), schedule=c.eval_schedule,
                                       temperature=0.0, num_generations=1)
                return rolled.penalised_rewards(c.fallback_penalty)

            result = screen(candidates, rewards, c.screen_threshold)
            result.save(path)
            self.runtime.log({"screen/prompts": float(len(result.prompts)), "screen/kept": float(len(result.kept)),
                              "screen/reward": sum(result.rewards) / len(result.rewards),
                              "screen/images": float(len(result.prompts)),
                              "screen/cpu_s": time.process_time() - cpu}, 0)
        self.runtime.wait()
        saved = Screening.load(path)
        kept = Screening(saved.prompts, saved.rewards, c.screen_threshold).kept
        if not kept:
            raise ValueError(f"screen_prompts: the starting policy scores at least {c.screen_threshold} on all "
                             f"{len(saved.prompts)} screened prompts; raise screen_threshold or screen more prompts")
        logger.info("screening kept %d of %d training prompts (reward below %s)", len(kept), len(saved.prompts),
                    c.screen_threshold)
        return kept

    # -- rollouts ---------------------------------------------------------------------------
    def _rollout(self, prompts: Sequence[str], seed: int, *, schedule: str, temperature: float,
                 num_generations: int, explore_offset: int | None = None) -> RolloutBatch:
        """Rollouts of ``prompts``; with ``credit: refinement`` and an ``explore_offset``, each
        group explores one refinement and only those actions are kept (:mod:`.credit`)."""
        c = self.config
        sampling = SamplingConfig(
            max_new_tokens=c.max_completion_length, temperature=temperature, top_p=c.top_p,
            return_logprobs=True, seed=derived_seed(seed, 1) % 2**31,
        )
        policy = self.rollout_policy
        if c.credit == "refinement" and explore_offset is not None:
            refinements = len(RefineSchedule.parse(schedule).resolve_samples(c.num_inference_steps, 1)[0])
            policy = ExploringPolicy(policy, num_generations=num_generations, num_refinements=refinements,
                                     offset=explore_offset, explore=sampling,
                                     greedy=dataclasses.replace(sampling, temperature=0.0))
        self.unwrapped.eval()
        batch = rollout(
            self.pipeline, policy, prompts, self.reward, num_generations=num_generations, schedule=schedule,
            seed=seed, mode=c.mode, num_inference_steps=c.num_inference_steps, guidance_scale=c.guidance_scale,
            height=c.height, width=c.width, preview=c.preview, preview_size=c.preview_size, sampling=sampling,
            share_noise=c.share_noise,
        )
        if isinstance(policy, ExploringPolicy):
            batch.actions = [a for a in batch.actions if (a.trajectory, a.step) in policy.explored]
        return batch

    def collect(self, step: int) -> tuple[RolloutBatch, RolloutBatch, dict[str, float]]:
        """This step's rollouts: (the batch trained on, everything rolled out, lever metrics).
        With ``dynamic_sampling`` the trained batch holds the groups with a reward spread; with
        ``replay_fraction`` the replay buffer learns from everything rolled out."""
        c = self.config
        seed = derived_seed(c.seed, step, self.runtime.process_index)
        prompts = self.step_prompts(step)
        metrics: dict[str, float] = {}

        def roll(batch_prompts: list[str], r: int) -> RolloutBatch:
            return self._rollout(batch_prompts, seed if r == 0 else derived_seed(seed, 2, r), schedule=c.schedule,
                                 temperature=c.temperature, num_generations=c.num_generations,
                                 explore_offset=step + r)

        if c.dynamic_sampling:
            collected = collect_groups(
                roll, prompts, rewards=lambda b: b.penalised_rewards(c.fallback_penalty),
                num_generations=c.num_generations, tol=c.reward_tol, max_resample_batches=c.max_resample_batches,
                fresh=lambda r, k, seen: fresh_prompts(self.train_prompts, k, derived_seed(seed, 3, r), seen),
            )
            batch = concat_groups(collected.parts, c.num_generations)
            everything = (collected.parts[0][0] if collected.rounds == 1 else concat_groups(
                [(b, range(b.num_trajectories // c.num_generations)) for b, _ in collected.parts], c.num_generations))
            metrics.update({"train/groups_kept": float(collected.groups_kept),
                            "train/groups_resampled": float(collected.groups_resampled)})
        else:
            batch = everything = roll(prompts, 0)
        metrics["train/images"] = float(everything.num_trajectories)
        if self.replay is not None:
            rewards = everything.penalised_rewards(c.fallback_penalty)
            g = c.num_generations
            self.replay.update((everything.prompts[i], sum(rewards[i:i + g]) / g)
                               for i in range(0, len(rewards), g))
            metrics["train/replay_size"] = float(len(self.replay))
            base = set(self.prompts_for_step(step))
            metrics["train/replayed"] = float(sum(p not in base for p in prompts))
        return batch, everything, metrics

    # -- scoring ----------------------------------------------------------------------------
    def _score(self, actions: Sequence[ActionRecord], *, model: Any = None, grad: bool = True):
        context = contextlib.nullcontext() if grad else torch.no_grad()
        with context:
            return self.policy.score([a.conversation for a in actions], [a.token_ids for a in actions],
                                     model=model, temperature=self.config.temperature)

    @contextlib.contextmanager
    def _reference_policy(self):
        """Within: the model is the KL reference (see ``__init__``); restored exactly after."""
        if self._reference_weights is None:
            with self.unwrapped.disable_adapter():
                yield
            return
        params = {name: p for name, p in self.unwrapped.named_parameters() if name in self._reference_weights}
        current = {name: p.detach().clone() for name, p in params.items()}
        try:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(self._reference_weights[name])
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(current[name])

    def _recorded_logprobs(self, actions: Sequence[ActionRecord], like: torch.Tensor) -> torch.Tensor:
        """The sampling-time log-probs of ``actions``, right-padded to ``like``'s shape."""
        out = torch.zeros_like(like)
        for row, action in enumerate(actions):
            out[row, :len(action.old_logprobs)] = torch.as_tensor(action.old_logprobs, dtype=out.dtype)
        return out

    def _micro_batches(self, n: int) -> list[list[int]]:
        k = min(self.config.gradient_accumulation_steps, max(1, n))
        size = math.ceil(n / k) if n else 0
        return [list(range(i, min(n, i + size))) for i in range(0, n, size)] if n else []

    # -- one step ---------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        """Rollouts, advantages and ``num_iterations`` updates for ``step``; returns metrics."""
        c = self.config
        t0 = time.perf_counter()
        batch, everything, lever_metrics = self.collect(step)
        rewards = torch.tensor(batch.penalised_rewards(c.fallback_penalty), dtype=torch.float32)
        advantages = group_advantages(rewards, c.num_generations, self.scale_rewards)
        actions = batch.actions
        if c.loss_type == "raft":  # supervised targets: each group's best rollout, if any
            best = set(best_of_group(rewards, c.num_generations, c.reward_tol))
            actions = [a for a in actions if a.trajectory in best]
        metrics = self._reward_metrics(everything, torch.tensor(everything.penalised_rewards(c.fallback_penalty)))
        metrics.update(everything.timings)
        metrics.update(lever_metrics)

        t_score = time.perf_counter()
        adv = torch.tensor([float(advantages[a.trajectory]) for a in actions], device=self.runtime.device)
        groups = self._micro_batches(len(actions))
        ref: list[torch.Tensor | None] = [None] * len(groups)
        if c.beta != 0.0:
            with self._reference_policy():
                ref = [self._score([actions[i] for i in g], grad=False).logprobs for g in groups]
        score_s = time.perf_counter() - t_score

        t_update = time.perf_counter()
        num_tokens = float(sum(len(a.token_ids) for a in actions))
        stats_sum = {name: 0.0 for name in LossStats.__dataclass_fields__}  # same keys on every process
        entropy_sum, token_count, loss_sum, grad_norm = 0.0, 0.0, 0.0, 0.0
        params = [p for p in self.unwrapped.parameters() if p.requires_grad]
        self.unwrapped.train()
        for _ in range(c.num_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            # Forward and backward on the unwrapped model (no DDP hooks): processes may hold
            # different numbers of actions, even none, so the gradients are averaged once per
            # update below, by every process.
            for k, group in enumerate(groups):
                scored = self._score([actions[i] for i in group], model=self.unwrapped)
                logps = scored.logprobs
                # One update: the ratio is 1 (TRL's on-policy shortcut). Several: every update's
                # ratio is against the log-probs recorded at sampling, before the first update.
                old_logps = (logps.detach() if c.num_iterations == 1
                             else self._recorded_logprobs([actions[i] for i in group], logps.detach()))
                if c.loss_type == "raft":
                    loss, stats = raft_loss(logps, scored.mask, ref_logps=ref[k], beta=c.beta, num_tokens=num_tokens)
                else:
                    loss, stats = grpo_loss(
                        logps, old_logps, adv[group], scored.mask, ref_logps=ref[k], beta=c.beta,
                        epsilon=c.epsilon, epsilon_high=c.epsilon_high, loss_type=c.loss_type,
                        max_completion_length=c.max_completion_length, num_sequences=len(actions),
                        num_tokens=num_tokens,
                    )
                self.runtime.accelerator.backward(loss)
                tokens = float(scored.mask.sum())
                loss_sum += float(loss.detach())
                for key, value in vars(stats).items():
                    stats_sum[key] = stats_sum.get(key, 0.0) + value * tokens
                if scored.entropies is not None:
                    entropy_sum += float((scored.entropies * scored.mask).sum())
                token_count += tokens
            if self.runtime.average_gradients(params, len(actions)) > 0:  # any process had actions
                if c.max_grad_norm and c.max_grad_norm > 0:
                    grad_norm = float(self.runtime.accelerator.clip_grad_norm_(params, c.max_grad_norm))
                self.optimizer.step()
            self.scheduler.step()
        self.unwrapped.eval()
        self._sync_rollout_adapter()
        update_s = time.perf_counter() - t_update
        denom = max(token_count, 1.0)
        metrics.update({f"train/{k}": v / denom for k, v in stats_sum.items()})
        metrics.update({
            "train/loss": loss_sum / c.num_iterations,
            "train/entropy": entropy_sum / denom,
            "train/grad_norm": grad_norm,
            "train/learning_rate": self.scheduler.get_last_lr()[0],
            "train/completion_length": num_tokens / max(1, len(actions)),
            "train/actions": float(len(actions)),
            "time/scoring_s": score_s,
            "time/update_s": update_s,
            "time/step_s": time.perf_counter() - t0,
        })
        return metrics

    def _reward_metrics(self, batch: RolloutBatch, rewards: torch.Tensor) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, values in batch.reward_terms.items():
            t = torch.tensor(values)
            out[f"reward/{name}/mean"] = float(t.mean())
            out[f"reward/{name}/std"] = float(t.std()) if t.numel() > 1 else 0.0
        out["reward/mean"] = float(rewards.mean())
        out["reward/std"] = float(rewards.std()) if rewards.numel() > 1 else 0.0
        grouped = rewards.view(-1, self.config.num_generations)
        out["reward/group_std"] = float(grouped.std(dim=1).mean())
        generations = batch.trace.generations()
        out["train/fallback_rate"] = sum(e.fallback is not None for e in generations) / max(1, len(generations))
        return out

    # -- evaluation -------------------------------------------------------------------------
    def heldout_rollout(self) -> RolloutBatch:
        """One rollout of each held-out prompt as :meth:`evaluate` samples them (``eval_schedule``,
        ``eval_temperature``, latents fixed by the seed), scored with the training reward."""
        c = self.config
        temperature = c.eval_temperature if c.eval_temperature > 0 else 0.0
        return self._rollout(self.eval_prompts, derived_seed(c.seed, 10_000), schedule=c.eval_schedule,
                             temperature=temperature, num_generations=1)

    def evaluate(self, step: int) -> dict[str, float]:
        """Mean reward on the held-out prompts (``eval_schedule``, ``eval_temperature``, fixed
        latents); writes ``eval/step-{step}.png`` (trace strip with the final images). The main
        process evaluates; the others wait."""
        metrics: dict[str, float] = {}
        if self.runtime.is_main and self.eval_prompts:
            batch = self.heldout_rollout()
            metrics["eval/reward"] = float(torch.tensor(batch.rewards).mean())
            for name, values in batch.reward_terms.items():
                metrics[f"eval/{name}"] = float(torch.tensor(values).mean())
            for name, metric in self.eval_metrics.items():
                values = metric(batch.images, batch.prompts, None)
                metrics[f"eval/metric/{name}"] = float(torch.tensor(values, dtype=torch.float64).mean())
            entries = batch.trace.entries
            metrics["eval/fallback_rate"] = sum(e.fallback is not None for e in entries) / max(1, len(entries))
            for entry in entries:  # rollouts keep previews only in the observation snapshots
                if entry.preview is None and entry.observation is not None:
                    entry.preview = entry.observation.preview
            strip = batch.trace.render_strip(thumb=96, images=batch.images)
            out = self.runtime.output_dir / "eval"
            out.mkdir(parents=True, exist_ok=True)
            strip.save(out / f"step-{step}.png")
            self.runtime.log_image("eval/trace", strip, step)
            self.runtime.log(metrics, step)
        self.runtime.wait()
        return metrics

    # -- the loop ---------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        per_step = self.config.per_device_prompts * self.runtime.num_processes
        return {"data_position": self.step * per_step, "seed": self.config.seed}

    def save_checkpoint(self) -> Path:
        path = self.runtime.save_checkpoint(self.step, self.model, self.optimizer, self.scheduler, self._state())
        if self.replay is not None:  # each process its own buffer
            self.replay.save(path / f"replay_{self.runtime.process_index}.json")
        self.runtime.wait()
        return path

    def resume(self, checkpoint: str | Path) -> None:
        state = self.runtime.load_checkpoint(checkpoint, self.model, self.optimizer, self.scheduler)
        self.step = int(state["step"])
        replay = Path(checkpoint) / f"replay_{self.runtime.process_index}.json"
        if self.replay is not None and replay.exists():
            self.replay.load(replay)
        self._sync_rollout_adapter()

    def save_adapter(self, path: str | Path | None = None) -> Path:
        """Write the peft adapter (``adapter_config.json`` + ``adapter_model.safetensors``)."""
        path = Path(path or self.runtime.output_dir / "adapter")
        self.runtime.wait()
        if self.runtime.is_main:
            self.unwrapped.save_pretrained(str(path))
        self.runtime.wait()
        return path

    def train(self) -> Path:
        """Run until ``max_steps``; returns the final adapter directory."""
        c = self.config
        checkpoint = self.runtime.resolve_checkpoint(c.resume_from_checkpoint)
        if checkpoint is not None:
            self.resume(checkpoint)
            logger.info("resumed from %s at step %d", checkpoint, self.step)
        if c.screen_prompts:
            self.train_prompts = self.screened_prompts()
        if c.eval_on_start and self.step == 0 and c.eval_steps >= 0:
            self.evaluate(0)
        bar = self.runtime.progress(c.max_steps, initial=self.step, desc="grpo")
        try:
            while self.step < c.max_steps:
                metrics = self.train_step(self.step)
                self.step += 1
                metrics = self.runtime.mean_across_processes(metrics)
                if c.logging_steps and self.step % c.logging_steps == 0:
                    self.runtime.log(metrics, self.step)
                if c.log_fingerprints:
                    self.runtime.log_fingerprint(self.unwrapped, self.step)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics.get('train/kl', 0.0):.4f}",
                                fallback=f"{metrics['train/fallback_rate']:.2f}")
                if c.eval_steps and self.step % c.eval_steps == 0:
                    self.evaluate(self.step)
                if c.save_steps and self.step % c.save_steps == 0 and self.step < c.max_steps:
                    self.save_checkpoint()
            if c.save_steps:
                self.save_checkpoint()
            return self.save_adapter()
        finally:
            self.runtime.close()

    def close(self) -> None:
        """Stop a vLLM rollout engine, if any."""
        if self.rollout_policy is not self.policy:
            self.rollout_policy.shutdown()
