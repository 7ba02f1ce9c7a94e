"""In-process policy on 🤗 transformers: any chat vision-language model (Qwen2-VL, Qwen2.5-VL ...).

The default backend: it runs on CPU, it is what trainers fine-tune (wrap the model with peft),
and it returns the generated token ids and their log-probs when asked.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from promptloop.policies.base import GenerativePolicy, Generation, SamplingConfig
from promptloop.policies.messages import Message


class TransformersPolicy(GenerativePolicy):
    """A chat VLM run with ``model.generate``.

    Args:
        model: an image-text-to-text model (e.g. ``Qwen2VLForConditionalGeneration``), possibly
            a ``peft.PeftModel``.
        processor: its processor (chat template + image processor + tokenizer).
        sampling: decoding settings; greedy by default.
        batch_size: most conversations per ``generate`` call (``None``: all at once).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        sampling: SamplingConfig | None = None,
        *,
        batch_size: int | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = 256 * 28 * 28,
        **kwargs: Any,
    ) -> None:
        super().__init__(sampling, **kwargs)
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        tokenizer = getattr(processor, "tokenizer", processor)
        tokenizer.padding_side = "left"
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        *,
        adapter: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        sampling: SamplingConfig | None = None,
        **kwargs: Any,
    ) -> TransformersPolicy:
        """Load a policy from a local directory or a hub id, optionally with a peft LoRA adapter."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from promptloop.devices import default_device, resolve_dtype

        device = device or default_device()
        torch_dtype = resolve_dtype(dtype if dtype is not None else ("bfloat16" if str(device).startswith("cuda") else None), device)
        model = AutoModelForImageTextToText.from_pretrained(str(path_or_id), dtype=torch_dtype)
        processor = AutoProcessor.from_pretrained(str(path_or_id))
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        model.to(device).eval()
        policy = cls(model, processor, sampling, **kwargs)
        policy.name_or_path = str(path_or_id)
        policy.adapter = str(adapter) if adapter else None
        return policy

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, conversations: Sequence[list[Message]]) -> list[Generation]:
        size = self.batch_size or len(conversations) or 1
        out: list[Generation] = []
        for start in range(0, len(conversations), size):
            out.extend(self._generate_batch(list(conversations[start:start + size])))
        return out

    def _prepare_images(self, conversations: list[list[Message]]):
        from qwen_vl_utils import process_vision_info

        prepared = []
        for conv in conversations:
            new_conv = []
            for message in conv:
                content = message["content"]
                if isinstance(content, list):
                    parts = []
                    for part in content:
                        if part.get("type") == "image":
                            part = dict(part)
                            if self.max_pixels:
                                part.setdefault("max_pixels", self.max_pixels)
                            if self.min_pixels:
                                part.setdefault("min_pixels", self.min_pixels)
                        parts.append(part)
                    content = parts
                new_conv.append({**message, "content": content})
            prepared.append(new_conv)
        images, _videos = process_vision_info(prepared)
        return images or None

    @torch.inference_mode()
    def _generate_batch(self, conversations: list[list[Message]]) -> list[Generation]:
        texts = [self.processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        images = self._prepare_images(conversations)
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt").to(self.device)
        s = self.sampling
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=s.max_new_tokens,
            return_dict_in_generate=True,
            output_logits=s.return_logprobs,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if s.greedy:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            gen_kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=None)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # never disturb the caller's RNG
            if s.seed is not None:
                torch.manual_seed(s.seed)
            output = self.model.generate(**inputs, **gen_kwargs)
        prompt_len = inputs["input_ids"].shape[1]
        sequences = output.sequences[:, prompt_len:]
        eos_ids = self._eos_ids()
        logprobs = None
        if s.return_logprobs and output.logits:
            logits = torch.stack(output.logits, dim=1).float()  # (B, T, V)
            if not s.greedy:
                logits = logits / s.temperature
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, sequences[..., None]).squeeze(-1)
        results = []
        for row, seq in enumerate(sequences.tolist()):
            end, finished = len(seq), False
            for j, tok in enumerate(seq):
                if tok in eos_ids:
                    end, finished = j + 1, True
                    break
            ids = seq[:end]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            lp = logprobs[row, :end].tolist() if logprobs is not None else None
            results.append(Generation(text=text, token_ids=ids, logprobs=lp, finished=finished))
        return results

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        config = getattr(self.model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(e) for e in eos)
        return ids
