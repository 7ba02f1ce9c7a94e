"""Every shipped DDPO/B² preset's LoRA targets: the saved adapter loads *whole* into a plain
pipeline with ``pipe.load_lora_weights(dir)`` and gives the trainer's own output (issue 18, item 2:
with mixed attention + convolution targets diffusers used to drop every attention module)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from promptloop.training.config import load_config
from promptloop.training.diffusion.b2 import B2Trainer
from promptloop.training.diffusion.config import B2Config, DDPOConfig
from promptloop.training.diffusion.ddpo import DDPOTrainer

ROOT = Path(__file__).resolve().parents[1]
SHAPES_A = str(ROOT / "promptloop" / "assets" / "shapesworld" / "backbone-a")
#: preset -> (trainer, config class, a backbone that runs here, its prompts)
PRESETS = {
    "ddpo_tiny": (DDPOTrainer, DDPOConfig, "tiny:sd", "tiny"),
    "ddpo_shapes": (DDPOTrainer, DDPOConfig, SHAPES_A, "shapes:8"),
    "ddpo_sd15": (DDPOTrainer, DDPOConfig, "tiny:sd", "tiny"),
    "ddpo_sdxl": (DDPOTrainer, DDPOConfig, "tiny:sdxl", "tiny"),
    "b2_tiny": (B2Trainer, B2Config, "tiny:sd", "tiny"),
    "b2_sd15": (B2Trainer, B2Config, "tiny:sd", "tiny"),
}
# the preset's LoRA (targets, rank, alpha) is kept; only the sizes shrink to one short epoch here
SMALL = ["device=cpu", "mixed_precision='no'", "dtype=float32", "max_steps=1", "save_steps=0", "eval_steps=0",
         "report_to=none", "progress=false", "num_inference_steps=3", "sample_batch_size=2",
         "sample_num_batches_per_epoch=1", "train_batch_size=2", "gradient_accumulation_steps=1", "height=64",
         "width=64", "reward=jpeg_compressibility", "per_prompt_stat_tracking=false", "learning_rate=3e-2",
         "clip_range=0.2"]
B2_SMALL = ["split_step_min=2", "split_step_max=3", "num_branches=2", "pos_threshold=0", "neg_threshold=0"]


def _lora_layers(unet) -> list[str]:
    from peft.tuners.lora import LoraLayer

    return sorted(name for name, module in unet.named_modules() if isinstance(module, LoraLayer))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_trained_lora_module_loads_into_a_plain_pipeline(preset, tmp_path, caplog):
    from diffusers import DDIMScheduler
    from peft.utils import get_peft_model_state_dict

    from promptloop.specs import load_backbone

    torch.set_num_threads(1)
    trainer_cls, config_cls, backbone, prompts = PRESETS[preset]
    extra = B2_SMALL if config_cls is B2Config else []
    cfg = load_config(config_cls, ROOT / "training" / "configs" / f"{preset}.yaml",
                      [f"output_dir={tmp_path}", f"backbone={backbone}", f"prompts={prompts}", *SMALL, *extra])
    trainer = trainer_cls(cfg)
    adapter = trainer.train()
    trained_layers = _lora_layers(trainer.pipe.unet)
    trained = trainer.model.lora_state_dict()
    assert len(trained_layers) == len(trained) // 2 > 0  # one lora_A and one lora_B per module

    plain = load_backbone(backbone)
    plain.scheduler = DDIMScheduler.from_config(plain.scheduler.config)
    trainer.pipe.scheduler = DDIMScheduler.from_config(plain.scheduler.config)
    kwargs = {"num_inference_steps": 4, "height": 64, "width": 64, "guidance_scale": 5.0, "output_type": "np"}
    prompt = ["a red circle", "two blue squares"]
    untuned = plain(prompt, generator=torch.Generator().manual_seed(0), **kwargs).images
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        plain.load_lora_weights(str(adapter))
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]
    assert "unexpected keys" not in caplog.text and "missing keys" not in caplog.text, caplog.text
    # every trained module is a LoRA layer of the loaded UNet, holding the trained weights
    assert _lora_layers(plain.unet) == trained_layers
    (name,) = plain.unet.peft_config
    loaded = get_peft_model_state_dict(plain.unet, adapter_name=name)
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k].float(), trained[k]) for k in trained)
    # and the loaded pipeline draws what the trainer's own tuned pipeline draws, on the same noise
    tuned = plain(prompt, generator=torch.Generator().manual_seed(0), **kwargs).images
    own = trainer.pipe(prompt, generator=torch.Generator().manual_seed(0), **kwargs).images
    np.testing.assert_allclose(tuned, own, atol=1e-5)
    assert np.abs(tuned - untuned).max() > 1e-3, "the trained adapter should change the image"
