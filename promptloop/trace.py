"""The trace of one sampling run: how each sample's prompt evolved, with previews.

One :class:`TraceEntry` per sample per refinement. A trace saves as JSON (previews as PNG files
beside it), loads back, and renders as a self-contained HTML page or a PNG strip of preview
thumbnails with the prompt under each.

Steps are 0-based everywhere, as in schedules: the text, the HTML page and the strip label a
refinement after step ``k`` of an ``N``-step run ``step k of 0-(N-1)`` (:func:`step_label`).
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

TRACE_VERSION = 1


def step_label(step: int, num_steps: int) -> str:
    """How a trace names denoising step ``step`` (0-based, as in schedules): ``"step 2 of 0-5"``."""
    return f"step {step} of 0-{max(num_steps - 1, 0)}"


def _reason(entry: TraceEntry) -> str:
    """Why a refinement was not used: ``"timeout: TimeoutError: ..."`` (empty if it was)."""
    if entry.fallback is None:
        return ""
    return entry.fallback + (f": {entry.error}" if entry.error else "")


#: TraceEntry fields kept in memory only (previews are saved as files beside the JSON).
_MEMORY_ONLY = ("preview", "observation", "messages")


@dataclass
class TraceEntry:
    """One refinement of one sample.

    ``step`` is the step whose preview the policy saw (where the refinement was requested);
    ``applied_step`` is the step after which the new prompt took effect (equal to ``step`` in
    sync mode, later in async mode, ``None`` when it never took effect).
    """

    sample_index: int
    step: int
    num_steps: int
    prompt_before: str
    prompt_after: str
    applied_step: int | None = None
    timestep: float | None = None
    fallback: str | None = None
    error: str | None = None
    raw_text: str | None = None
    latency_s: float = 0.0
    mode: str = "sync"
    preview: Image.Image | None = field(default=None, repr=False, compare=False)
    token_ids: list[int] | None = field(default=None, repr=False)
    logprobs: list[float] | None = field(default=None, repr=False)
    #: The system prompt the policy was shown (from :attr:`messages`; ``None`` when the policy
    #: reported no conversation, e.g. a function policy or a remote sidecar).
    system_prompt: str | None = field(default=None, repr=False)
    #: ``ahead`` mode: the steps the plan was written for and this entry's line in it.
    plan_steps: list[int] | None = None
    plan_index: int | None = None
    #: An unchanged copy of what the policy saw (prompts, history, step, preview), kept in
    #: memory even when previews are not kept (a trainer's evaluation strip shows its preview).
    #: Not saved to JSON.
    observation: Any = field(default=None, repr=False, compare=False)
    #: The exact chat messages the policy was given for this generation, as the policy reported
    #: them with its refinement (``Refinement.extra["messages"]``; for an ``ahead`` plan, the
    #: planning conversation, on every line). Trainers score the tokens against these. ``None``:
    #: the policy reported none. Kept in memory only (they hold the preview), not saved to JSON.
    messages: list[dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    @property
    def generation(self) -> bool:
        """Whether this entry is a policy generation of its own: every refinement is, except the
        lines after the first of an ``ahead`` plan (one generation wrote the whole plan)."""
        return self.plan_index in (None, 0)

    @property
    def changed(self) -> bool:
        return self.fallback is None and self.prompt_after != self.prompt_before

    def to_dict(self, preview_path: str | None = None) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _MEMORY_ONLY}
        data["preview"] = preview_path
        return data


@dataclass
class Trace:
    """All refinements of one pipeline call."""

    original_prompts: list[str] = field(default_factory=list)
    entries: list[TraceEntry] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    # -- queries ----------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return len(self.original_prompts)

    def for_sample(self, sample_index: int) -> list[TraceEntry]:
        return sorted((e for e in self.entries if e.sample_index == sample_index), key=lambda e: e.step)

    def final_prompts(self) -> list[str]:
        """The prompt each sample ended with (what conditioned its last steps)."""
        finals = list(self.original_prompts)
        for entry in sorted(self.entries, key=lambda e: (e.applied_step is None, e.applied_step or 0)):
            if entry.applied_step is not None:
                finals[entry.sample_index] = entry.prompt_after
        return finals

    def generations(self) -> list[TraceEntry]:
        """One entry per policy generation, by sample then step: an ``ahead`` plan counts once (its
        first line), as it is one generation (its token ids and log-probs are on every line)."""
        return sorted((e for e in self.entries if e.generation), key=lambda e: (e.sample_index, e.step))

    @property
    def fallbacks(self) -> list[TraceEntry]:
        return [e for e in self.entries if e.fallback is not None]

    def __len__(self) -> int:
        return len(self.entries)

    # -- JSON -------------------------------------------------------------------------------
    def to_dict(self, preview_paths: dict[int, str] | None = None) -> dict[str, Any]:
        preview_paths = preview_paths or {}
        return {
            "version": TRACE_VERSION,
            "original_prompts": self.original_prompts,
            "meta": self.meta,
            "entries": [e.to_dict(preview_paths.get(i)) for i, e in enumerate(self.entries)],
        }

    def save(self, directory: str | Path, *, html_page: bool = True, strip: bool = True) -> Path:
        """Write ``trace.json`` (+ ``previews/*.png``, ``trace.html``, ``trace.png``); return the JSON path."""
        directory = Path(directory)
        (directory / "previews").mkdir(parents=True, exist_ok=True)
        paths: dict[int, str] = {}
        for i, entry in enumerate(self.entries):
            if entry.preview is not None:
                rel = f"previews/sample{entry.sample_index:03d}_step{entry.step:04d}_{i:04d}.png"
                entry.preview.save(directory / rel)
                paths[i] = rel
        json_path = directory / "trace.json"
        json_path.write_text(json.dumps(self.to_dict(paths), indent=2, default=_json_default))
        if html_page:
            (directory / "trace.html").write_text(self.to_html())
        if strip and self.num_samples:
            self.render_strip().save(directory / "trace.png")
        return json_path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Load a trace saved by :meth:`save` (a ``trace.json`` path or its directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / "trace.json"
        data = json.loads(path.read_text())
        known = {f.name for f in fields(TraceEntry)}
        entries = []
        for raw in data.get("entries", []):
            preview_rel = raw.pop("preview", None)
            entry = TraceEntry(**{k: v for k, v in raw.items() if k in known})
            if preview_rel and (path.parent / preview_rel).exists():
                with Image.open(path.parent / preview_rel) as img:
                    entry.preview = img.convert("RGB")
            entries.append(entry)
        return cls(list(data.get("original_prompts", [])), entries, dict(data.get("meta", {})))

    # -- rendering --------------------------------------------------------------------------
    def to_text(self) -> str:
        """A plain-text account, one block per sample."""
        lines = []
        for s, original in enumerate(self.original_prompts):
            lines.append(f"sample {s}: {original}")
            for e in self.for_sample(s):
                where = step_label(e.step, e.num_steps)
                if e.applied_step is not None and e.applied_step != e.step:
                    where += f" (applied after step {e.applied_step})"
                if e.fallback:
                    lines.append(f"  {where}: kept prompt ({_reason(e)})")
                else:
                    lines.append(f"  {where}: {e.prompt_after}  [{e.latency_s * 1000:.0f} ms]")
            lines.append(f"  final: {self.final_prompts()[s]}")
        return "\n".join(lines)

    def to_html(self, *, title: str = "PromptLoop trace", images: list[Image.Image] | None = None) -> str:
        """A self-contained HTML page: per sample, a row of previews with the prompt under each."""
        rows = []
        for s, original in enumerate(self.original_prompts):
            cells = [_html_cell(None, "original", original, None)]
            for e in self.for_sample(s):
                label = step_label(e.step, e.num_steps)
                if e.applied_step is not None and e.applied_step != e.step:
                    label += f" → applied after {e.applied_step}"
                note = f"kept: {_reason(e)}" if e.fallback else f"{e.latency_s * 1000:.0f} ms"
                cells.append(_html_cell(e.preview, label, e.prompt_after, note, changed=e.changed))
            if images and s < len(images):
                cells.append(_html_cell(images[s], "final image", self.final_prompts()[s], None))
            rows.append(f'<section><h2>Sample {s}</h2><div class="row">{"".join(cells)}</div></section>')
        meta = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in self.meta.items())
        return _HTML.format(title=html.escape(title), meta=meta, rows="".join(rows))

    def render_strip(
        self, *, thumb: int = 128, images: list[Image.Image] | None = None, max_chars: int | None = None,
        font_size: int | None = None,
    ) -> Image.Image:
        """A PNG-ready strip: one row per sample, one column per refinement (+ final image).

        Under each preview: its :func:`step_label`, why the prompt was kept (in red) when the
        policy's answer was not used, and the prompt, word-wrapped to the column (never cut,
        unless ``max_chars`` is given). The run's ``meta["warnings"]`` (e.g. a schedule outside
        the run) are written in red under the rows. Text is set in :func:`strip_font` at
        ``font_size`` pixels (default: a size that stays readable next to ``thumb``).
        """
        size = font_size or max(13, round(thumb / 8))
        font = strip_font(size)
        line_h = round(size * 1.3)
        pad = max(6, size // 2)
        text_w = max(thumb, 16 * size)  # about 30 characters a line, however small the thumbnails
        cell_w = text_w + 2 * pad
        label_w = 12 * size

        def cut(text: str) -> str:
            return text if max_chars is None or len(text) <= max_chars else text[:max_chars] + "..."

        rows: list[list[tuple[Image.Image | None, list[str], list[str], list[str]]]] = []
        for s in range(self.num_samples):
            cells = []
            for e in self.for_sample(s):
                label = [step_label(e.step, e.num_steps)]
                if e.applied_step is not None and e.applied_step != e.step:
                    label.append(f"applied after step {e.applied_step}")
                reason = wrap_text("kept: " + _reason(e), font, text_w) if e.fallback else []
                cells.append((e.preview, label, reason, wrap_text(cut(e.prompt_after), font, text_w)))
            if images and s < len(images):
                cells.append((images[s], ["final"], [], wrap_text(cut(self.final_prompts()[s]), font, text_w)))
            rows.append(cells)
        originals = [wrap_text(f"#{s}: " + cut(self.original_prompts[s]), font, label_w - 2 * pad)
                     for s in range(self.num_samples)]
        columns = max([len(r) for r in rows] + [1])
        width = label_w + columns * cell_w
        row_h = []
        for s, cells in enumerate(rows):
            lines = max([len(label) + len(reason) + len(prompt) for _, label, reason, prompt in cells] + [2])
            row_h.append(max(thumb + 2 * pad + line_h * lines, line_h * len(originals[s]) + 2 * pad))
        notes = [line for w in self.meta.get("warnings", []) for line in wrap_text("warning: " + str(w), font, width - 2 * pad)]
        height = max(1, sum(row_h)) + (line_h * len(notes) + 2 * pad if notes else 0)
        canvas = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(canvas)
        y = 0
        for s, cells in enumerate(rows):
            for i, line in enumerate(originals[s]):
                draw.text((pad, y + pad + i * line_h), line, fill="black", font=font)
            for c, (img, label, reason, prompt) in enumerate(cells):
                x = label_w + c * cell_w + pad
                if img is not None:
                    canvas.paste(_thumbnail(img, thumb), (x, y + pad))
                else:
                    draw.rectangle((x, y + pad, x + thumb, y + pad + thumb), outline="gray")
                ty = y + thumb + pad + pad // 2
                for text, colour in [(label, "dimgray"), (reason, "firebrick"), (prompt, "black")]:
                    for line in text:
                        draw.text((x, ty), line, fill=colour, font=font)
                        ty += line_h
            y += row_h[s]
        y += pad
        for line in notes:
            draw.text((pad, y), line, fill="firebrick", font=font)
            y += line_h
        return canvas


def strip_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The strip's font: the TrueType sans-serif Pillow ships (Aileron, Pillow >= 10.1 with
    FreeType, as in Pillow's wheels) at ``size`` pixels; Pillow's small bitmap font otherwise."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def wrap_text(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels in ``font``: broken between words, and
    inside a word only when the word alone is wider. Nothing is dropped."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while font.getlength(word) > width and len(word) > 1:
                cut = next(n for n in range(len(word), 0, -1) if font.getlength(word[:n]) <= width or n == 1)
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def _thumbnail(img: Image.Image, size: int) -> Image.Image:
    out = img.convert("RGB")
    scale = size / max(out.size)
    new_size = (max(1, round(out.width * scale)), max(1, round(out.height * scale)))
    out = out.resize(new_size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    if out.size != (size, size):
        padded = Image.new("RGB", (size, size), "white")
        padded.paste(out, ((size - out.width) // 2, (size - out.height) // 2))
        out = padded
    return out


def thumbnail_data_url(img: Image.Image, size: int = 192) -> str:
    """A ``size``-pixel square PNG thumbnail of ``img`` as a ``data:`` URL (for HTML pages)."""
    from promptloop.wire import image_data_url

    return image_data_url(_thumbnail(img, size))


def _html_cell(img, label: str, prompt: str, note: str | None, *, changed: bool = True) -> str:
    pic = f'<img src="{thumbnail_data_url(img)}" alt="{html.escape(label)}">' if img is not None else '<div class="noimg"></div>'
    cls = "cell" if changed else "cell kept"
    note_html = f'<div class="note">{html.escape(note)}</div>' if note else ""
    return (
        f'<div class="{cls}">{pic}<div class="label">{html.escape(label)}</div>'
        f'<div class="prompt">{html.escape(prompt)}</div>{note_html}</div>'
    )


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    return str(obj)


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
.row {{ display: flex; gap: .75rem; overflow-x: auto; align-items: flex-start; }}
.cell {{ width: 200px; flex: none; border: 1px solid #ddd; border-radius: 6px; padding: 4px; }}
.cell.kept {{ background: #fff6e5; }}
.cell img, .noimg {{ width: 192px; height: 192px; display: block; margin: auto; image-rendering: pixelated; }}
.noimg {{ background: repeating-linear-gradient(45deg, #eee, #eee 8px, #f8f8f8 8px, #f8f8f8 16px); }}
.label {{ font-weight: 600; font-size: .85rem; margin-top: 4px; }}
.prompt {{ font-size: .85rem; word-wrap: break-word; }}
.note {{ font-size: .75rem; color: #777; }}
</style></head>
<body><h1>{title}</h1><ul>{meta}</ul>{rows}</body></html>
"""
