"""What every trainer needs around its update rule: accelerate, seeds, checkpoints that resume
exactly, tensorboard and a progress bar.

A checkpoint is a folder ``output_dir/checkpoint-{step}`` holding

* ``adapter/``          the peft LoRA adapter (``save_pretrained`` layout, loadable as it is),
* ``optimizer.pt``      the optimiser state, ``scheduler.pt`` the LR scheduler state,
* ``rng_state_{rank}.pth`` Python, NumPy and torch (CPU and CUDA) RNG states of each process,
* ``trainer_state.json`` the step, the data position and anything else the trainer adds.

Restoring all of them, a run stopped after step k and resumed reaches the same parameters at
step k + m, bit for bit, as an uninterrupted run (on the same hardware).

Scripts that train whole models in one process (a world's backbones and policy, under
``training/<world>/``) keep their state in one file instead: :class:`ResumableLoop` checkpoints a
dict (models, optimiser, step, seconds) with :func:`save_file` every few minutes, at the end and
when a time budget runs out, and resumes from it when the same command runs again.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptloop.training.config import TrainConfig, save_config

logger = logging.getLogger("promptloop.training")

CHECKPOINT_PREFIX = "checkpoint-"
_STATE_FILE = "trainer_state.json"


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint folder this runtime wrote (it holds the trainer state)."""
    return (Path(path) / _STATE_FILE).is_file()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derived_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (run seed, step, process, ...)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) + 0x632BE59BD9B4E019 + (value << 6) + (value >> 2))) & (2**63 - 1)
    return value


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Runtime:
    """accelerate set-up plus logging, progress and checkpoints for one training run.

    Args:
        config: the trainer's config (``output_dir``, ``seed``, ``device``, ``mixed_precision``,
            ``report_to``, ``save_total_limit``, ``progress`` are read).
    """

    def __init__(self, config: TrainConfig) -> None:
        from accelerate import Accelerator

        self.config = config
        self.accelerator = Accelerator(
            cpu=config.device == "cpu",
            mixed_precision=config.mixed_precision,
        )
        self.output_dir = Path(config.output_dir)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.output_dir / "config.yaml")
        seed_everything(config.seed + self.process_index)
        self._writer = None
        self._bar = None

    # -- processes --------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def process_index(self) -> int:
        return self.accelerator.process_index

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def wait(self) -> None:
        self.accelerator.wait_for_everyone()

    def mean_across_processes(self, values: Mapping[str, float]) -> dict[str, float]:
        """Average scalar metrics over processes (identity with one process)."""
        if self.num_processes == 1 or not values:
            return dict(values)
        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], device=self.device, dtype=torch.float64)
        tensor = self.accelerator.reduce(tensor, reduction="mean")
        return dict(zip(keys, tensor.tolist()))

    def average_gradients(self, params: Sequence[torch.nn.Parameter], count: float = 0.0) -> float:
        """Average the gradients of ``params`` over processes (a missing gradient counts as zero)
        in one all-reduce, and return ``count`` summed over processes.

        Every process must call it once per update whatever its batch held (even nothing), so the
        collectives always match: a process without trainable actions would otherwise leave the
        others waiting in DDP's backward all-reduce. Identity with one process.
        """
        if self.num_processes == 1:
            return float(count)
        grads = [p.grad.detach().float().reshape(-1) if p.grad is not None
                 else torch.zeros(p.numel(), device=p.device) for p in params]
        flat = torch.cat(grads + [torch.tensor([float(count)], device=self.device)])
        flat = self.accelerator.reduce(flat, reduction="sum")
        offset = 0
        for p in params:
            grad = (flat[offset:offset + p.numel()] / self.num_processes).view_as(p).to(p.dtype)
            offset += p.numel()
            if p.grad is None:
                p.grad = grad
            else:
                p.grad.copy_(grad)
        return float(flat[-1])

    # -- logging ----------------------------------------------------------------------------
    @property
    def writer(self):
        """A tensorboard ``SummaryWriter`` on the main process (``None`` elsewhere or when off)."""
        if self._writer is None and self.is_main and self.config.report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.output_dir / "tensorboard"))
        return self._writer

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Write scalars to tensorboard and ``metrics.jsonl`` (main process only)."""
        if not self.is_main:
            return
        writer = self.writer
        if writer is not None:
            for key, value in metrics.items():
                writer.add_scalar(key, value, step)
            writer.flush()
        with (self.output_dir / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")

    def log_fingerprint(self, model: Any, step: int) -> str:
        """Append ``{"step", "sha256"}`` of ``model``'s trainable weights to
        ``output_dir/fingerprints-{rank}.jsonl`` (every process: equal hashes mean the processes
        hold the same adapter). Returns the hash."""
        import hashlib

        digest = hashlib.sha256()
        for name, param in sorted(self.accelerator.unwrap_model(model).named_parameters()):
            if param.requires_grad:
                digest.update(name.encode())
                digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
        path = self.output_dir / f"fingerprints-{self.process_index}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(json.dumps({"step": step, "sha256": digest.hexdigest()}) + "\n")
        return digest.hexdigest()

    def log_image(self, tag: str, image, step: int) -> None:
        writer = self.writer
        if writer is not None:
            writer.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def progress(self, total: int, initial: int = 0, desc: str = "train"):
        """A tqdm bar on the main process (disabled elsewhere or with ``progress: false``)."""
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                         disable=not (self.is_main and self.config.progress))
        return self._bar

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint_dir(self, step: int) -> Path:
        return self.output_dir / f"{CHECKPOINT_PREFIX}{step}"

    def checkpoints(self) -> list[Path]:
        """Checkpoint folders under ``output_dir``, oldest first."""
        if not self.output_dir.exists():
            return []
        found = [p for p in self.output_dir.iterdir()
                 if p.is_dir() and re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", p.name) and is_checkpoint(p)]
        return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))

    def resolve_checkpoint(self, spec: str | None) -> Path | None:
        """``None`` -> None; ``"latest"`` -> the newest checkpoint (or None); else the folder."""
        if spec is None:
            return None
        if spec == "latest":
            found = self.checkpoints()
            return found[-1] if found else None
        path = Path(spec)
        if not (path / _STATE_FILE).exists():
            raise FileNotFoundError(f"{path} is not a checkpoint (no {_STATE_FILE})")
        return path

    def save_checkpoint(self, step: int, model: Any, optimizer: Any, scheduler: Any,
                        state: Mapping[str, Any]) -> Path:
        """Write a checkpoint for ``step``; every process writes its RNG state."""
        path = self.checkpoint_dir(step)
        self.wait()
        if self.is_main:
            path.mkdir(parents=True, exist_ok=True)
            self.accelerator.unwrap_model(model).save_pretrained(str(path / "adapter"))
            torch.save(optimizer.state_dict(), path / "optimizer.pt")
            torch.save(scheduler.state_dict(), path / "scheduler.pt")
        self.wait()
        torch.save(rng_state(), path / f"rng_state_{self.process_index}.pth")
        self.wait()
        if self.is_main:
            (path / _STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=2))
            self._rotate()
        self.wait()
        return path

    def load_checkpoint(self, path: str | Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        """Restore adapter weights, optimiser, scheduler and this process's RNG state; return the
        trainer state (``step``, data position, ...)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(path)
        weights = path / "adapter" / "adapter_model.safetensors"
        set_peft_model_state_dict(self.accelerator.unwrap_model(model), load_file(str(weights)))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        rng_file = path / f"rng_state_{self.process_index}.pth"
        if rng_file.exists():
            set_rng_state(torch.load(rng_file, weights_only=False))
        else:
            logger.warning("%s has no RNG state for process %d", path, self.process_index)
        return json.loads((path / _STATE_FILE).read_text())

    def _rotate(self) -> None:
        limit = self.config.save_total_limit
        if limit is None or limit <= 0:
            return
        for old in self.checkpoints()[:-limit]:
            shutil.rmtree(old, ignore_errors=True)


# -- one-file checkpoints of single-process scripts --------------------------------------------
def save_file(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (a temporary file renamed over it): an interrupted
    write never leaves a broken checkpoint."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


class ResumableLoop:
    """The step loop of a single-process training script, checkpointed to one file.

    Iterating yields the step indices from where the checkpoint ``path`` left off (call
    :meth:`resume` first) to ``total``, with a tqdm bar. After a step, every ``every_minutes``, at
    the last step and when ``budget_minutes`` of this run have passed, it writes ``{**state(),
    "step", "seconds"}`` (``seconds``: time spent in steps, over all runs) and calls ``on_save``
    (e.g. an export); a run stopped by the budget sets :attr:`stopped_early`, and re-running
    the same command continues.

        loop = ResumableLoop(work / "policy.pt", 1500, state=lambda: {"model": model.state_dict()})
        if (saved := loop.resume()) is not None:
            model.load_state_dict(saved["model"])
        for step in loop:
            loop.report(loss=train_step(step))
    """

    def __init__(self, path: str | Path, total: int, *, state: Callable[[], dict[str, Any]], desc: str = "train",
                 every_minutes: float = 4.0, budget_minutes: float | None = None,
                 on_save: Callable[[], None] | None = None, loss_format: str = ".4f") -> None:
        self.path, self.total, self.desc = Path(path), total, desc
        self.state, self.on_save = state, on_save
        self.every_minutes, self.budget_minutes = every_minutes, budget_minutes
        self.loss_format = loss_format
        self.step, self.seconds = 0, 0.0
        self.stopped_early = False
        self._shown: dict[str, str] = {}

    def resume(self) -> dict[str, Any] | None:
        """The saved state (``None`` when there is none), positioning the loop after its step."""
        if not self.path.exists():
            return None
        saved = torch.load(self.path, weights_only=False)
        self.step, self.seconds = int(saved["step"]), float(saved.get("seconds", 0.0))
        return saved

    def report(self, **values: float) -> None:
        """Values shown on the progress bar after this step (e.g. ``loss``)."""
        self._shown = {k: format(float(v), self.loss_format) for k, v in values.items()}

    def save(self) -> None:
        save_file({**self.state(), "step": self.step, "seconds": self.seconds}, self.path)
        if self.on_save is not None:
            self.on_save()

    def __iter__(self) -> Iterator[int]:
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total, initial=self.step, desc=self.desc, dynamic_ncols=True)
        started = last = time.time()
        try:
            while self.step < self.total:
                t0 = time.time()
                yield self.step
                self.step += 1
                self.seconds += time.time() - t0
                bar.update(1)
                if self._shown:
                    bar.set_postfix(self._shown)
                out_of_time = bool(self.budget_minutes) and time.time() - started > self.budget_minutes * 60
                if time.time() - last > self.every_minutes * 60 or self.step == self.total or out_of_time:
                    self.save()
                    last = time.time()
                if out_of_time:
                    self.stopped_early = True
                    tqdm.write(f"time budget reached at step {self.step}; re-run the same command to continue")
                    return
        finally:
            bar.close()


@dataclass(kw_only=True)
class ScriptRun:
    """What every single-process training script shares (flags through
    :func:`~promptloop.training.config.parse_flags`): where it exports (``out``) and checkpoints
    (``work``), its seed, how often it checkpoints, an optional time budget and CPU threads."""

    out: Path = field(metadata={"help": "exported model folder (with training_info.json)"})
    work: Path = field(metadata={"help": "checkpoints (resumed from here)"})
    seed: int = 0
    ckpt_minutes: float = 4.0
    time_budget_minutes: float | None = field(default=None, metadata={"help": "stop (resumably) after this long"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads"})

    def start(self) -> None:
        """Set the CPU threads and create ``work`` and ``out``."""
        if self.threads:
            torch.set_num_threads(self.threads)
        self.work.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)

    def loop(self, name: str, total: int, *, state: Callable[[], dict[str, Any]], desc: str,
             on_save: Callable[[], None] | None = None, budget: bool = True) -> ResumableLoop:
        """A :class:`ResumableLoop` checkpointed to ``work/name`` every ``ckpt_minutes`` (and
        stopped after ``time_budget_minutes`` when ``budget``)."""
        return ResumableLoop(self.work / name, total, state=state, desc=desc, every_minutes=self.ckpt_minutes,
                             budget_minutes=self.time_budget_minutes if budget else None, on_save=on_save)
