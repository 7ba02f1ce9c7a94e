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

import copy
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from promptloop.training.config import parse_flags
from promptloop.training.runtime import ScriptRun, save_file
from promptloop.worlds.shapes.backbone import assemble_pipeline, build_components
from promptloop.worlds.shapes.grammar import CAPTION_MIXES, random_caption
from promptloop.worlds.shapes.render import render_scene
from promptloop.worlds.shapes.scene import BACKGROUND, sample_scene

#: Training scenes of backbone seed s are drawn from seeds TRAIN_SEED_BASE * (s + 1) + i.
TRAIN_SEED_BASE = 1_000_000


@dataclass
class BackboneConfig(ScriptRun):
    """The flags of ``python -m promptloop.training.shapes.backbone`` (``--vae-steps`` ...)."""

    vae_from: str | None = field(default=None, metadata={"help": "reuse a trained AutoencoderKL folder"})
    vae_steps: int = 600
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_fg_weight: float = field(default=0.0, metadata={
        "help": "extra loss weight on shape pixels (0: plain L1 + MSE, as the first backbones)"})
    decoder_steps: int = field(default=0, metadata={
        "help": "then fine-tune the decoder alone (encoder frozen) this many steps"})
    decoder_lr: float = 1e-3
    recon_n: int = field(default=64, metadata={"help": "held-out renders the VAE's reconstruction is scored on"})
    num_scenes: int = 20_000
    unet_steps: int = 6000
    batch: int = 32
    unet_lr: float = 1e-3
    ema: float = 0.998
    caption_dropout: float = 0.1
    captions: str = field(default="mixed", metadata={
        "choices": sorted(CAPTION_MIXES),
        "help": "caption style mix: 'mixed' (every phrasing) or 'descriptive' (95%% full captions)"})
    stop_after: str = field(default="unet", metadata={"choices": ("vae", "latents", "unet")})


def _to_tensor(images) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _scene_seed(config: BackboneConfig, i: int) -> int:
    return TRAIN_SEED_BASE * (config.seed + 1) + i


def _train_reconstruction(config: BackboneConfig, vae, params, lr: float, sched_fn, *, ckpt: str, total: int,
                          desc: str, rng_base: int, gen_base: int, loss_fn, before_loop=None) -> None:
    """The shared resumable loop of the VAE stages: AdamW on ``params`` at ``lr`` with the LR multiplier
    ``sched_fn(step)``, batches of fresh training renders, ``loss_fn(x, generator)``, checkpointed
    to ``work/ckpt`` every ``--ckpt-minutes`` (and at the end). ``rng_base`` / ``gen_base`` seed the
    scene draws and the sampling noise (offset by the step, so a resumed run goes on as one)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, sched_fn)
    loop = config.loop(ckpt, total, desc=desc, budget=False,
                       state=lambda: {"vae": vae.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()})
    if (saved := loop.resume()) is not None:
        vae.load_state_dict(saved["vae"]), opt.load_state_dict(saved["opt"]), sched.load_state_dict(saved["sched"])
    rng = random.Random(rng_base + loop.step)
    gen = torch.Generator().manual_seed(gen_base + loop.step)
    if before_loop is not None:
        before_loop()
    for _ in loop:
        x = _to_tensor([render_scene(sample_scene(_scene_seed(config, rng.randrange(config.num_scenes * 4))))
                        for _ in range(config.vae_batch)])
        loss = loss_fn(x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loop.report(loss=loss.item())


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


def train_vae(config: BackboneConfig, vae) -> None:
    def loss_fn(x, gen):
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        return _reconstruction_loss(recon, x, config.vae_fg_weight) + 1e-6 * posterior.kl().mean()

    n = config.vae_steps
    _train_reconstruction(config, vae, vae.parameters(), config.vae_lr,
                          lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, n) / n)),
                          ckpt="vae.pt", total=n, desc="vae", rng_base=config.seed * 7919,
                          gen_base=config.seed * 31, loss_fn=loss_fn, before_loop=vae.train)


def finetune_decoder(config: BackboneConfig, vae) -> None:
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
        return _reconstruction_loss(recon, x, config.vae_fg_weight)

    n = config.decoder_steps
    _train_reconstruction(config, vae, decoder_params, config.decoder_lr,
                          lambda s: 0.5 * (1 + math.cos(math.pi * min(s, n) / n)),
                          ckpt="decoder.pt", total=n, desc="decoder", rng_base=config.seed * 15485863,
                          gen_base=config.seed * 37, loss_fn=loss_fn, before_loop=freeze_encoder)
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
def encode_latents(config: BackboneConfig, vae) -> torch.Tensor:
    path = config.work / "latents.pt"
    if path.exists():
        return torch.load(path)
    vae.eval()
    chunks, bs = [], 128
    for start in tqdm(range(0, config.num_scenes, bs), desc="latents", dynamic_ncols=True):
        x = _to_tensor([render_scene(sample_scene(_scene_seed(config, i)))
                        for i in range(start, min(config.num_scenes, start + bs))])
        chunks.append(vae.encode(x).latent_dist.mean)
    latents = torch.cat(chunks)
    save_file(latents, path)
    return latents


def train_unet(config: BackboneConfig, components: dict, latents: torch.Tensor) -> None:
    c = config
    unet, text_encoder, tokenizer = components["unet"], components["text_encoder"], components["tokenizer"]
    noise_sched = components["scheduler"]
    alphas = noise_sched.alphas_cumprod
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=c.unet_lr, weight_decay=1e-2)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    loop = c.loop("unet.pt", c.unet_steps, desc="unet", state=lambda: {
        "unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "ema_unet": ema_unet.state_dict(),
        "ema_text": ema_text.state_dict(), "opt": opt.state_dict()})
    if (saved := loop.resume()) is not None:
        unet.load_state_dict(saved["unet"]), text_encoder.load_state_dict(saved["text_encoder"])
        ema_unet.load_state_dict(saved["ema_unet"]), ema_text.load_state_dict(saved["ema_text"])
        opt.load_state_dict(saved["opt"])
    rng = random.Random(c.seed * 104729 + loop.step)
    gen = torch.Generator().manual_seed(c.seed * 131 + loop.step)
    scale = components["vae"].config.scaling_factor
    scenes = [None] * c.num_scenes
    mix = CAPTION_MIXES[c.captions]

    def scene(i):
        if scenes[i] is None:
            scenes[i] = sample_scene(_scene_seed(c, i))
        return scenes[i]

    def export() -> None:
        pipe = assemble_pipeline({**components, "unet": ema_unet, "text_encoder": ema_text})
        pipe.save_pretrained(c.out, safe_serialization=True)
        info = {"seed": c.seed, "unet_steps": loop.step, "unet_seconds": round(loop.seconds, 1), "batch": c.batch,
                "num_scenes": c.num_scenes, "captions": c.captions, "vae_from": c.vae_from, "vae_steps": c.vae_steps,
                "command": "python -m promptloop.training.shapes.backbone " + " ".join(sys.argv[1:])}
        vae_info = c.work / "vae_info.json"
        if vae_info.exists():
            info["vae"] = json.loads(vae_info.read_text())
        (c.out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")

    loop.on_save = export
    unet.train(), text_encoder.train()
    for step in loop:
        idx = [rng.randrange(c.num_scenes) for _ in range(c.batch)]
        captions = ["" if rng.random() < c.caption_dropout else random_caption(scene(i), rng, mix) for i in idx]
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        x0 = latents[idx] * scale
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (c.batch,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, text_encoder(ids)[0]).sample
        snr = alphas[t] / (1 - alphas[t])
        weight = torch.clamp(snr, max=5.0) / snr  # min-SNR-γ for ε-prediction
        loss = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        for group in opt.param_groups:
            group["lr"] = c.unet_lr * min(1.0, (step + 1) / 200)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(c.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, model in ((ema_unet, unet), (ema_text, text_encoder)):
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - decay)
        loop.report(loss=loss.item())


def train_backbone(config: BackboneConfig) -> None:
    """Run the stages up to ``config.stop_after``, each resumed from ``config.work``."""
    c = config
    c.start()
    torch.manual_seed(c.seed)
    components = build_components(c.seed)
    if c.vae_from:
        from diffusers import AutoencoderKL

        components["vae"] = AutoencoderKL.from_pretrained(c.vae_from)
    else:
        t0 = time.time()
        if not (c.work / "vae").exists():
            train_vae(c, components["vae"])
        vae_dir = c.work / "vae"
        if vae_dir.exists():
            from diffusers import AutoencoderKL

            components["vae"] = AutoencoderKL.from_pretrained(vae_dir)
        else:
            components["vae"].eval()
            with torch.no_grad():
                sample = _to_tensor([render_scene(sample_scene(_scene_seed(c, i))) for i in range(256)])
                std = components["vae"].encode(sample).latent_dist.mean.std().item()
            components["vae"].register_to_config(scaling_factor=1.0 / std)
            components["vae"].save_pretrained(vae_dir)
            (c.work / "vae_info.json").write_text(json.dumps(
                {"steps": c.vae_steps, "batch": c.vae_batch, "fg_weight": c.vae_fg_weight,
                 "seconds_this_run": round(time.time() - t0, 1), "scaling_factor": 1.0 / std,
                 "reconstruction": reconstruction_reward(components["vae"], c.recon_n)}) + "\n")
    if c.decoder_steps and not c.vae_from:
        done = c.work / "vae-decoder"
        if not (done / "config.json").exists():
            t0 = time.time()
            finetune_decoder(c, components["vae"])
            components["vae"].save_pretrained(done)
            info_path = c.work / "vae_info.json"
            info = json.loads(info_path.read_text()) if info_path.exists() else {}
            info.update(decoder_steps=c.decoder_steps, decoder_seconds_this_run=round(time.time() - t0, 1),
                        reconstruction_after_decoder=reconstruction_reward(components["vae"], c.recon_n))
            info_path.write_text(json.dumps(info) + "\n")
        from diffusers import AutoencoderKL

        components["vae"] = AutoencoderKL.from_pretrained(done)
    if c.stop_after == "vae":
        return
    components["vae"].requires_grad_(False).eval()
    latents = encode_latents(c, components["vae"])
    if c.stop_after == "latents":
        return
    train_unet(c, components, latents)


def main(argv: list[str] | None = None) -> None:
    train_backbone(parse_flags(BackboneConfig, argv, description=__doc__))


if __name__ == "__main__":
    main()
