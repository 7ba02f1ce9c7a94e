"""TRL 0.23.1's ``DDPOTrainer`` on a local pipeline folder: the TRL half of ``bench_ddpo_trl.py``.

Runs in the separate TRL environment that ``bench_ddpo_trl.py`` builds (trl 0.23.1 and the
diffusers/transformers that fit it), so it imports nothing from PromptLoop: the JPEG
compressibility reward is re-implemented here exactly as ``promptloop.rewards.jpeg`` computes it
(negated JPEG size at quality 95 in kB, of the image as diffusers' ``numpy_to_pil`` makes it).

    python ddpo_trl_side.py SPEC.json   # prints one JSON line: timings and peak RSS
"""

from __future__ import annotations

import io
import json
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from PIL import Image


def jpeg_compressibility(images: torch.Tensor, prompts, metadata):
    """TRL's reward signature: ``(images (B, 3, H, W) in [0, 1], prompts, metadata) -> (rewards, info)``."""
    arrays = (images.detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    sizes = []
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(array).convert("RGB").save(buffer, format="JPEG", quality=95)
        sizes.append(-buffer.tell() / 1000.0)
    return torch.tensor(sizes), {}


@torch.no_grad()
def text_checksum(tokenizer, text_encoder) -> float:
    """``sum |text embedding|`` of a fixed prompt: both sides must load the same text encoder."""
    ids = tokenizer(["a red fox in the snow"], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return float(text_encoder(ids)[0].abs().sum())


def memory_kb() -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident set size of this process, in kB."""
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(spec["threads"])
    warnings.filterwarnings("ignore")
    import trl
    from accelerate import PartialState
    from trl import DDPOConfig, DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    prompts = spec["prompts"]
    rng = random.Random(spec["seed"])
    with tempfile.TemporaryDirectory() as logdir:
        config = DDPOConfig(
            num_epochs=spec["epochs"], seed=spec["seed"], log_with=None, logdir=logdir, save_freq=10**9,
            mixed_precision="no", sample_num_steps=spec["num_inference_steps"], sample_eta=spec["eta"],
            sample_guidance_scale=spec["guidance_scale"], sample_batch_size=spec["sample_batch_size"],
            sample_num_batches_per_epoch=spec["sample_num_batches_per_epoch"],
            train_batch_size=spec["train_batch_size"], train_learning_rate=spec["learning_rate"],
            train_adam_weight_decay=0.0, train_gradient_accumulation_steps=1, train_max_grad_norm=1.0,
            train_num_inner_epochs=spec["num_inner_epochs"], train_cfg=True, train_adv_clip_max=spec["adv_clip_max"],
            train_clip_range=spec["clip_range"], train_timestep_fraction=spec["timestep_fraction"],
            per_prompt_stat_tracking=False, async_reward_computation=False,
        )
        # TRL's pipeline logs through accelerate's logger before its trainer makes the Accelerator;
        # accelerate >= 0.26 refuses that unless its state exists, so make it first.
        PartialState()
        pipeline = DefaultDDPOStableDiffusionPipeline(spec["pipeline"], use_lora=True)
        checksum = text_checksum(pipeline.tokenizer, pipeline.text_encoder)
        trainer = DDPOTrainer(config, jpeg_compressibility, lambda: (rng.choice(prompts), {}), pipeline)
        height = pipeline.unet.config.sample_size * pipeline.sd_pipeline.vae_scale_factor
        sampling: list[float] = []
        generate = trainer._generate_samples

        def timed_generate(*args, **kwargs):  # instrumentation only: time TRL's own sampling
            t0 = time.perf_counter()
            out = generate(*args, **kwargs)
            sampling.append(time.perf_counter() - t0)
            return out

        trainer._generate_samples = timed_generate
        rss_setup = memory_kb()["VmRSS"]
        epochs = []
        step = 0
        for epoch in range(spec["epochs"]):
            t0 = time.perf_counter()
            step = trainer.step(epoch, step)
            epochs.append(time.perf_counter() - t0)
        lora = [p for p in pipeline.unet.parameters() if p.requires_grad]
    samples = spec["sample_batch_size"] * spec["sample_num_batches_per_epoch"]
    print(json.dumps({
        "impl": f"trl {trl.__version__}", "text_checksum": checksum, "height": height, "epoch_s": epochs, "sampling_s": sampling,
        "samples_per_epoch": samples, "optimizer_steps": step, "rss_setup_kb": rss_setup,
        "rss_peak_kb": memory_kb()["VmHWM"], "lora_params": sum(p.numel() for p in lora),
    }))


if __name__ == "__main__":
    main()
