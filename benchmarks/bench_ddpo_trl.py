"""Our DDPO against TRL 0.23.1's ``DDPOTrainer`` (the last TRL that shipped it), and DDPO against
B²-DiffuRL, on the tiny SD pipeline, CPU. One command; it builds the TRL environment itself:

    python benchmarks/bench_ddpo_trl.py                 # --repeats 2 --epochs 4 --threads 1

1. A separate venv outside the project tree (``$PROMPTLOOP_BENCH_TRL_ENV``, default
   ``~/.cache/promptloop/bench-trl``) with :data:`TRL_PINS` (uv; the torch of this interpreter),
   rebuilt only when the pins change.
2. The tiny SD pipeline of the tests, ``save_pretrained`` to a temporary folder and made readable
   by transformers 4.x (text-encoder keys under ``text_model.`` as in hub SD checkpoints, and the
   tokenizer read as ``CLIPTokenizerFast`` from ``tokenizer.json``); both sides check that they
   load the same text encoder.
3. Interleaved, each in its own process: our ``DDPOTrainer`` and TRL's ``DDPOTrainer`` with
   ``DefaultDDPOStableDiffusionPipeline`` on that folder, with the sizes of
   ``training/configs/ddpo_tiny.yaml`` (8 samples an epoch, train batch 4, 2 inner epochs, 6 DDIM
   steps, eta 1, CFG 5, timestep fraction 1, 64 px, JPEG compressibility, batch-normalised
   advantages) and TRL's fixed LoRA (r 4, alpha 4, attention projections). Prints samples per
   second while sampling, seconds per epoch (median, first epoch left out) and peak RSS, and
   our/TRL ratios.
4. Our two presets as they are (``ddpo_tiny.yaml``, ``b2_tiny.yaml``) in one process, with plain
   diffusers sampling of the same batch as the baseline: samples/s, seconds per epoch/stage and
   per optimiser update.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
#: The newest set that installs with trl 0.23.1: it needs transformers >= 4.56.1 (and < 5 in
#: practice); diffusers 0.36 is the last whose huggingface-hub range (< 1.0) fits transformers 4.x.
TRL_PINS = ["trl==0.23.1", "transformers==4.57.6", "diffusers==0.36.0", "huggingface-hub==0.36.2",
            "accelerate==1.15.0", "peft==0.21.2", "datasets==5.0.1"]
#: The LoRA TRL's DefaultDDPOStableDiffusionPipeline hard-codes; ours is set the same in the comparison.
TRL_LORA = ["lora_r=4", "lora_alpha=4", "lora_target_modules=[to_q, to_k, to_v, to_out.0]"]


# -- environment and model ------------------------------------------------------------------------
def trl_env(path: Path) -> Path:
    """The TRL venv's python, (re)built with uv when missing or when the pins changed."""
    import torch

    pins = [*TRL_PINS, f"torch=={torch.__version__.split('+')[0]}"]
    python, marker = path / "bin" / "python", path / "promptloop-pins.txt"
    if python.exists() and marker.exists() and marker.read_text().split() == pins:
        return python
    print(f"==> building the TRL environment in {path}: {' '.join(pins)}", flush=True)
    subprocess.run(["uv", "venv", "--quiet", "--clear", "--python", sys.executable, str(path)], check=True)
    subprocess.run(["uv", "pip", "install", "--quiet", "--python", str(python), *pins], check=True)
    marker.write_text("\n".join(pins))
    return python


def save_pipeline(folder: Path) -> Path:
    """The tests' tiny SD pipeline, saved so that transformers 4.x and 5.x read the same weights."""
    from safetensors.torch import load_file, save_file

    from promptloop.testing.diffusion import save_tiny_pipeline

    save_tiny_pipeline("sd", folder)
    weights = folder / "text_encoder" / "model.safetensors"
    state = load_file(str(weights))
    save_file({k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}, str(weights),
              metadata={"format": "pt"})
    index = json.loads((folder / "model_index.json").read_text())
    index["tokenizer"] = ["transformers", "CLIPTokenizerFast"]  # transformers 4's slow CLIPTokenizer needs vocab.json
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def memory_kb() -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident set size of this process, in kB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


# -- workers (run in their own processes) ---------------------------------------------------------
def _trainer(kind: str, spec: dict, overrides: list[str]):
    from promptloop.training.config import load_config
    from promptloop.training.diffusion.b2 import B2Trainer
    from promptloop.training.diffusion.config import B2Config, DDPOConfig
    from promptloop.training.diffusion.ddpo import DDPOTrainer

    cls, trainer_cls, preset = {"ddpo": (DDPOConfig, DDPOTrainer, "ddpo_tiny.yaml"),
                                "b2": (B2Config, B2Trainer, "b2_tiny.yaml")}[kind]
    config = load_config(cls, ROOT / "training" / "configs" / preset,
                         [f"backbone={spec['pipeline']}", f"output_dir={spec['output_dir']}/{kind}",
                          f"seed={spec['seed']}", "progress=false", "report_to=none", "save_steps=0", *overrides])
    return trainer_cls(config)


def _epochs(trainer, epochs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"epoch_s": [], "sampling_s": [], "training_s": [], "updates": [], "samples": []}
    for epoch in range(epochs):
        t0 = time.perf_counter()
        metrics = trainer.epoch(epoch)
        out["epoch_s"].append(time.perf_counter() - t0)
        trainer.step = epoch + 1
        out["sampling_s"].append(metrics["train/time_sampling"])
        out["training_s"].append(metrics["train/time_training"])
        out["updates"].append(metrics.get("train/updates", 0.0))
        out["samples"].append(metrics["train/samples_per_second"] * metrics["train/time_sampling"])
    return out


def worker_ours(spec: dict) -> dict:
    """Our DDPO with the comparison's sizes and TRL's LoRA."""
    import torch

    torch.set_num_threads(spec["threads"])
    trainer = _trainer("ddpo", spec, TRL_LORA)
    from transformers import CLIPTextModel, CLIPTokenizerFast

    folder = Path(spec["pipeline"])
    checksum = _text_checksum(CLIPTokenizerFast.from_pretrained(folder / "tokenizer"),
                              CLIPTextModel.from_pretrained(folder / "text_encoder"))
    rss_setup = memory_kb()["VmRSS"]
    out = _epochs(trainer, spec["epochs"])
    c = trainer.config
    return {"impl": "promptloop", "text_checksum": checksum, "height": c.height, **out,
            "samples_per_epoch": c.sample_batch_size * c.sample_num_batches_per_epoch,
            "optimizer_steps": sum(out["updates"]), "rss_setup_kb": rss_setup, "rss_peak_kb": memory_kb()["VmHWM"],
            "lora_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}


def _text_checksum(tokenizer, text_encoder) -> float:
    import torch

    with torch.no_grad():
        ids = tokenizer(["a red fox in the snow"], padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        return float(text_encoder(ids)[0].abs().sum())


def worker_presets(spec: dict) -> dict:
    """Plain sampling, then the DDPO and B² tiny presets as they are, in this one process."""
    import torch

    torch.set_num_threads(spec["threads"])
    ddpo = _trainer("ddpo", spec, [])
    c = ddpo.config
    pipe, prompts = ddpo.pipe, ddpo.prompts[: c.sample_batch_size]
    plain = []
    for rep in range(spec["epochs"]):
        generator = torch.Generator().manual_seed(rep)
        t0 = time.perf_counter()
        with torch.no_grad():
            pipe(prompts, num_inference_steps=c.num_inference_steps, guidance_scale=c.guidance_scale, eta=c.eta,
                 height=c.height, width=c.width, generator=generator, output_type="pil")
        plain.append(time.perf_counter() - t0)
    result = {"plain": {"batch_s": plain, "samples": len(prompts), "steps": c.num_inference_steps},
              "ddpo": _epochs(ddpo, spec["epochs"])}
    del ddpo, pipe
    b2 = _trainer("b2", spec, [f"max_steps={spec['epochs']}"])
    result["b2"] = _epochs(b2, spec["epochs"])
    result["b2"]["steps"] = b2.config.num_inference_steps
    result["ddpo"]["steps"] = c.num_inference_steps
    return result


# -- driver ---------------------------------------------------------------------------------------
def run_json(command: list[str], env: dict[str, str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def med(values: list[float], skip_first: bool = True) -> float:
    values = values[1:] if skip_first and len(values) > 1 else values
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each side")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is left out of medians)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each process")
    parser.add_argument("--env", type=Path, default=Path(os.environ.get(
        "PROMPTLOOP_BENCH_TRL_ENV", Path.home() / ".cache" / "promptloop" / "bench-trl")))
    parser.add_argument("--skip-presets", action="store_true", help="only the TRL comparison")
    parser.add_argument("--worker", choices=["ours", "presets"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(Path(args.spec).read_text())
        print(json.dumps((worker_ours if args.worker == "ours" else worker_presets)(spec)))
        return

    from promptloop.training.config import load_config
    from promptloop.training.diffusion.config import DDPOConfig
    from promptloop.training.models import load_prompts

    trl_python = trl_env(args.env)
    preset = load_config(DDPOConfig, ROOT / "training" / "configs" / "ddpo_tiny.yaml", [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore",
           "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = {"pipeline": str(save_pipeline(tmp / "tiny-sd")), "output_dir": str(tmp / "runs"),
                "threads": args.threads, "seed": 0, "epochs": args.epochs, "prompts": load_prompts(preset.prompts),
                **{k: getattr(preset, k) for k in (
                    "num_inference_steps", "eta", "guidance_scale", "sample_batch_size",
                    "sample_num_batches_per_epoch", "train_batch_size", "learning_rate", "num_inner_epochs",
                    "adv_clip_max", "clip_range", "timestep_fraction")}}
        spec_file = tmp / "spec.json"
        spec_file.write_text(json.dumps(spec))
        runs: dict[str, list[dict]] = {"ours": [], "trl": []}
        for rep in range(args.repeats):
            for side in ("ours", "trl"):
                command = ([sys.executable, __file__, "--worker", "ours", "--spec", str(spec_file)] if side == "ours"
                           else [str(trl_python), str(HERE / "ddpo_trl_side.py"), str(spec_file)])
                runs[side].append(run_json(command, env))
                r = runs[side][-1]
                print(f"[{side} run {rep + 1}] epochs {[round(t, 2) for t in r['epoch_s']]} s, "
                      f"peak RSS {r['rss_peak_kb'] / 1024:.0f} MiB", flush=True)
        presets = None if args.skip_presets else run_json(
            [sys.executable, __file__, "--worker", "presets", "--spec", str(spec_file)], env)

    ours, trl = runs["ours"][0], runs["trl"][0]
    if abs(ours["text_checksum"] - trl["text_checksum"]) > 1e-3 * abs(ours["text_checksum"]):
        raise RuntimeError(f"the two sides load different text encoders: {ours['text_checksum']} vs "
                           f"{trl['text_checksum']}")
    assert ours["lora_params"] == trl["lora_params"] and ours["optimizer_steps"] == trl["optimizer_steps"], (ours, trl)

    def figures(side: list[dict]) -> dict[str, float]:
        n = side[0]["samples_per_epoch"]
        return {"samples/s (sampling)": statistics.median(n / med(r["sampling_s"]) for r in side),
                "samples/s (epoch)": statistics.median(n / med(r["epoch_s"]) for r in side),
                "s/epoch": statistics.median(med(r["epoch_s"]) for r in side),
                "peak RSS MiB": statistics.median(r["rss_peak_kb"] / 1024 for r in side),
                "RSS growth in training MiB": statistics.median((r["rss_peak_kb"] - r["rss_setup_kb"]) / 1024
                                                                for r in side)}

    fo, ft = figures(runs["ours"]), figures(runs["trl"])
    print(f"\nDDPO, ours vs TRL {TRL_PINS[0].split('==')[1]} ({ours['samples_per_epoch']} samples/epoch, "
          f"{spec['num_inference_steps']} steps, {ours['height']} px, {ours['optimizer_steps']:.0f} optimiser steps "
          f"in {args.epochs} epochs, LoRA {ours['lora_params']} params, {args.threads} thread(s), "
          f"{args.repeats} interleaved runs, medians)")
    print(f"{'':<28}{'ours':>10}{'TRL':>10}{'ours/TRL':>10}")
    for key in fo:
        print(f"{key:<28}{fo[key]:>10.2f}{ft[key]:>10.2f}{fo[key] / ft[key]:>10.2f}")
    if presets is None:
        return
    plain = presets["plain"]
    plain_rate = plain["samples"] / med(plain["batch_s"])
    print(f"\nTiny presets as shipped (one process; plain = diffusers pipeline call, {plain['samples']} prompts, "
          f"{plain['steps']} steps, CFG)")
    print(f"{'':<10}{'samples/s':>11}{'vs plain':>10}{'s/epoch':>10}{'s sampling':>12}{'s training':>12}"
          f"{'updates':>9}{'s/update':>10}")
    print(f"{'plain':<10}{plain_rate:>11.2f}{1.0:>10.2f}")
    rows = {}
    for kind in ("ddpo", "b2"):
        r = presets[kind]
        rate = med(r["samples"]) / med(r["sampling_s"])
        updates = sum(r["updates"][1:]) / max(1, len(r["updates"]) - 1)
        per_update = statistics.mean(r["training_s"][1:]) / updates if updates else float("nan")
        rows[kind] = (rate, med(r["epoch_s"]), per_update)
        print(f"{kind:<10}{rate:>11.2f}{rate / plain_rate:>10.2f}{med(r['epoch_s']):>10.2f}"
              f"{med(r['sampling_s']):>12.2f}{med(r['training_s']):>12.2f}{updates:>9.1f}{per_update:>10.2f}")
    print(f"b2/ddpo: samples/s {rows['b2'][0] / rows['ddpo'][0]:.2f}, s/epoch {rows['b2'][1] / rows['ddpo'][1]:.2f}, "
          f"s/update {rows['b2'][2] / rows['ddpo'][2]:.2f} (b2_tiny: {presets['b2']['steps']} steps, ddpo_tiny: "
          f"{presets['ddpo']['steps']})")


if __name__ == "__main__":
    main()
