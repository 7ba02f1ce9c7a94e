"""Teacher-forced log-probs of completions after chat conversations: the one log-prob path.

:meth:`~promptloop.policies.transformers.TransformersPolicy.score` (GRPO's log-probs) and
supervised fine-tuning (:mod:`promptloop.training.sft`, the tiny policy's warm start in
:mod:`promptloop.testing.warmup`) build their inputs with :func:`completion_inputs` and take the
log-probs with :func:`completion_logprobs`, so a fine-tuned answer and a sampled one are scored
the same way. A batch is the model inputs plus ``spans``: per row, ``(start, length)`` of the
completion tokens.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from promptloop.policies.messages import Message, prepare_conversation

Spans = list[tuple[int, int]]


@dataclass
class ScoredCompletions:
    """:func:`completion_logprobs` output: ``(batch, max completion length)`` tensors,
    right-padded (0 on padding); ``mask`` is 1 on completion tokens."""

    logprobs: torch.Tensor
    entropies: torch.Tensor | None
    mask: torch.Tensor

    def mean_logprob(self) -> torch.Tensor:
        """Mean log-prob over all completion tokens of the batch (minus the SFT loss)."""
        return (self.logprobs * self.mask).sum() / self.mask.sum()


Prepare = Callable[[list[Message]], tuple[list[Message], list[Image.Image]]]


def encode_conversations(processor: Any, conversations: Sequence[list[Message]], *,
                         prepare: Prepare = prepare_conversation) -> Any:
    """Model inputs for ``conversations``: chat template with the generation prompt, images
    prepared by ``prepare``, left padding (as for generation), on the CPU."""
    prepared = [prepare(c) for c in conversations]
    texts = [processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c, _ in prepared]
    images = [image for _, conv_images in prepared for image in conv_images]
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    return processor(text=texts, images=images or None, padding=True, return_tensors="pt")


def completion_inputs(
    processor: Any,
    conversations: Sequence[list[Message]],
    completions: Sequence[Sequence[int]],
    *,
    prepare: Prepare = prepare_conversation,
    padding_side: str = "left",
) -> tuple[dict[str, torch.Tensor], Spans]:
    """Each conversation (:func:`encode_conversations`) followed by its completion's token ids.

    ``padding_side="left"``: the prompts stay left-padded as for generation and every completion
    starts in the same column. ``"right"``: each prompt is followed directly by its completion and
    padding goes at the end, so all rows begin with the shared system prompt
    (``completion_logprobs(share_prefix=True)`` runs it once). Completion tokens count as text in
    per-token type ids. Returns the inputs (CPU) and the spans.
    """
    if len(conversations) != len(completions):
        raise ValueError(f"{len(conversations)} conversations but {len(completions)} completions")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be left or right, not {padding_side!r}")
    encoded = encode_conversations(processor, conversations, prepare=prepare)
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    per_token = [k for k, v in encoded.items() if k not in ("input_ids", "attention_mask")
                 and isinstance(v, torch.Tensor) and not v.is_floating_point() and v.shape == ids.shape]
    width = ids.shape[1]
    lengths = mask.sum(dim=1).tolist()
    starts = [width] * len(lengths) if padding_side == "left" else lengths
    total = max((s + len(c) for s, c in zip(starts, completions)), default=width)
    pad = getattr(processor, "tokenizer", processor).pad_token_id
    out = {k: v for k, v in encoded.items() if k not in per_token and k not in ("input_ids", "attention_mask")}
    out["input_ids"] = torch.full((len(starts), total), 0 if pad is None else pad, dtype=ids.dtype)
    out["attention_mask"] = torch.zeros(len(starts), total, dtype=mask.dtype)
    for key in per_token:
        out[key] = torch.zeros(len(starts), total, dtype=encoded[key].dtype)
    for row, (start, length, tokens) in enumerate(zip(starts, lengths, completions)):
        prompt = slice(0, width) if padding_side == "left" else slice(width - length, width)
        for key in ("input_ids", "attention_mask", *per_token):
            out[key][row, :start] = encoded[key][row, prompt]
        out["input_ids"][row, start:start + len(tokens)] = torch.as_tensor(list(tokens), dtype=ids.dtype)
        out["attention_mask"][row, start:start + len(tokens)] = 1
    return out, [(start, len(tokens)) for start, tokens in zip(starts, completions)]


_warned = False


def completion_logprobs(
    model: Any,
    inputs: dict[str, torch.Tensor],
    spans: Spans,
    *,
    temperature: float = 1.0,
    entropies: bool = False,
    share_prefix: bool = False,
) -> ScoredCompletions:
    """Log-probs of the span tokens, each predicted from the position before it.

    One forward of ``model`` (with gradients: wrap in ``torch.no_grad()`` for old/reference
    log-probs); logits are divided by ``temperature`` (pass the sampling temperature to get the
    log-probs recorded at sampling time). Plain: the model's own forward (any wrapper, e.g. DDP),
    logits kept from the first scored position on. With ``share_prefix`` (right-padded inputs)
    the tokens common to all rows (the system prompt) run once with batch size 1 and their keys
    and values are shared (the same numbers at about half the cost), and ``lm_head`` runs on the
    scored positions only; this reaches into a Qwen2-VL-style model (``model.model``,
    ``lm_head``) and falls back to the plain forward (with a warning) where that fails.
    ``entropies``: per-token entropies of the tempered distribution, without gradients.
    """
    global _warned
    device = inputs["input_ids"].device
    length = max((n for _, n in spans), default=0)
    if length == 0:
        empty = torch.zeros(len(spans), 0, device=device)
        return ScoredCompletions(empty, empty.clone() if entropies else None, empty.clone())
    rows = torch.cat([torch.full((n,), r, dtype=torch.long) for r, (_, n) in enumerate(spans)]).to(device)
    cols = torch.cat([torch.arange(s, s + n) for s, n in spans]).to(device)  # the tokens scored
    logits = None
    if share_prefix:
        try:
            logits = _shared_prefix_logits(model, inputs, rows, cols)
        except (AttributeError, TypeError, ValueError, RuntimeError) as exc:  # another model or transformers
            if not _warned:
                warnings.warn(f"sharing the prompt prefix failed ({exc!r}); using plain forwards", stacklevel=2)
                _warned = True
    if logits is None:
        first = int(cols.min()) - 1  # logits only from the first predicting position on
        output = model(**inputs, use_cache=False, logits_to_keep=inputs["input_ids"].shape[1] - first)
        logits = output.logits[rows, cols - 1 - first]
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    token_logprobs = log_probs.gather(-1, inputs["input_ids"][rows, cols][:, None]).squeeze(-1)
    index = torch.cat([torch.arange(n) for _, n in spans]).to(device)
    padded = torch.zeros(len(spans), length, device=device, dtype=token_logprobs.dtype)
    mask = padded.index_put((rows, index), torch.ones_like(token_logprobs.detach()))
    entropy = None
    if entropies:
        with torch.no_grad():
            entropy = padded.index_put((rows, index), -(log_probs.exp() * log_probs).sum(-1))
    return ScoredCompletions(padded.index_put((rows, index), token_logprobs), entropy, mask)


def _shared_prefix_logits(model: Any, inputs: dict[str, torch.Tensor], rows: torch.Tensor,
                          cols: torch.Tensor) -> torch.Tensor:
    """Logits predicting tokens ``(rows, cols)``: the backbone's last hidden states (the tokens
    common to all rows run once) through ``lm_head`` at those positions only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: LoRA layers stay in
    hidden, offset = _shared_prefix_hidden(base, inputs, int(cols.min()) - 1)
    return base.lm_head(hidden[rows, cols - 1 - offset])


def _positions(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Qwen2-VL's 3-D rope positions ``(3, batch, length)`` for right-padded inputs: text tokens
    count up by one; an image's tokens take (0, row, column) offsets on its merged patch grid,
    and the text after it resumes at the image's start plus its larger side."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    image_token = model.config.image_token_id
    merge = model.config.vision_config.spatial_merge_size
    grids = iter(inputs["image_grid_thw"].tolist()) if inputs.get("image_grid_thw") is not None else iter(())
    positions = torch.zeros(3, *ids.shape, dtype=torch.long)
    for row in range(ids.shape[0]):
        length = int(mask[row].sum())
        is_image = (ids[row, :length] == image_token).tolist()
        pos, i = 0, 0
        while i < length:
            j = i
            while j < length and is_image[j] == is_image[i]:
                j += 1
            if not is_image[i]:  # a run of text tokens
                positions[:, row, i:j] = torch.arange(pos, pos + j - i)
                pos, i = pos + j - i, j
                continue
            t, h, w = next(grids)  # the next image, in order; it takes the first t*h*w tokens of the run
            h, w = h // merge, w // merge
            n = t * h * w
            positions[0, row, i:i + n] = pos + torch.arange(t).repeat_interleave(h * w)
            positions[1, row, i:i + n] = pos + torch.arange(h).repeat_interleave(w).repeat(t)
            positions[2, row, i:i + n] = pos + torch.arange(w).repeat(t * h)
            pos, i = pos + max(t, h, w), i + n
    return positions.to(ids.device)


def _shared_prefix_hidden(
    model: Any, inputs: dict[str, torch.Tensor], limit: int
) -> tuple[torch.Tensor, int]:
    """Last hidden states from the end of the tokens common to all rows (at most ``limit`` of
    them), which are run once with batch size 1; returns them and where they start. When no text
    prefix is shared (or it reaches an image), one plain forward of the backbone from 0."""
    from transformers import DynamicCache

    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    batch = ids.shape[0]
    same = (ids == ids[:1]).all(dim=0) & mask.bool().all(dim=0)
    prefix = int(same.long().cumprod(0).sum()) if batch > 1 else 0
    prefix = min(prefix, limit, int(mask.sum(dim=1).min()) - 1)
    if prefix < 1 or (ids[0, :prefix] == model.config.image_token_id).any():
        return model.model(**inputs, use_cache=False).last_hidden_state, 0
    positions = _positions(model, inputs)
    language_model = model.model.language_model
    embed = model.get_input_embeddings()
    head = language_model(
        inputs_embeds=embed(ids[:1, :prefix]),
        position_ids=positions[:, :1, :prefix],
        attention_mask=mask[:1, :prefix],
        use_cache=True,
    ).past_key_values
    cache = DynamicCache()
    for layer, cached in enumerate(head.layers):
        cache.update(
            cached.keys.expand(batch, *cached.keys.shape[1:]),
            cached.values.expand(batch, *cached.values.shape[1:]),
            layer,
        )
    extra = {k: inputs[k] for k in ("pixel_values", "image_grid_thw") if inputs.get(k) is not None}
    tail = model.model(
        input_ids=ids[:, prefix:],
        attention_mask=mask,
        position_ids=positions[:, :, prefix:],
        past_key_values=cache,
        use_cache=True,
        **extra,
    ).last_hidden_state
    return tail, prefix
