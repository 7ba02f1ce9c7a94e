"""What one line of an evaluation compares: a backbone (optionally LoRA-tuned), optionally steered
by a PromptLoop policy (optionally with its LoRA adapter), under a refine schedule and mode."""

from __future__ import annotations

import re
from dataclasses import dataclass

MODES = ("sync", "async", "ahead")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-]*$")


@dataclass(frozen=True)
class EvalRow:
    """One row of an evaluation.

    Args:
        name: the row's label (letters, digits, ``. _ + -``; it names the cell files).
        backbone: a diffusers pipeline: local folder, hub id, ``tiny:<family>`` or a world's shipped
            one (``shapes:backbone-a``: :mod:`promptloop.specs`).
        backbone_adapter: a diffusers LoRA folder (what ``promptloop train ddpo|b2`` writes),
            loaded with ``pipe.load_lora_weights``.
        policy: the PromptLoop policy: local folder, hub id, ``tiny``, ``tiny-warm`` or a world's
            shipped one (``shapes:policy-sft``); ``None`` samples with the backbone alone.
        policy_adapter: a peft LoRA folder for the policy (what ``promptloop train grpo`` writes) or
            a world's shipped one (``shapes:policy-grpo``).
        schedule: a refine schedule (``"evenly:2"``, ``"0.3,0.6"``, ``"5,10"`` ...) or
            ``"oneshot"``: the policy rewrites each prompt once before sampling, no preview.
        mode: ``sync``, ``async`` or ``ahead`` (ignored by ``oneshot`` and without a policy).
    """

    name: str
    backbone: str
    backbone_adapter: str | None = None
    policy: str | None = None
    policy_adapter: str | None = None
    schedule: str = "evenly:2"
    mode: str = "sync"

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or "__" in self.name:
            raise ValueError(f"row name {self.name!r}: use letters, digits and . _ + - (no '__')")
        if self.policy_adapter and not self.policy:
            raise ValueError(f"row {self.name!r}: policy_adapter given without a policy")
        if self.mode not in MODES:
            raise ValueError(f"row {self.name!r}: unknown mode {self.mode!r}; choose from {MODES}")

    @property
    def has_policy(self) -> bool:
        return self.policy is not None


def standard_rows(
    backbone: str,
    *,
    policy: str | None = None,
    policy_adapter: str | None = None,
    backbone_adapter: str | None = None,
    schedule: str = "evenly:2",
    mode: str = "sync",
) -> list[EvalRow]:
    """The standard comparison, for the inputs given: ``backbone`` (alone), ``backbone+policy``,
    ``tuned`` (backbone + its LoRA) and ``tuned+policy``."""
    rows = [EvalRow("backbone", backbone)]
    steered = {"policy": policy, "policy_adapter": policy_adapter, "schedule": schedule, "mode": mode}
    if policy:
        rows.append(EvalRow("backbone+policy", backbone, **steered))
    elif policy_adapter:
        raise ValueError("a policy adapter needs a policy")
    if backbone_adapter:
        rows.append(EvalRow("tuned", backbone, backbone_adapter=backbone_adapter))
        if policy:
            rows.append(EvalRow("tuned+policy", backbone, backbone_adapter=backbone_adapter, **steered))
    return rows
