"""What every trainer needs around its update rule: accelerate, seeds, checkpoints that resume
exactly, tensorboard and a progress bar.

A checkpoint is a folder ``output_dir/checkpoint-{step}`` holding

* ``adapter/``          the peft LoRA adapter (``save_pretrained`` layout, loadable as it is),
* ``optimizer.pt``      the optimiser state, ``scheduler.pt`` the LR scheduler state,
* ``rng_state_{rank}.pth`` Python, NumPy and torch (CPU and CUDA) RNG states of each process,
* ``trainer_state.json`` the step, the data position and anything else the trainer adds.

Restoring all of them, a run stopped after step k and resumed reaches the same parameters at
step k + m, bit for bit, as an uninterrupted run (on the same hardware).
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from collections.abc import Mapping, Sequence
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
