"""Loading what trainers train and sample with: the policy model with a peft LoRA adapter. The
backbone, policy and prompt-set specs are resolved by the library (:mod:`promptloop.specs`,
:mod:`promptloop.prompts`), shared with ``promptloop eval``."""

from __future__ import annotations

from typing import Any

import torch

from promptloop.prompts import load_prompts
from promptloop.specs import load_backbone, policy_adapter_path, policy_base_path
from promptloop.training.grpo.config import GRPOConfig

__all__ = ["load_backbone", "load_policy_model", "load_prompts", "policy_base_path"]


#: Never adapted: the vision tower (Qwen2-VL's ``visual``, LLaVA's ``vision_tower``), whose MLP
#: may share the language model's names (Qwen2.5-VL's gate/up/down_proj).
VISION_MODULES = r".*\b(visual|vision_tower|vision_model)\b.*"


def load_policy_model(config: GRPOConfig, device: torch.device | str = "cpu") -> tuple[Any, Any, str]:
    """The policy model wrapped in a trainable peft LoRA (fresh, or ``config.init_adapter``), its
    processor, and the base model's path."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from promptloop.backbones.loading import resolve_dtype

    base = policy_base_path(config.policy)
    dtype = resolve_dtype(config.dtype or ("bfloat16" if str(device).startswith("cuda") else "float32"), device)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype)
    processor = AutoProcessor.from_pretrained(base)
    if config.init_adapter:
        model = PeftModel.from_pretrained(model, policy_adapter_path(config.init_adapter), is_trainable=True)
    else:
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.lora_target_modules), bias="none",
                          exclude_modules=VISION_MODULES)
        model = get_peft_model(model, lora)
    model.to(device)
    return model, processor, base
