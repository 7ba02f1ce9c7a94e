"""The sidecar's wire format, shared by the server (``promptloop.server``) and its clients
(:class:`~promptloop.policies.http.HTTPPolicy`, :class:`~promptloop.policies.openai.OpenAIChatPolicy`);
no web framework needed.

* Images travel as base64 PNG or JPEG (a ``data:image/...;base64,`` prefix is accepted; a
  phone's multi-picture JPEG, MPO, is read as its first picture).
* Latents travel as base64 safetensors holding one tensor (named ``latents`` by convention),
  shaped ``(B, C, h, w)`` or, for FLUX, packed ``(B, h*w/4, C*4)``.
* Prompt embeddings come back as base64 safetensors with ``prompt_embeds`` and, for SDXL and
  SD3, ``pooled_prompt_embeds``; one row per refined prompt, in request order.

Every decoder raises :class:`PayloadError` with a message fit for a 4xx answer; nothing here
reads files or fetches URLs named by a client.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from collections.abc import Mapping
from contextlib import contextmanager

from PIL import Image

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(?:;[\w=.+-]+)*;base64,", re.IGNORECASE)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
_JPEG_VARIANTS = ("MPO",)  # multi-picture JPEG: decoded as its first picture


class PayloadError(ValueError):
    """A client payload that cannot be used; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, *, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field

    @property
    def message(self) -> str:
        return f"{self.field}: {self.args[0]}" if self.field else str(self.args[0])


def b64decode(data: str, *, field: str, max_bytes: int | None = None) -> bytes:
    """Strict base64 (standard alphabet, optional data-URL prefix, whitespace ignored)."""
    if not isinstance(data, str) or not data:
        raise PayloadError("empty base64 payload", field=field)
    data = _DATA_URL.sub("", data.strip(), count=1)
    data = "".join(data.split())
    if max_bytes is not None and len(data) * 3 // 4 > max_bytes:
        raise PayloadError(f"payload is larger than {max_bytes} bytes", status=413, field=field)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadError(f"malformed base64 ({exc})", field=field) from None


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def encode_image(image: Image.Image, *, format: str = "PNG") -> str:
    """A PIL image as base64 PNG (lossless, the default) or JPEG."""
    buffer = io.BytesIO()
    image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
    image.save(buffer, format=format)
    return b64encode(buffer.getvalue())


def image_data_url(image: Image.Image, *, format: str = "PNG") -> str:
    return f"data:image/{format.lower()};base64,{encode_image(image, format=format)}"


@contextmanager
def _image_errors(field: str):
    """PIL's errors (and decompression-bomb warnings) as :class:`PayloadError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except PayloadError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise PayloadError(f"image too large: {exc}", status=413, field=field) from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise PayloadError(f"not a decodable PNG or JPEG image ({type(exc).__name__}: {exc})", field=field) from None


def open_image(
    data: str, *, field: str = "image", max_bytes: int | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Base64 PNG/JPEG/WebP -> a PIL image whose header is read and checked (format, size) but
    whose pixels are not decoded yet (:func:`load_image` does that). A multi-picture JPEG (MPO,
    what phone cameras write) is a JPEG: its first picture is the image."""
    raw = b64decode(data, field=field, max_bytes=max_bytes)
    with _image_errors(field):
        image = Image.open(io.BytesIO(raw))
        if image.format not in IMAGE_FORMATS and image.format not in _JPEG_VARIANTS:
            raise PayloadError(f"unsupported image format {image.format}; send PNG or JPEG", status=415, field=field)
        width, height = image.size
        if width < 1 or height < 1:
            raise PayloadError("image has no pixels", status=422, field=field)
        if max_pixels is not None and width * height > max_pixels:
            raise PayloadError(
                f"image is {width}x{height} = {width * height} pixels, more than the limit {max_pixels}",
                status=413,
                field=field,
            )
    return image


def load_image(image: Image.Image, *, field: str = "image") -> Image.Image:
    """Decode the pixels of an :func:`open_image` image (the first picture of an MPO) as RGB."""
    with _image_errors(field):
        image.load()
        return image.convert("RGB")


def decode_image(
    data: str, *, field: str = "image", max_bytes: int | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Base64 PNG/JPEG/WebP -> RGB PIL image, with size limits checked before decoding pixels."""
    return load_image(open_image(data, field=field, max_bytes=max_bytes, max_pixels=max_pixels), field=field)


def encode_tensors(tensors: Mapping[str, object]) -> str:
    """``{name: torch.Tensor}`` -> base64 safetensors (tensors made contiguous, on CPU)."""
    from safetensors.torch import save

    clean = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items() if t is not None}
    return b64encode(save(clean))


def decode_tensors(data: str, *, field: str = "tensors", max_bytes: int | None = None) -> dict:
    """Base64 safetensors -> ``{name: torch.Tensor}``."""
    from safetensors.torch import load

    raw = b64decode(data, field=field, max_bytes=max_bytes)
    try:
        tensors = load(raw)
    except Exception as exc:  # noqa: BLE001 - safetensors raises SafetensorError and others
        raise PayloadError(f"not a safetensors file ({exc})", field=field) from None
    if not tensors:
        raise PayloadError("safetensors file holds no tensor", status=422, field=field)
    return tensors


def encode_latents(latents) -> str:
    """A latent tensor as base64 safetensors under the name ``latents``."""
    return encode_tensors({"latents": latents})


def decode_latents(data: str, *, field: str = "latent", max_bytes: int | None = None):
    """Base64 safetensors -> the latent tensor (named ``latents``, or the only tensor)."""
    tensors = decode_tensors(data, field=field, max_bytes=max_bytes)
    if "latents" in tensors:
        return tensors["latents"]
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    raise PayloadError(
        f"safetensors holds {len(tensors)} tensors ({', '.join(sorted(tensors))}); name the latent 'latents'",
        status=422,
        field=field,
    )


__all__ = [
    "IMAGE_FORMATS",
    "PayloadError",
    "b64decode",
    "b64encode",
    "decode_image",
    "decode_latents",
    "decode_tensors",
    "encode_image",
    "encode_latents",
    "encode_tensors",
    "image_data_url",
    "load_image",
    "open_image",
]
