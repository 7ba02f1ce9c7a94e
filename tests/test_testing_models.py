"""The tiny model factories build real, runnable, deterministic models that round-trip through disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from transformers import AutoTokenizer, CLIPTokenizer

from promptloop.testing import (
    FAMILIES,
    TINY_PROMPTS,
    build_clip_tokenizer,
    build_t5_tokenizer,
    save_tiny_pipeline,
    tiny_pipeline,
)

EXPECTED_CLASS = {
    "sd": StableDiffusionPipeline,
    "sdxl": StableDiffusionXLPipeline,
    "sd3": StableDiffusion3Pipeline,
    "flux": FluxPipeline,
}
# Guidance at which each family runs classifier-free guidance (FLUX is guidance-distilled: its CFG
# is ``true_cfg_scale`` with a negative prompt).
CFG_KWARGS = {
    "sd": {"guidance_scale": 5.0},
    "sdxl": {"guidance_scale": 5.0},
    "sd3": {"guidance_scale": 5.0},
    "flux": {"true_cfg_scale": 3.0, "negative_prompt": "blurry"},
}
NO_CFG_KWARGS = {
    "sd": {"guidance_scale": 1.0},
    "sdxl": {"guidance_scale": 1.0},
    "sd3": {"guidance_scale": 1.0},
    "flux": {"guidance_scale": 3.5},
}


def _run(pipe, prompt, seed: int = 0, **kwargs) -> np.ndarray:
    kwargs.setdefault("num_inference_steps", 4)
    kwargs.setdefault("height", 64)
    kwargs.setdefault("width", 64)
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


@pytest.fixture(scope="module", params=FAMILIES)
def family_pipe(request):
    return request.param, tiny_pipeline(request.param)


# --------------------------------------------------------------------------- tokenizers


def test_clip_tokenizer_specials_padding_and_fallback(tmp_path):
    tok = build_clip_tokenizer()
    assert tok.model_max_length == 77
    specials = tok.convert_ids_to_tokens([tok.bos_token_id, tok.eos_token_id])
    assert specials == ["<|startoftext|>", "<|endoftext|>"]
    # Like real CLIP, the two specials are the last ids (argmax pooling finds EOS).
    assert {tok.bos_token_id, tok.eos_token_id} == {len(tok) - 2, len(tok) - 1}
    text = "A red fox in the snow — Überraschung 42!"
    ids = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and ids[-1] == tok.pad_token_id
    assert tok.unk_token_id not in ids[1 : ids.index(tok.eos_token_id)]
    # Words of the training captions are single tokens.
    assert tok.tokenize("red fox") == ["red</w>", "fox</w>"]
    assert tok.decode(ids, skip_special_tokens=True).startswith("a red fox in the snow")
    tok.save_pretrained(tmp_path)
    for cls in (CLIPTokenizer, AutoTokenizer):
        assert cls.from_pretrained(tmp_path)(text).input_ids == tok(text).input_ids


def test_t5_tokenizer_specials_and_roundtrip(tmp_path):
    tok = build_t5_tokenizer()
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "</s>", "<unk>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok("a red fox in the snow").input_ids
    assert len(ids) == 7 and ids[-1] == tok.eos_token_id
    odd = tok("zebra-crossing at 5pm").input_ids  # unseen words fall back to characters
    assert tok.unk_token_id not in odd
    assert tok.decode(odd, skip_special_tokens=True) == "zebra-crossing at 5pm"
    padded = tok(["a fox", "a red fox in the snow"], padding="max_length", max_length=16).input_ids
    assert all(len(row) == 16 for row in padded) and padded[0][-1] == tok.pad_token_id
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TINY_PROMPTS[:5] + ["zebra-crossing at 5pm"]:
        assert loaded(text).input_ids == tok(text).input_ids


# --------------------------------------------------------------------------- pipelines


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="unknown family"):
        tiny_pipeline("sd2")


def test_pipeline_class_and_geometry(family_pipe):
    family, pipe = family_pipe
    assert type(pipe) is EXPECTED_CLASS[family]
    assert pipe.vae_scale_factor == 8
    assert all(not m.training for m in pipe.components.values() if isinstance(m, torch.nn.Module))
    latents = pipe("a red fox", num_inference_steps=2, height=64, width=64, output_type="latent",
                   generator=torch.Generator().manual_seed(0), **NO_CFG_KWARGS[family]).images
    expected = {"sd": (1, 4, 8, 8), "sdxl": (1, 4, 8, 8), "sd3": (1, 16, 8, 8), "flux": (1, 16, 64)}
    assert tuple(latents.shape) == expected[family]
    if family in ("sd3", "flux"):
        assert pipe.vae.config.latent_channels == 16
        assert pipe.vae.config.shift_factor is not None
    n_params = sum(p.numel() for m in pipe.components.values() if isinstance(m, torch.nn.Module)
                   for p in m.parameters())
    assert n_params < 2_000_000


def test_pipeline_runs_with_and_without_cfg(family_pipe):
    family, pipe = family_pipe
    plain = _run(pipe, "a red fox in the snow", **NO_CFG_KWARGS[family])
    guided = _run(pipe, "a red fox in the snow", **CFG_KWARGS[family])
    for images in (plain, guided):
        assert images.shape == (1, 64, 64, 3)
        assert np.isfinite(images).all() and images.std() > 0.01
    assert np.abs(plain - guided).max() > 1e-4


def test_pipeline_pil_batch_and_images_per_prompt(family_pipe):
    family, pipe = family_pipe
    cfg = dict(CFG_KWARGS[family])
    if "negative_prompt" in cfg:  # FluxPipeline does not broadcast one negative prompt over a batch
        cfg["negative_prompt"] = [cfg["negative_prompt"]] * 2
    out = pipe(["a red fox", "a cat on a chair"], num_images_per_prompt=2, num_inference_steps=4, height=64,
               width=64, generator=torch.Generator().manual_seed(0), output_type="pil", **cfg)
    assert len(out.images) == 4 and all(img.size == (64, 64) for img in out.images)


def test_pipeline_is_deterministic_and_prompt_sensitive(family_pipe):
    family, pipe = family_pipe
    a = _run(pipe, "a red fox in the snow", **NO_CFG_KWARGS[family])
    b = _run(pipe, "a red fox in the snow", **NO_CFG_KWARGS[family])
    c = _run(pipe, "a bowl of ramen with a soft boiled egg", **NO_CFG_KWARGS[family])
    d = _run(pipe, "a red fox in the snow", seed=1, **NO_CFG_KWARGS[family])
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    assert np.abs(a - d).max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights(family):
    a = tiny_pipeline(family, seed=3)
    b = tiny_pipeline(family, seed=3)
    c = tiny_pipeline(family, seed=4)
    name = "unet" if family in ("sd", "sdxl") else "transformer"
    sa, sb, sc = (getattr(p, name).state_dict() for p in (a, b, c))
    assert all(torch.equal(value, sb[key]) for key, value in sa.items())
    assert any(not torch.equal(value, sc[key]) for key, value in sa.items())
    assert a.tokenizer.get_vocab() == c.tokenizer.get_vocab()


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_reload_gives_same_images(family, tmp_path):
    path = save_tiny_pipeline(family, tmp_path / family)
    assert (path / "model_index.json").is_file()
    loaded = DiffusionPipeline.from_pretrained(path)
    assert type(loaded) is EXPECTED_CLASS[family]
    fresh = tiny_pipeline(family)
    # Weights are bit-identical; the images agree up to float rounding (loaded tensors may take
    # different CPU kernels).
    np.testing.assert_allclose(
        _run(loaded, "a red fox in the snow", **CFG_KWARGS[family]),
        _run(fresh, "a red fox in the snow", **CFG_KWARGS[family]),
        atol=1e-4,
    )


# --------------------------------------------------------------------------- policy


def _conversations() -> list[list[dict]]:  # a system message in one, the default in the other
    return [
        [
            {"role": "system", "content": [{"type": "text", "text": "Rewrite the prompt."}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a red fox"}]},
        ],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "an astronaut"}]}],
    ]


def _images() -> list:
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8)) for _ in range(2)]


@pytest.fixture(scope="module")
def tiny_qwen():
    from promptloop.testing import build_tiny_qwen2vl

    return build_tiny_qwen2vl()


def _policy_inputs(processor):
    processor.tokenizer.padding_side = "left"
    texts = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in _conversations()]
    return texts, processor(text=texts, images=_images(), return_tensors="pt", padding=True)


def test_qwen_tokenizer_and_chat_template(tiny_qwen):
    model, processor = tiny_qwen
    tok = processor.tokenizer
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert len(tok) == model.config.text_config.vocab_size
    cfg = model.config
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    texts, inputs = _policy_inputs(processor)
    assert texts[0] == (
        "<|im_start|>system\nRewrite the prompt.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>a red fox<|im_end|>\n<|im_start|>assistant\n"
    )
    assert texts[1].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    # 56x56 -> 4x4 patches of 14 px -> 2x2 merged -> 4 image tokens per image; left padding.
    assert (inputs["input_ids"] == cfg.image_token_id).sum(dim=1).tolist() == [4, 4]
    assert inputs["attention_mask"][:, -1].tolist() == [1, 1]
    short = int(inputs["attention_mask"].sum(dim=1).argmin())
    assert inputs["attention_mask"][short, 0] == 0 and inputs["input_ids"][short, 0] == tok.pad_token_id
    # Words of the captions are single tokens; arbitrary text round-trips.
    assert tok.tokenize(" red fox") == ["Ġred", "Ġfox"]
    text = "Überraschung: 42 zebras!"
    assert tok.decode(tok(text).input_ids) == text


def test_qwen_generates_a_batch(tiny_qwen):
    model, processor = tiny_qwen
    _, inputs = _policy_inputs(processor)
    out = model.generate(**inputs, max_new_tokens=16)
    new = out[:, inputs["input_ids"].shape[1]:]
    assert new.shape[0] == 2 and 1 <= new.shape[1] <= 16
    assert all(isinstance(s, str) for s in processor.batch_decode(new, skip_special_tokens=True))
    torch.testing.assert_close(model.generate(**inputs, max_new_tokens=16), out, rtol=0, atol=0)


def test_qwen_save_and_reload_gives_same_greedy_output(tiny_qwen, tmp_path):
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    from promptloop.testing import save_tiny_qwen2vl

    model, processor = tiny_qwen
    path = save_tiny_qwen2vl(tmp_path / "policy")
    loaded = Qwen2VLForConditionalGeneration.from_pretrained(path)
    loaded_processor = AutoProcessor.from_pretrained(path)
    assert isinstance(loaded_processor, Qwen2VLProcessor)
    assert loaded_processor.tokenizer.padding_side == "left"
    texts, inputs = _policy_inputs(processor)
    loaded_texts, loaded_inputs = _policy_inputs(loaded_processor)
    assert loaded_texts == texts
    for key in inputs:
        assert torch.equal(inputs[key], loaded_inputs[key]), key
    torch.testing.assert_close(
        loaded.generate(**loaded_inputs, max_new_tokens=16),
        model.generate(**inputs, max_new_tokens=16),
        rtol=0,
        atol=0,
    )
