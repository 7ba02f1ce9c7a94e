"""In-process policy on 🤗 transformers: any chat vision-language model (Qwen2-VL, Qwen2.5-VL ...).

The default backend: it runs on CPU, it is what trainers fine-tune (wrap the model with peft),
and it returns the generated token ids and their log-probs when asked.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from promptloop.policies.adapters import check_adapter_dir
from promptloop.policies.base import Generation, GenerativePolicy, SamplingConfig
from promptloop.policies.messages import Message
from promptloop.policies.scoring import (
    ScoredCompletions,
    completion_inputs,
    completion_logprobs,
    encode_conversations,
)


class TransformersPolicy(GenerativePolicy):
    """A chat VLM run with ``model.generate``.

    Args:
        model: an image-text-to-text model (e.g. ``Qwen2VLForConditionalGeneration``), possibly
            a ``peft.PeftModel``.
        processor: its processor (chat template + image processor + tokenizer).
        sampling: decoding settings; greedy by default.
        batch_size: most conversations per ``generate`` call (``None``: all at once).
        **kwargs: ``GenerativePolicy`` options (``max_prompt_chars``, ``system_prompt``,
            ``min_pixels``, ``max_pixels``, ``max_input_tokens``).

    Named LoRA adapters (:meth:`add_adapter`) are chosen per call: ``generate(...,
    adapter="name")``, ``adapter=None`` for the base model; by default the model runs as it is.
    Calls are serialised (one ``model.generate`` at a time), so one policy may serve several threads.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        sampling: SamplingConfig | None = None,
        *,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(sampling, **kwargs)
        self.model = model
        self.processor = processor
        self.batch_size = batch_size
        tokenizer = getattr(processor, "tokenizer", processor)
        tokenizer.padding_side = "left"
        self.tokenizer = tokenizer
        self._adapter_paths: dict[str, str] = {}
        self._lock = threading.RLock()

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
        if adapter is not None:
            policy._adapter_paths["default"] = str(adapter)
        return policy

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int | None:
        config = getattr(self.model, "config", None)
        config = getattr(config, "text_config", None) or config
        return getattr(config, "max_position_embeddings", None)

    # -- adapters ---------------------------------------------------------------------------------
    @property
    def adapters(self) -> dict[str, str]:
        """LoRA adapters loaded by name, ``{name: path}``."""
        return dict(self._adapter_paths)

    def add_adapter(self, name: str, path: str | os.PathLike) -> None:
        """Load (or reload) a peft LoRA adapter under ``name``."""
        from peft import PeftModel

        checked = check_adapter_dir(path)
        with self._lock:
            if isinstance(self.model, PeftModel):
                if name in self.model.peft_config:
                    self.model.delete_adapter(name)
                self.model.load_adapter(str(checked), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(checked), adapter_name=name)
            self.model.eval()
            self._adapter_paths[name] = str(checked)

    def _adapter_context(self, adapter: str | None):
        """Run under ``adapter`` (None: the base model; ``...``: the model as it is)."""
        if adapter is ...:
            return nullcontext()
        peft_config = getattr(self.model, "peft_config", None)
        if adapter is None:
            return self.model.disable_adapter() if peft_config else nullcontext()
        if not peft_config or adapter not in peft_config:
            raise KeyError(f"unknown adapter {adapter!r}; loaded: {', '.join(self._adapter_paths) or 'none'}")
        self.model.set_adapter(adapter)
        return nullcontext()

    # -- generation -------------------------------------------------------------------------------
    def generate(
        self, conversations: Sequence[list[Message]], *, sampling: SamplingConfig | None = None, adapter: Any = ...
    ) -> list[Generation]:
        """One generation per conversation, decoded with ``sampling`` (default :attr:`sampling`)
        under ``adapter`` (a name from :meth:`add_adapter`; None: the base model; by default the
        model as it is)."""
        size = self.batch_size or len(conversations) or 1
        out: list[Generation] = []
        with self._lock, self._adapter_context(adapter):
            for start in range(0, len(conversations), size):
                out.extend(self._generate_batch(list(conversations[start:start + size]), sampling or self.sampling))
        return out

    def encode_conversations(self, conversations: Sequence[list[Message]]) -> Any:
        """Model inputs for ``conversations`` (chat template with the generation prompt, images
        prepared by :meth:`prepare`, left padding), on the CPU. Generation and :meth:`score` both
        use this, so the tokens a completion was sampled after are the tokens it is scored after."""
        return encode_conversations(self.processor, conversations, prepare=self.prepare)

    @property
    def logprob_temperature(self) -> float:
        """The temperature log-probs are taken at by default: that of :attr:`sampling`."""
        return self.sampling.logprob_temperature

    def score(
        self,
        conversations: Sequence[list[Message]],
        completions: Sequence[Sequence[int]],
        *,
        model: Any = None,
        temperature: float | None = None,
        entropies: bool = True,
    ) -> ScoredCompletions:
        """Teacher-forced log-probs of ``completions`` (token ids) after ``conversations``.

        Runs with gradients (wrap in ``torch.no_grad()`` for old/reference log-probs). Logits are
        divided by ``temperature`` (default: :attr:`logprob_temperature`, as at sampling time),
        so the log-probs of sampled tokens equal those :meth:`generate` recorded. ``model``
        replaces :attr:`model` for the forward pass (e.g. a DDP-wrapped copy of it).
        """
        inputs, spans = completion_inputs(self.processor, conversations, completions, prepare=self.prepare)
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        return completion_logprobs(model or self.model, inputs, spans, entropies=entropies,
                                   temperature=temperature or self.logprob_temperature)

    @torch.inference_mode()
    def _generate_batch(self, conversations: list[list[Message]], s: SamplingConfig) -> list[Generation]:
        inputs = self.encode_conversations(conversations)
        self.check_input_tokens(inputs["attention_mask"].sum(dim=1).tolist(), s)
        inputs = inputs.to(self.device)
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": s.max_new_tokens,
            "return_dict_in_generate": True,
            "output_logits": s.return_logprobs,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
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
            logits = torch.stack(output.logits, dim=1).float() / s.logprob_temperature  # (B, T, V), this call's
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
