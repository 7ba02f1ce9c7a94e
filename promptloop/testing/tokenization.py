"""Tokenizers built in code (no download) for the tiny model factories.

* :func:`build_clip_tokenizer` - a byte-level BPE :class:`~transformers.CLIPTokenizer` (CLIP's own
  normaliser and pre-tokeniser, ``</w>`` word suffix), merges trained on :data:`TINY_PROMPTS`; every
  byte is in the base vocabulary, so any text tokenizes without ``<unk>``.
* :func:`build_t5_tokenizer` - a Unigram :class:`~transformers.T5TokenizerFast` whose pieces are
  whole words (``▁word``) plus single characters as fallback.
* :func:`build_qwen_tokenizer` - a byte-level BPE :class:`~transformers.Qwen2Tokenizer` with the Qwen
  special tokens.

BPE merges are learned by a small deterministic learner (the ``tokenizers`` trainer breaks ties
differently from run to run) and cached, so building a tokenizer twice gives the same ids.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

from tokenizers import Tokenizer, pre_tokenizers
from transformers import AddedToken, CLIPTokenizer, Qwen2Tokenizer, T5TokenizerFast

from .prompts import EXTRA_WORDS, TINY_PROMPTS

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"


def _corpus(texts: Iterable[str] | None) -> list[str]:
    base = list(TINY_PROMPTS) + [" ".join(EXTRA_WORDS)]
    return base + list(texts or [])


def _learn_bpe(words: Counter[tuple[str, ...]], num_merges: int) -> list[tuple[str, str]]:
    """Deterministic BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair).

    (The ``tokenizers`` trainer breaks ties differently from run to run, which would make the
    "same seed, same model" promise false.)
    """
    vocab = {tuple(w): n for w, n in words.items()}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, n in vocab.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        new_vocab: dict[tuple[str, ...], int] = {}
        for word, n in vocab.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            key = tuple(out)
            new_vocab[key] = new_vocab.get(key, 0) + n
        vocab = new_vocab
    return merges


def _pretokenized_words(tok: Tokenizer, corpus: Iterable[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in corpus:
        normalized = tok.normalizer.normalize_str(text) if tok.normalizer is not None else text
        for piece, _ in tok.pre_tokenizer.pre_tokenize_str(normalized):
            counts[piece] += 1
    return counts


@lru_cache(maxsize=8)
def _clip_vocab_and_merges(
    extra_texts: tuple[str, ...], num_merges: int
) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    suffix = "</w>"
    backend = CLIPTokenizer().backend_tokenizer  # CLIP's own normaliser and pre-tokeniser
    words = _pretokenized_words(backend, _corpus(extra_texts))
    symbols: Counter[tuple[str, ...]] = Counter()
    for word, n in words.items():
        symbols[tuple(word[:-1]) + (word[-1] + suffix,)] += n
    merges = _learn_bpe(symbols, num_merges)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    # Base symbols first (every byte, with and without the word suffix), then the learned merges.
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    for ch in alphabet:
        vocab.setdefault(ch + suffix, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[CLIP_BOS] = len(vocab)
    vocab[CLIP_EOS] = len(vocab)
    return tuple(vocab.items()), tuple(merges)


def build_clip_tokenizer(
    texts: Iterable[str] | None = None, *, num_merges: int = 600, model_max_length: int = 77
) -> CLIPTokenizer:
    """Byte-level BPE CLIP tokenizer whose merges are learned on :data:`TINY_PROMPTS` (+ ``texts``).

    Deterministic. Every byte is a base symbol, so any text tokenizes without ``<unk>``. Like the
    real CLIP vocabulary, ``<|startoftext|>`` and ``<|endoftext|>`` are the two last ids (so
    ``argmax(input_ids)`` finds the EOS, as older CLIP code expects); padding uses ``<|endoftext|>``
    up to ``model_max_length`` (77).
    """
    vocab, merges = _clip_vocab_and_merges(tuple(texts or ()), num_merges)
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)


def build_t5_tokenizer(
    texts: Iterable[str] | None = None, *, model_max_length: int = 512
) -> T5TokenizerFast:
    """Unigram T5 tokenizer: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, whole words, then characters.

    Words seen in :data:`TINY_PROMPTS`/``texts`` are single pieces; any other ASCII text falls back to
    characters (non-ASCII characters become ``<unk>``). Appends ``</s>`` like the real T5.
    """
    counts: Counter[str] = Counter()
    for text in _corpus(texts):
        for word in text.replace(",", " , ").replace(".", " . ").split():
            counts[word] += 1
    total = sum(counts.values())
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    seen = {p for p, _ in pieces}
    for word, n in counts.most_common():
        piece = "▁" + word
        if piece not in seen:
            pieces.append((piece, math.log(n / total)))
            seen.add(piece)
    chars = [chr(c) for c in range(33, 127)]
    for ch in chars:
        for piece in (ch, "▁" + ch):
            if piece not in seen:
                pieces.append((piece, -12.0))
                seen.add(piece)
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


@lru_cache(maxsize=8)
def _qwen_vocab_and_merges(
    extra_texts: tuple[str, ...], num_merges: int
) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    backend = Qwen2Tokenizer().backend_tokenizer  # Qwen2's own normaliser and pre-tokeniser
    corpus = _corpus(extra_texts)
    # Every word also with a leading space and on its own line, so both forms become single tokens.
    words = sorted({w for t in corpus for w in t.replace(",", " ").split()})
    corpus += [" ".join(words), "\n".join(words), "system\nuser\nassistant\n"]
    pieces = _pretokenized_words(backend, corpus)
    merges = _learn_bpe(Counter({tuple(p): n for p, n in pieces.items()}), num_merges)
    vocab: dict[str, int] = {}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in QWEN_SPECIAL_TOKENS:
        vocab[special] = len(vocab)
    return tuple(vocab.items()), tuple(merges)


def build_qwen_tokenizer(
    texts: Iterable[str] | None = None, *, num_merges: int = 1000, chat_template: str | None = None
) -> Qwen2Tokenizer:
    """Byte-level BPE :class:`~transformers.Qwen2Tokenizer` with Qwen2's special tokens (the last ids).

    Merges are learned (deterministically) on :data:`TINY_PROMPTS` and :data:`EXTRA_WORDS` (+
    ``texts``), so most English words are single tokens; every byte is a base symbol, so any text
    round-trips. ``eos_token`` is ``<|im_end|>``, ``pad_token`` ``<|endoftext|>``, padding side left.
    """
    vocab, merges = _qwen_vocab_and_merges(tuple(texts or ()), num_merges)
    tok = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=32768,
        errors="replace",
        **({"chat_template": chat_template} if chat_template is not None else {}),
    )
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    return tok
