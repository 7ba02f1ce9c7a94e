"""Request and response bodies of the sidecar (pydantic; they make the OpenAPI docs).

Requests are validated strictly: no coercion between JSON types (``"step": true`` or ``4.0`` is
not an integer, ``"yes"`` not a boolean; an integer is still a number) and no ``NaN`` or
infinite numbers (JSON ``NaN``, ``Infinity``, ``1e400``). Their shape is checked here too
(prompt text, steps, one kind of preview, adapter choice); what depends on the server's
settings (sizes, counts, token limits) is checked by ``limits.py``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

#: Every request body: strict types, finite numbers, no unknown fields.
_STRICT = {"extra": "forbid", "strict": True, "allow_inf_nan": False}

#: The sampling temperatures every backend handles alike: 0 (greedy) or [MIN_TEMPERATURE,
#: MAX_TEMPERATURE]. vLLM refuses above 2 and raises anything below 0.01 to 0.01; transformers
#: overflows to inf/nan on tiny positive temperatures (logits / 1e-45).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 2.0


def check_temperature(value: float | None) -> float | None:
    """``value`` if it is 0 or in [MIN_TEMPERATURE, MAX_TEMPERATURE]; ValueError otherwise."""
    if value is not None and value != 0 and not MIN_TEMPERATURE <= value <= MAX_TEMPERATURE:
        raise ValueError(
            f"temperature must be 0 (greedy) or between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}, got {value!r}"
        )
    return value


def _refused(detail: str) -> PydanticCustomError:
    """A validation error whose message is ``detail`` itself (the answer's detail, no prefix)."""
    return PydanticCustomError("invalid_request", "{detail}", {"detail": detail})


def text_problem(value: str, *, allow_empty: bool = False) -> str | None:
    """Why ``value`` is not usable prompt text (empty, a NUL, a lone surrogate), or ``None``."""
    if not allow_empty and not value.strip():
        return "must not be empty"
    if "\x00" in value:
        return "contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # only lone surrogates fail to encode
        return f"lone surrogate U+{ord(value[exc.start]):04X} at character {exc.start} (not valid Unicode text)"
    return None


def _check_text(value: str, where: str, *, allow_empty: bool = False) -> None:
    problem = text_problem(value, allow_empty=allow_empty)
    if problem is not None:
        raise _refused(f"{where}: {problem}")


def _check_adapter_choice(adapter: str | None, use_base_model: bool) -> None:
    if use_base_model and adapter is not None:
        raise _refused("give 'adapter' or 'use_base_model', not both")


class Sampling(BaseModel):
    """Per-request decoding overrides; unset fields keep the server's defaults."""

    model_config = ConfigDict(**_STRICT)

    temperature: float | None = Field(
        None, ge=0.0, le=MAX_TEMPERATURE,
        description=f"0 means greedy decoding; otherwise between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}.",
    )
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_new_tokens: int | None = Field(None, ge=1, description="Capped by the server's limit.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    return_logprobs: bool | None = Field(None, description="Return generated token ids and their log-probs.")

    @field_validator("temperature")
    @classmethod
    def _temperature_range(cls, value: float | None) -> float | None:
        return check_temperature(value)


class RefineItem(BaseModel):
    """One sample to refine."""

    model_config = ConfigDict(**_STRICT)

    prompt: str = Field(..., description="The user's original prompt.")
    current_prompt: str | None = Field(None, description="The prompt in force now (default: `prompt`).")
    history: list[str] = Field(default_factory=list, description="Earlier prompts of this sample, oldest first.")
    step: int | None = Field(None, ge=0, description="Index of the denoising step that just finished (0-based).")
    num_steps: int | None = Field(None, ge=1, le=100_000)
    timestep: float | None = None
    image: str | None = Field(
        None, description="Preview of the predicted image: base64 PNG or JPEG (data URL accepted)."
    )
    sample_index: int = Field(0, ge=0)


class RefineRequest(BaseModel):
    """`POST /refine`: one sample (fields at top level) or a batch (`items`).

    Top-level `step`, `num_steps` and `timestep` apply to every item that does not set its own.
    Give either preview images (`image` per item) or one `latent` for the whole batch (rows in
    item order) with its `latent_format`; the server decodes latents with the VAE of a backbone
    it holds.
    """

    model_config = ConfigDict(
        **_STRICT,
        json_schema_extra={
            "examples": [
                {"prompt": "a cat on a sofa", "step": 9, "num_steps": 50, "image": "<base64 PNG>"},
                {
                    "items": [{"prompt": "a cat"}, {"prompt": "a dog"}],
                    "step": 19,
                    "num_steps": 50,
                    "latent": "<base64 safetensors, tensor 'latents' (2, 4, 64, 64)>",
                    "latent_format": "sd15",
                    "return_embeddings": True,
                },
            ]
        },
    )

    # single form
    prompt: str | None = None
    current_prompt: str | None = None
    history: list[str] | None = None
    image: str | None = None
    sample_index: int | None = Field(None, ge=0)
    # batched form
    items: list[RefineItem] | None = None
    # shared
    step: int | None = Field(None, ge=0)
    num_steps: int | None = Field(None, ge=1, le=100_000)
    timestep: float | None = None
    latent: str | None = Field(None, description="Base64 safetensors holding a tensor named 'latents'.")
    latent_format: str | None = Field(None, description="sd15, sdxl, sd3 or flux (required with `latent`).")
    height: int | None = Field(None, ge=8, le=16384, description="Image height, to unpack FLUX latents.")
    width: int | None = Field(None, ge=8, le=16384, description="Image width, to unpack FLUX latents.")
    backbone: str | None = Field(None, description="Name of a backbone the server holds.")
    return_embeddings: bool = Field(False, description="Also return the refined prompts' embeddings.")
    sampling: Sampling | None = None
    adapter: str | None = Field(None, description="A loaded LoRA adapter to use for this request.")
    use_base_model: bool = Field(False, description="Ignore the default adapter for this request.")

    @model_validator(mode="after")
    def _well_formed(self) -> RefineRequest:
        single = self.prompt is not None
        if single and self.items is not None:
            raise ValueError("give either 'prompt' (one sample) or 'items' (a batch), not both")
        if not single and self.items is None:
            raise ValueError("give 'prompt' (one sample) or 'items' (a batch)")
        if not single and any(
            v is not None for v in (self.current_prompt, self.history, self.image, self.sample_index)
        ):
            raise ValueError("with 'items', put current_prompt/history/image/sample_index inside each item")
        if self.items is not None and not self.items:
            raise ValueError("'items' is empty")
        if self.latent is not None and self.latent_format is None and self.backbone is None:
            raise ValueError("'latent' needs 'latent_format' (sd15, sdxl, sd3, flux) or a 'backbone'")
        for at, item in self.labelled_items():
            _check_text(item.prompt, f"{at}prompt")
            if item.current_prompt is not None:
                _check_text(item.current_prompt, f"{at}current_prompt")
            for j, entry in enumerate(item.history):
                _check_text(entry, f"{at}history[{j}]", allow_empty=True)
            if item.step is None or item.num_steps is None:
                raise _refused(f"{at or 'request: '}'step' and 'num_steps' are required")
            if item.step >= item.num_steps:
                raise _refused(f"{at}step: {item.step} is not below num_steps {item.num_steps}")
            if self.latent is not None and item.image is not None:
                raise _refused("give preview images or a latent, not both")
        _check_adapter_choice(self.adapter, self.use_base_model)
        return self

    def labelled_items(self) -> list[tuple[str, RefineItem]]:
        """The normalized items, each with the prefix that names its fields in messages
        (``"items[i]."`` in a batch, ``""`` in the single form)."""
        items = self.normalized_items()
        return [("" if self.items is None else f"items[{i}].", item) for i, item in enumerate(items)]

    def normalized_items(self) -> list[RefineItem]:
        """The batch, with the shared step/num_steps/timestep filled in."""
        if self.items is None:
            items = [
                RefineItem(
                    prompt=self.prompt or "",
                    current_prompt=self.current_prompt,
                    history=self.history or [],
                    image=self.image,
                    sample_index=self.sample_index or 0,
                )
            ]
        else:
            items = [item.model_copy() for item in self.items]
        for item in items:
            if item.step is None:
                item.step = self.step
            if item.num_steps is None:
                item.num_steps = self.num_steps
            if item.timestep is None:
                item.timestep = self.timestep
        return items


class RefinementOut(BaseModel):
    text: str = Field(..., description="The prompt to use from now on (the current prompt on fallback).")
    applied: bool = Field(..., description="False when the policy's output was rejected.")
    fallback: str | None = Field(None, description="Why it was rejected: empty, too_long, unparsable, truncated...")
    raw_text: str | None = None
    error: str | None = None
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None


class RefineResponse(BaseModel):
    prompt: str = Field(..., description="The first refinement's text (convenient for single requests).")
    refinements: list[RefinementOut]
    embeddings: str | None = Field(
        None,
        description="Base64 safetensors: 'prompt_embeds' (and 'pooled_prompt_embeds' for SDXL/SD3), one row per item.",
    )
    backbone: str | None = None
    model: str
    adapter: str | None = None
    latency_s: float


class PlanRequest(BaseModel):
    """`POST /plan`: write all refinement prompts up front (``ahead`` mode, no preview)."""

    model_config = ConfigDict(**_STRICT)

    prompts: list[str] = Field(..., min_length=1)
    steps: list[int] = Field(..., min_length=1, max_length=64)
    num_steps: int = Field(..., ge=1, le=100_000)
    sampling: Sampling | None = None
    adapter: str | None = None
    use_base_model: bool = False

    @model_validator(mode="after")
    def _well_formed(self) -> PlanRequest:
        for i, prompt in enumerate(self.prompts):
            _check_text(prompt, f"prompts[{i}]")
        if any(s < 0 or s >= self.num_steps for s in self.steps):
            raise _refused(f"steps must lie in [0, {self.num_steps})")
        _check_adapter_choice(self.adapter, self.use_base_model)
        return self


class PlanResponse(BaseModel):
    plans: list[list[RefinementOut]]
    model: str
    adapter: str | None = None
    latency_s: float


class AdapterRequest(BaseModel):
    """`POST /admin/adapter`: load an adapter and/or make it the default."""

    model_config = ConfigDict(**_STRICT)

    name: str | None = Field(..., description="Adapter name; null switches to the base model.")
    path: str | None = Field(None, description="Directory of a peft LoRA adapter to (re)load under `name`.")
    make_default: bool = True

    @model_validator(mode="after")
    def _named_when_loading(self) -> AdapterRequest:
        if self.path is not None and self.name is None:
            raise _refused("loading an adapter needs a 'name'")
        return self


class BackboneInfo(BaseModel):
    name: str
    path: str
    family: str
    latent_format: str
    latent_channels: int
    pooled: bool


class Info(BaseModel):
    name: str = "promptloop-sidecar"
    version: str
    backend: str
    model: str
    adapter: str | None
    adapters: dict[str, str]
    lora_enabled: bool
    backbones: list[BackboneInfo]
    latent_formats: list[str]
    ready: bool
    limits: dict[str, Any]
    sampling: dict[str, Any]


class ErrorBody(BaseModel):
    error: str = Field(..., description="A short machine-readable code.")
    detail: str = Field(..., description="What was wrong, for a person.")
    status: int


Health = Literal["ok"]
