"""Train a ShapesWorld backbone (a small Stable Diffusion pipeline) on a CPU, resumably.

    python -m promptloop.training.shapes.backbone --out promptloop/assets/shapesworld/backbone-a \\
        --work runs/backbone-a --seed 0 --vae-steps 600 --unet-steps 6000

Stages, each checkpointed under ``--work`` and resumed by re-running the same command:

1. ``vae``: an ``AutoencoderKL`` (64×64 ↔ 8×8×4) on renders drawn on the fly (L1 + MSE + 1e-6·KL,
   AdamW, cosine decay); skipped with ``--vae-from DIR`` (a trained VAE folder, e.g. another
   backbone's ``vae/``); its ``scaling_factor`` is set to 1 / std of the latents. With
   ``--decoder-steps`` the decoder is then trained alone (encoder frozen: the latents do not change).
2. ``latents``: the latents of ``--num-scenes`` training scenes, encoded once.
3. ``unet``: the ``UNet2DConditionModel`` and the ``CLIPTextModel`` jointly (DDPM ε-prediction,
   min-SNR γ=5, 10% caption dropout, EMA), on captions drawn afresh each step in the grammar's mixed
   styles. Every ``--ckpt-minutes`` the full state is checkpointed and the EMA pipeline exported to
   ``--out`` (a plain diffusers folder), with ``training_info.json``.

Held-out prompts (:func:`promptloop.worlds.shapes.evaluation.heldout_scenes`) use seeds never
drawn here.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from promptloop.worlds.shapes.backbone import assemble_pipeline, build_components
from promptloop.worlds.shapes.grammar import CAPTION_MIXES, random_caption
from promptloop.worlds.shapes.render import render_scene
from promptloop.worlds.shapes.scene import BACKGROUND, sample_scene

#: Training scenes of backbone seed s are drawn from seeds TRAIN_SEED_BASE * (s + 1) + i.
TRAIN_SEED_BASE = 1_000_000


def _to_tensor(images) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _scene_seed(args, i: int) -> int:
    return TRAIN_SEED_BASE * (args.seed + 1) + i


def _save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _train_reconstruction(args, vae, params, lr: float, sched_fn, *, ckpt: Path, total: int, desc: str,
                          rng_base: int, gen_base: int, loss_fn, before_loop=None) -> None:
    """The shared resumable loop of the VAE stages: AdamW on ``params`` at ``lr`` with the LR multiplier
    ``sched_fn(step)``, batches of fresh training renders, ``loss_fn(x, generator)``, tqdm and a
    checkpoint every ``--ckpt-minutes`` (and at the end). ``rng_base`` / ``gen_base`` seed the
    scene draws and the sampling noise (offset by the step, so a resumed run goes on as one)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, sched_fn)
    step = 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(state["vae"]), opt.load_state_dict(state["opt"]), sched.load_state_dict(state["sched"])
        step = state["step"]
    rng = random.Random(rng_base + step)
    gen = torch.Generator().manual_seed(gen_base + step)
    if before_loop is not None:
        before_loop()
    last = time.time()
    bar = tqdm(total=total, initial=step, desc=desc, dynamic_ncols=True)
    while step < total:
        x = _to_tensor([render_scene(sample_scene(_scene_seed(args, rng.randrange(args.num_scenes * 4))))
                        for _ in range(args.vae_batch)])
        loss = loss_fn(x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if time.time() - last > args.ckpt_minutes * 60 or step == total:
            _save({"vae": vae.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step}, ckpt)
            last = time.time()
    bar.close()


def _pixel_weights(x: torch.Tensor, fg_weight: float) -> torch.Tensor:
    """1 on the background, ``1 + fg_weight`` on pixels that differ from it (the shapes)."""
    background = torch.tensor(BACKGROUND, dtype=x.dtype).view(1, 3, 1, 1) / 127.5 - 1.0
    foreground = ((x - background).abs().amax(dim=1, keepdim=True) > 0.05).to(x.dtype)
    return 1.0 + fg_weight * foreground


def _reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, fg_weight: float) -> torch.Tensor:
    """L1 + MSE, each pixel weighted by :func:`_pixel_weights` (normalised to mean 1). Shapes cover a
    small share of a render, so an unweighted loss lets the VAE trade their colour for background."""
    w = _pixel_weights(x, fg_weight)
    w = w / w.mean()
    diff = recon - x
    return (w * (diff.abs() + diff.square())).mean()


def train_vae(args, vae, work: Path) -> None:
    def loss_fn(x, gen):
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        return _reconstruction_loss(recon, x, args.vae_fg_weight) + 1e-6 * posterior.kl().mean()

    n = args.vae_steps
    _train_reconstruction(args, vae, vae.parameters(), args.vae_lr,
                          lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, n) / n)),
                          ckpt=work / "vae.pt", total=n, desc="vae", rng_base=args.seed * 7919,
                          gen_base=args.seed * 31, loss_fn=loss_fn, before_loop=vae.train)


def finetune_decoder(args, vae, work: Path) -> None:
    """Train the decoder alone (encoder frozen, so latents and UNets trained on them stay valid)."""
    decoder_params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())

    def freeze_encoder():
        vae.requires_grad_(False)
        for q in decoder_params:
            q.requires_grad_(True)
        vae.eval()
        vae.decoder.train()

    def loss_fn(x, gen):
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=gen)
        recon = vae.decode(z).sample
        return _reconstruction_loss(recon, x, args.vae_fg_weight)

    n = args.decoder_steps
    _train_reconstruction(args, vae, decoder_params, args.decoder_lr,
                          lambda s: 0.5 * (1 + math.cos(math.pi * min(s, n) / n)),
                          ckpt=work / "decoder.pt", total=n, desc="decoder", rng_base=args.seed * 15485863,
                          gen_base=args.seed * 37, loss_fn=loss_fn, before_loop=freeze_encoder)
    vae.requires_grad_(False)


@torch.no_grad()
def reconstruction_reward(vae, n: int = 64) -> dict[str, float]:
    """Exact reward of VAE round trips of ``n`` held-out renders against their ``full`` captions: the
    ceiling the UNet can reach through this VAE (1.0 on the renders themselves)."""
    from promptloop.preview import to_pil
    from promptloop.worlds.shapes.evaluation import heldout_prompts, summarize

    pairs = heldout_prompts(n, styles=("full",))
    x = _to_tensor([render_scene(scene) for scene, _ in pairs])
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample
    return summarize(to_pil(recon), [prompt for _, prompt in pairs])


@torch.no_grad()
def encode_latents(args, vae, work: Path) -> torch.Tensor:
    path = work / "latents.pt"
    if path.exists():
        return torch.load(path)
    vae.eval()
    chunks, bs = [], 128
    for start in tqdm(range(0, args.num_scenes, bs), desc="latents", dynamic_ncols=True):
        x = _to_tensor([render_scene(sample_scene(_scene_seed(args, i)))
                        for i in range(start, min(args.num_scenes, start + bs))])
        chunks.append(vae.encode(x).latent_dist.mean)
    latents = torch.cat(chunks)
    _save(latents, path)
    return latents


def train_unet(args, components: dict, latents: torch.Tensor, out: Path, work: Path) -> None:
    unet, text_encoder, tokenizer = components["unet"], components["text_encoder"], components["tokenizer"]
    noise_sched = components["scheduler"]
    alphas = noise_sched.alphas_cumprod
    ckpt = work / "unet.pt"
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=1e-2)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    step, seconds = 0, 0.0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(state["unet"]), text_encoder.load_state_dict(state["text_encoder"])
        ema_unet.load_state_dict(state["ema_unet"]), ema_text.load_state_dict(state["ema_text"])
        opt.load_state_dict(state["opt"])
        step, seconds = state["step"], state["seconds"]
    rng = random.Random(args.seed * 104729 + step)
    gen = torch.Generator().manual_seed(args.seed * 131 + step)
    scale = components["vae"].config.scaling_factor
    scenes = [None] * args.num_scenes
    mix = CAPTION_MIXES[args.captions]

    def scene(i):
        if scenes[i] is None:
            scenes[i] = sample_scene(_scene_seed(args, i))
        return scenes[i]

    def export() -> None:
        pipe = assemble_pipeline({**components, "unet": ema_unet, "text_encoder": ema_text})
        pipe.save_pretrained(out, safe_serialization=True)
        info = {"seed": args.seed, "unet_steps": step, "unet_seconds": round(seconds, 1), "batch": args.batch,
                "num_scenes": args.num_scenes, "captions": args.captions, "vae_from": args.vae_from, "vae_steps": args.vae_steps,
                "command": "python -m promptloop.training.shapes.backbone " + " ".join(sys.argv[1:])}
        vae_info = work / "vae_info.json"
        if vae_info.exists():
            info["vae"] = json.loads(vae_info.read_text())
        (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")

    unet.train(), text_encoder.train()
    bar = tqdm(total=args.unet_steps, initial=step, desc="unet", dynamic_ncols=True)
    last, started = time.time(), time.time()
    budget_end = started + args.time_budget_minutes * 60 if args.time_budget_minutes else None
    while step < args.unet_steps:
        t0 = time.time()
        idx = [rng.randrange(args.num_scenes) for _ in range(args.batch)]
        captions = ["" if rng.random() < args.caption_dropout else random_caption(scene(i), rng, mix) for i in idx]
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        x0 = latents[idx] * scale
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (args.batch,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, text_encoder(ids)[0]).sample
        snr = alphas[t] / (1 - alphas[t])
        weight = torch.clamp(snr, max=5.0) / snr  # min-SNR-γ for ε-prediction
        loss = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        for group in opt.param_groups:
            group["lr"] = args.unet_lr * min(1.0, (step + 1) / 200)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, model in ((ema_unet, unet), (ema_text, text_encoder)):
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - decay)
        step += 1
        seconds += time.time() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        out_of_time = budget_end is not None and time.time() > budget_end
        if time.time() - last > args.ckpt_minutes * 60 or step == args.unet_steps or out_of_time:
            _save({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                   "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(), "opt": opt.state_dict(),
                   "step": step, "seconds": seconds}, ckpt)
            export()
            last = time.time()
        if out_of_time:
            tqdm.write(f"time budget reached at step {step}; re-run the same command to continue")
            break
    bar.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="exported diffusers folder")
    p.add_argument("--work", type=Path, required=True, help="checkpoints (resumed from here)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-from", type=str, default=None, help="reuse a trained AutoencoderKL folder")
    p.add_argument("--vae-steps", type=int, default=600)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-fg-weight", type=float, default=0.0,
                   help="extra loss weight on shape pixels (0: plain L1 + MSE, as the first backbones)")
    p.add_argument("--decoder-steps", type=int, default=0,
                   help="then fine-tune the decoder alone (encoder frozen) this many steps")
    p.add_argument("--decoder-lr", type=float, default=1e-3)
    p.add_argument("--recon-n", type=int, default=64, help="held-out renders the VAE's reconstruction is scored on")
    p.add_argument("--num-scenes", type=int, default=20_000)
    p.add_argument("--unet-steps", type=int, default=6000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--captions", choices=sorted(CAPTION_MIXES), default="mixed",
                   help="caption style mix: 'mixed' (every phrasing) or 'descriptive' (95%% full captions)")
    p.add_argument("--ckpt-minutes", type=float, default=4.0)
    p.add_argument("--time-budget-minutes", type=float, default=None, help="stop (resumably) after this long")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--stop-after", choices=("vae", "latents", "unet"), default="unet")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    components = build_components(args.seed)
    if args.vae_from:
        from diffusers import AutoencoderKL

        components["vae"] = AutoencoderKL.from_pretrained(args.vae_from)
    else:
        t0 = time.time()
        if not (args.work / "vae").exists():
            train_vae(args, components["vae"], args.work)
        vae_dir = args.work / "vae"
        if vae_dir.exists():
            from diffusers import AutoencoderKL

            components["vae"] = AutoencoderKL.from_pretrained(vae_dir)
        else:
            components["vae"].eval()
            with torch.no_grad():
                sample = _to_tensor([render_scene(sample_scene(_scene_seed(args, i))) for i in range(256)])
                std = components["vae"].encode(sample).latent_dist.mean.std().item()
            components["vae"].register_to_config(scaling_factor=1.0 / std)
            components["vae"].save_pretrained(vae_dir)
            (args.work / "vae_info.json").write_text(json.dumps(
                {"steps": args.vae_steps, "batch": args.vae_batch, "fg_weight": args.vae_fg_weight,
                 "seconds_this_run": round(time.time() - t0, 1), "scaling_factor": 1.0 / std,
                 "reconstruction": reconstruction_reward(components["vae"], args.recon_n)}) + "\n")
    if args.decoder_steps and not args.vae_from:
        done = args.work / "vae-decoder"
        if not (done / "config.json").exists():
            t0 = time.time()
            finetune_decoder(args, components["vae"], args.work)
            components["vae"].save_pretrained(done)
            info_path = args.work / "vae_info.json"
            info = json.loads(info_path.read_text()) if info_path.exists() else {}
            info.update(decoder_steps=args.decoder_steps, decoder_seconds_this_run=round(time.time() - t0, 1),
                        reconstruction_after_decoder=reconstruction_reward(components["vae"], args.recon_n))
            info_path.write_text(json.dumps(info) + "\n")
        from diffusers import AutoencoderKL

        components["vae"] = AutoencoderKL.from_pretrained(done)
    if args.stop_after == "vae":
        return
    components["vae"].requires_grad_(False).eval()
    latents = encode_latents(args, components["vae"], args.work)
    if args.stop_after == "latents":
        return
    train_unet(args, components, latents, args.out, args.work)


if __name__ == "__main__":
    main()
