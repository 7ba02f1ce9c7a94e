"""Model-based rewards on tiny checkpoints the tests save themselves (no download).

Each test loads a reward through the same code a real checkpoint uses (``get_reward`` with a local
path) and compares its scores with the published formula computed independently: the model's own
forward (CLIP logits), a plain re-implementation of the head, timm's ViT (the architecture of
BLIP's vision encoder, with the same key names as ``ImageReward.pt``), or open_clip's forward.
"""

from __future__ import annotations

import functools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from promptloop.rewards import get_reward, load_reward
from promptloop.rewards.imagereward import IMAGEREWARD_MEAN, IMAGEREWARD_STD
from promptloop.testing.rewards import build_tiny_bert_tokenizer, build_tiny_clip, save_tiny_clip

PROMPTS = ["a red fox in the snow", "a sailing boat on a calm blue sea, watercolor painting", "a cat"]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    gray = Image.fromarray(rng.integers(0, 256, (30, 30), dtype=np.uint8), mode="L")
    return [Image.new("RGB", (40, 40), (200, 20, 20)), noise, gray]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def _clip_reference(model, processor, images, prompts) -> torch.Tensor:
    """cos(E_image, E_text) per pair, from the model's own forward (logits / logit_scale)."""
    inputs = processor(text=prompts, images=[im.convert("RGB") for im in images], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    return out.logits_per_image.diagonal() / model.logit_scale.exp()


def test_clip_score_is_100_cos_clipped_at_zero_and_batched(clip_dir, tmp_path):
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    cos = _clip_reference(model, processor, _images(), PROMPTS)
    scores = get_reward("clip", path=str(clip_dir), device="cpu", batch_size=2)(_images(), PROMPTS)
    assert scores == pytest.approx((100 * cos).clamp(min=0).tolist(), abs=1e-3)
    # One at a time gives the same scores (padding differs with the batch, the scores must not).
    single = get_reward("clip", path=str(clip_dir), batch_size=1)(_images(), PROMPTS)
    assert single == pytest.approx(scores, abs=1e-3)
    # Flip the sign of every cosine: exactly the pairs that scored 0 now score 100|cos|.
    with torch.no_grad():
        model.text_projection.weight.neg_()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    flipped = get_reward("clip", path=str(tmp_path))(_images(), PROMPTS)
    for a, b, c in zip(scores, flipped, cos.tolist()):
        assert min(a, b) == 0.0
        assert a + b == pytest.approx(100 * abs(c), abs=1e-3)


def test_clip_dtype_option(clip_dir):
    reward = get_reward("clip", path=str(clip_dir), dtype="bfloat16")
    assert reward.model.dtype == torch.bfloat16
    full = get_reward("clip", path=str(clip_dir))(_images(), PROMPTS)
    assert reward(_images(), PROMPTS) == pytest.approx(full, abs=3.0)


def test_pickscore_is_logit_scale_times_cos_with_a_separate_processor(tmp_path):
    model, processor = build_tiny_clip(seed=1)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(50.0))
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "processor")
    reward = get_reward("pickscore", path=str(tmp_path / "model"), processor_path=str(tmp_path / "processor"))
    images = _images()
    # The PickScore model card's computation.
    image_inputs = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
    text_inputs = processor(text=PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        out = model(**image_inputs, **text_inputs)
    expected = out.logits_per_image.diagonal()
    assert reward(images, PROMPTS) == pytest.approx(expected.tolist(), abs=1e-3)
    assert out.logits_per_image.abs().max() > 1.0  # the scale matters: these are not bare cosines
    with pytest.raises(FileNotFoundError, match="pickscore.*processor_path"):
        get_reward("pickscore", path=str(tmp_path / "model"), processor_path=str(tmp_path / "missing"))


def _original_aesthetic_head(input_size: int, seed: int, gain: float = 1.0) -> torch.nn.Sequential:
    """improved-aesthetic-predictor's MLP.layers, built here without promptloop's class; ``gain``
    scales every weight so that the five stacked linear layers do not squash the input's effect."""
    torch.manual_seed(seed)
    layers = torch.nn.Sequential(
        torch.nn.Linear(input_size, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), torch.nn.Linear(16, 1)).eval()
    with torch.no_grad():
        for layer in layers:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(gain)
    return layers


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_aesthetic_is_the_head_on_the_normalised_clip_image_embedding(clip_dir, tmp_path, suffix):
    from safetensors.torch import save_file
    from transformers import CLIPModel, CLIPProcessor

    layers = _original_aesthetic_head(16, seed=3, gain=4.0)
    state = {f"layers.{k}": v.contiguous() for k, v in layers.state_dict().items()}
    head_file = tmp_path / f"sac+logos+ava1-l14-linearMSE{suffix}"
    save_file(state, head_file) if suffix == ".safetensors" else torch.save(state, head_file)

    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    images = _images()
    with torch.no_grad():
        embeds = model(**processor(text=["x"] * 3, images=[im.convert("RGB") for im in images],
                                   return_tensors="pt", padding=True)).image_embeds  # L2-normalised
        expected = layers(embeds).squeeze(-1)
    reward = get_reward("aesthetic", clip_path=str(clip_dir), head_path=str(head_file))
    scores = reward(images, ["ignored"] * 3)
    assert scores == pytest.approx(expected.tolist(), abs=1e-4)
    assert max(scores) - min(scores) > 0.01
    # A folder holding the file works with head_filename.
    folder = get_reward("aesthetic", clip_path=str(clip_dir), head_path=str(tmp_path), head_filename=head_file.name)
    assert folder(images, PROMPTS) == pytest.approx(scores, abs=1e-5)


def test_aesthetic_errors_name_the_problem(clip_dir, tmp_path):
    head = _original_aesthetic_head(768, seed=0)
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, tmp_path / "head.pth")
    with pytest.raises(ValueError, match="768-d"):
        get_reward("aesthetic", clip_path=str(clip_dir), head_path=str(tmp_path / "head.pth"))
    with pytest.raises(FileNotFoundError, match="aesthetic.*head_path"):
        get_reward("aesthetic", clip_path=str(clip_dir), head_path=str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="aesthetic.*head_path.*no-such-org/no-such-repo"):  # hub offline
        get_reward("aesthetic", clip_path=str(clip_dir), head_path="no-such-org/no-such-repo")


# ---- ImageReward -------------------------------------------------------------------------------

def _tiny_imagereward_checkpoint(path, tokenizer_vocab: int):
    """An ``ImageReward.pt``-style state dict: a timm ViT (BLIP's ViT has timm's key names) as
    ``blip.visual_encoder``, BLIP's BERT as ``blip.text_encoder``, the MLP as ``mlp.layers``, plus the
    unused projections and BERT's ``position_ids`` buffer that the released file carries."""
    import timm
    from transformers import BlipTextConfig, BlipTextModel

    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0, qkv_bias=True,
        num_classes=0, global_pool="token",
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    with torch.no_grad():  # timm initialises cls/pos to ~0; make them matter. Small token norms make
        vit.cls_token.normal_(std=0.01)  # the LayerNorms' eps (1e-6 in BLIP's ViT) matter too.
        vit.pos_embed.normal_(std=0.005)
        vit.patch_embed.proj.weight.mul_(0.01)
        vit.patch_embed.proj.bias.zero_()
    bert = BlipTextModel(BlipTextConfig(
        vocab_size=tokenizer_vocab, hidden_size=32, encoder_hidden_size=64, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=40, is_decoder=True, bos_token_id=None),
        add_pooling_layer=False).eval()
    mlp = _original_aesthetic_head(32, seed=5, gain=4.0)
    state = {f"blip.visual_encoder.{k}": v for k, v in vit.state_dict().items()}
    state |= {f"blip.text_encoder.{k}": v for k, v in bert.state_dict().items()}
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(40)[None]
    state |= {f"mlp.layers.{k}": v for k, v in mlp.state_dict().items()}
    state |= {"blip.vision_proj.weight": torch.zeros(8, 64), "blip.text_proj.weight": torch.zeros(8, 32)}
    torch.save(state, path)
    return vit, bert, mlp


def test_imagereward_loads_the_released_key_names_and_scores_like_the_original(tmp_path):
    tokenizer = build_tiny_bert_tokenizer()
    tokenizer.save_pretrained(tmp_path / "bert")
    vit, bert, mlp = _tiny_imagereward_checkpoint(tmp_path / "ImageReward.pt", len(tokenizer) + 2)
    reward = get_reward("imagereward", path=str(tmp_path), tokenizer=str(tmp_path / "bert"),
                        vision_heads=2, text_heads=2, batch_size=2)
    images = _images()
    scores = reward(images, PROMPTS)

    # ImageReward.score, step by step, on the original modules.
    ref_tok = build_tiny_bert_tokenizer()
    ref_tok.add_special_tokens({"bos_token": "[DEC]"})
    ref_tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    preprocess = transforms.Compose([
        transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(32),
        transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    expected = []
    with torch.no_grad():
        for image, prompt in zip(images, PROMPTS):
            text = ref_tok(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
            image_embeds = vit.forward_features(preprocess(image.convert("RGB")).unsqueeze(0))
            out = bert(text.input_ids, attention_mask=text.attention_mask, encoder_hidden_states=image_embeds,
                       encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long))
            expected.append(((mlp(out.last_hidden_state[:, 0, :]) - IMAGEREWARD_MEAN) / IMAGEREWARD_STD).item())
    assert scores == pytest.approx(expected, abs=1e-4)
    assert max(expected) - min(expected) > 0.1
    # The image matters through cross-attention: the same prompt on two images scores differently.
    pair = reward(images[:2], [PROMPTS[0]] * 2)
    assert abs(pair[0] - pair[1]) > 0.01


def test_imagereward_rejects_unknown_checkpoint_keys(tmp_path):
    torch.save({"visual.weight": torch.zeros(2)}, tmp_path / "ImageReward.pt")
    with pytest.raises(ValueError, match="unexpected keys"):
        get_reward("imagereward", path=str(tmp_path / "ImageReward.pt"))


# ---- HPS v2 ------------------------------------------------------------------------------------

TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def test_hps_is_the_cosine_of_the_open_clip_features(tmp_path):
    import open_clip

    config = tmp_path / "promptloop-tiny-hps.json"
    config.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("promptloop-tiny-hps").eval()
    # HPS_v2.1_compressed.pt holds {"state_dict": ...}; a DDP-saved one has "module." prefixes.
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "HPS_v2.1_compressed.pt")
    reward = get_reward("hps", path=str(tmp_path), model_config=str(config), batch_size=2)
    images = _images()

    # hpsv2's img_score: model(image, text) gives normalised features; the score is the diagonal.
    preprocess = transforms.Compose([
        transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(32),
        lambda im: im.convert("RGB"), transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    tokenizer = open_clip.get_tokenizer("promptloop-tiny-hps")
    with torch.no_grad():
        out = model(torch.stack([preprocess(im) for im in images]), tokenizer(PROMPTS))
        image_features, text_features = out[0], out[1]
        expected = (image_features @ text_features.T).diagonal()
    assert reward(images, PROMPTS) == pytest.approx(expected.tolist(), abs=1e-4)
    assert len({round(float(e), 4) for e in expected}) == 3


def test_hps_version_and_missing_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="version"):
        get_reward("hps", version="v3")
    with pytest.raises(FileNotFoundError, match="HPS_v2_compressed.pt"):
        get_reward("hps", path=str(tmp_path), version="v2")


# ---- shared behaviour --------------------------------------------------------------------------

def test_model_rewards_combine_by_spec(clip_dir):
    combined = load_reward("clip:0.5,jpeg_compressibility:1.0", {"clip": {"path": str(clip_dir)}})
    terms = combined.terms(_images(), PROMPTS)
    assert combined(_images(), PROMPTS) == pytest.approx(
        [0.5 * c + j for c, j in zip(terms["clip"], terms["jpeg_compressibility"])])
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        combined.rewards["clip"](_images(), PROMPTS[:2])


def test_importing_the_registry_stays_light():
    code = ("import sys, promptloop.rewards; "
            "heavy = [m for m in ('torch', 'transformers', 'open_clip', 'torchvision') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_package_error_names_it():
    from promptloop.rewards.checkpoints import require

    with pytest.raises(ImportError, match="'no_such_package'.*promptloop\\[rewards\\]"):
        require("no_such_module_xyz", package="no_such_package", reward="hps")
