"""Build a tiny SD1.5-shaped checkpoint that ComfyUI's ``CheckpointLoaderSimple`` recognises.

Run with ComfyUI's own python (it imports ComfyUI's classes), e.g.::

    /path/to/ComfyUI/.venv/bin/python tests/comfy/tiny_comfy_checkpoint.py \
        --comfyui /path/to/ComfyUI --out /tmp/ckpts/tiny_sd15.safetensors

What it writes (random weights, fixed seed, nothing downloaded):

* ``model.diffusion_model.*`` - a shallow UNet built with ComfyUI's own ``UNetModel`` with the
  widths ComfyUI's SD1.5 detector requires (``model_channels`` 320, ``context_dim`` 768, 8 heads)
  but one resolution level, one res block and transformer depth 1 (~26M parameters).
* ``cond_stage_model.transformer.text_model.*`` - a random CLIP-L text encoder (transformers'
  ``CLIPTextModel`` with CLIP-L's shape, the layout of SD1.5 checkpoints), so that different
  prompts give different embeddings.
* ``first_stage_model.taesd_*`` - a random TAESD (ComfyUI's own class), which ComfyUI's VAE
  loader accepts in place of the full autoencoder: images decode, cheaply.

The test suite generates this in a temporary directory; it is never committed.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def _init_(module, seed: int) -> None:
    """ComfyUI's layers skip weight init (they expect a checkpoint): give them random values."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 0:  # scalars such as TAESD's vae_scale / vae_shift keep their values
                continue
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif name.endswith("weight"):  # norms
                p.fill_(1.0)
            else:
                p.zero_()


def build(comfyui_dir: str, out: str, seed: int = 0) -> Path:
    sys.path.insert(0, str(Path(comfyui_dir).resolve()))
    sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI parses the command line on import
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.taesd.taesd import TAESD
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNetModel(
        image_size=32,
        in_channels=4,
        model_channels=320,
        out_channels=4,
        num_res_blocks=1,
        channel_mult=(1,),
        transformer_depth=[1],
        transformer_depth_output=[1, 1],
        transformer_depth_middle=1,
        context_dim=768,
        num_heads=8,
        use_spatial_transformer=True,
        use_linear_in_transformer=False,
        legacy=False,
    )
    _init_(unet, seed)
    # Keep the random UNet's output small so that samples stay in a sane range.
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.startswith("out."):
                p.mul_(0.1)
    sd = {f"model.diffusion_model.{k}": v.to(torch.float16) for k, v in unet.state_dict().items()}

    # CLIP-L's text tower: transformers' defaults (49408 tokens, 12 layers, 77 positions, quick_gelu)
    # with CLIP-L's widths
    clip_config = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, projection_dim=768)
    clip = CLIPTextModel(clip_config)
    for k, v in clip.state_dict().items():
        if k.endswith("position_ids"):
            continue
        sd[f"cond_stage_model.transformer.{k}"] = v.to(torch.float16).contiguous()

    taesd = TAESD()
    _init_(taesd, seed + 1)
    sd.update({f"first_stage_model.{k}": v.to(torch.float16) for k, v in taesd.state_dict().items()})

    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out_path))
    return out_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", required=True, help="ComfyUI checkout (its classes build the UNet)")
    parser.add_argument("--out", required=True, help="where to write the .safetensors checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    args, _ = parser.parse_known_args()
    path = build(args.comfyui, args.out, args.seed)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
