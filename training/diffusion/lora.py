"""The trainable LoRA adapter on a diffusion UNet, through diffusers' own peft integration.

:class:`UNetLoRA` adds a peft ``LoraConfig`` adapter to the pipeline's UNet with
``unet.add_adapter`` (the base weights stay frozen) and saves it in two layouts in one folder:

* ``pytorch_lora_weights.safetensors`` (diffusers' layout, with the LoRA config as metadata): a
  plain pipeline loads it with ``pipe.load_lora_weights(folder)``, every module of any target set;
* ``adapter_model.safetensors`` + ``adapter_config.json`` (peft's layout), which the shared
  training runtime restores into a running trainer when it resumes from a checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
#: Attention projections of diffusers' UNets (what diffusers' own LoRA training scripts target).
DEFAULT_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class UNetLoRA(nn.Module):
    """A UNet with a trainable LoRA adapter; calling it calls the UNet.

    Args:
        unet: the pipeline's ``UNet2DConditionModel`` (modified in place: frozen, adapter added).
        r, alpha, dropout, target_modules: the ``peft.LoraConfig``.
        init_adapter: a folder written by :meth:`save_pretrained` (or any diffusers LoRA folder)
            to start from instead of a zero-initialised adapter.
    """

    def __init__(self, unet: nn.Module, *, r: int = 4, alpha: int = 4, dropout: float = 0.0,
                 target_modules: list[str] | None = None, init_adapter: str | None = None) -> None:
        from peft import LoraConfig

        super().__init__()
        self.unet = unet
        unet.requires_grad_(False)
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                            target_modules=list(target_modules or DEFAULT_UNET_TARGETS))
        unet.add_adapter(config)
        if init_adapter:
            self.load_adapter_weights(init_adapter)
        for p in self.lora_parameters():
            p.requires_grad_(True)
            p.data = p.data.float()  # LoRA weights train in fp32 whatever the base dtype

    # peft's get/set_peft_model_state_dict read ``peft_config`` from the model they are given.
    @property
    def peft_config(self) -> dict[str, Any]:
        return self.unet.peft_config

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.unet.named_parameters() if "lora_" in n]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.unet(*args, **kwargs)

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter's weights with peft's names relative to the UNet (no adapter name)."""
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.unet).items()}

    def save_pretrained(self, directory: str | Path, pipeline_class: Any = None) -> Path:
        """Write the adapter for ``pipe.load_lora_weights(directory)`` and for resuming.

        The keys keep peft's naming (``….lora_A.weight``), as diffusers' own SD3/Flux LoRA scripts
        save them (``get_peft_model_state_dict`` straight into ``save_lora_weights``). The SD 1.5 /
        SDXL scripts' extra ``convert_state_dict_to_diffusers`` renames only the attention
        projections (``to_q.lora.down``), and diffusers' loader converts names only when the first
        key lacks ``lora_A``: with mixed targets (attention + convolutions) it dropped every
        attention module with nothing but a peft warning.
        """
        from diffusers import StableDiffusionPipeline
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.lora_state_dict()
        cls = pipeline_class or StableDiffusionPipeline
        config = self.unet.peft_config["default"]
        metadata = config.to_dict()
        metadata["target_modules"] = sorted(metadata["target_modules"])
        cls.save_lora_weights(directory, unet_lora_layers=state,
                              unet_lora_adapter_metadata=metadata, safe_serialization=True)
        # peft layout of the same weights, keyed as get_peft_model_state_dict(self) names them
        save_file({k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self).items()},
                  str(directory / "adapter_model.safetensors"))
        (directory / "adapter_config.json").write_text(json.dumps(
            {k: (sorted(v) if isinstance(v, set) else v) for k, v in metadata.items()}, indent=2, default=str))
        return directory

    def load_adapter_weights(self, directory: str | Path) -> None:
        """Load weights saved by :meth:`save_pretrained` (diffusers layout, either naming) into this
        adapter."""
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_unet_state_dict_to_peft
        from peft.utils import set_peft_model_state_dict

        state, _ = StableDiffusionPipeline.lora_state_dict(str(directory))
        state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
        result = set_peft_model_state_dict(self.unet, convert_unet_state_dict_to_peft(state))
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"{directory}: adapter weights do not fit this UNet ({unexpected[:3]} ...)")


__all__ = ["DEFAULT_UNET_TARGETS", "DIFFUSERS_WEIGHTS", "UNetLoRA"]
