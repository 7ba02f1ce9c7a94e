"""What the library needs to know about a world: :class:`World`.

A world is a small domain where the reward is exact and the backbone and policy are trained here
(ShapesWorld is the first). The CLI (``promptloop demo --world``, ``promptloop eval --world``),
the prompt sets (``<world>``, ``<world>-heldout[:N]``) and the model specs (``<world>:<asset>``)
ask the world's object; a new world is a folder that subclasses :class:`World` and registers it
(:func:`promptloop.worlds.register_world`), not edits in the modules that use it.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: What marks a saved model folder of each kind of shipped asset.
MARKERS = {"backbone": "model_index.json", "policy": "config.json", "adapter": "adapter_config.json"}


def package_assets(package: str, *parts: str) -> Path:
    """The folder ``parts`` inside the installed ``package`` (a checkout or a wheel alike).

    Models are loaded from paths, so the package must be installed as files (not zipped)."""
    folder = importlib.resources.files(package).joinpath(*parts)
    if isinstance(folder, Path):
        return folder
    raise RuntimeError(f"{package} is not installed as files: its assets {'/'.join(parts)} have no path")


@dataclass(frozen=True, kw_only=True)
class World:
    """A world: its prompt sets, reward and held-out metric, shipped assets and demo.

    Subclasses implement :meth:`prompts` (and :meth:`run_demo` to take part in ``promptloop
    demo``); everything else is data or works from it.

    Args:
        name: the registry name; it prefixes the world's prompt sets (``shapes-heldout:32``) and
            its asset specs (``shapes:backbone-a``). Letters, digits and ``_``.
        title: the name people read (``ShapesWorld``).
        docs: where a user reads about the world and how its assets are trained.
        assets: the folder of the shipped assets (:func:`package_assets`), or ``None``.
        backbones / policies / adapters: names of the shipped diffusers pipelines, policy models
            and policy LoRA adapters, each a folder of ``assets``.
        default_backbone / default_policy: what the demo and ``promptloop eval --world`` use.
        default_adapter: the policy LoRA the demo adds by default (``--adapter none``: the policy
            alone); ``None`` if the world ships none worth showing.
        rewards: reward-registry names the world trains on (the first is the main one).
        heldout_metrics: reward-registry names that are only ever measured (never trained on), to
            watch for reward hacking.
        prompt_sets: names :meth:`prompts` accepts; the first is the default.
        num_inference_steps / guidance_scale / height / width: the sampling the shipped
            backbones were evaluated with.
        schedule: the refine schedule the shipped policy was trained and evaluated with.
    """

    name: str
    title: str
    docs: str
    assets: Path | None = None
    backbones: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()
    default_backbone: str | None = None
    default_policy: str | None = None
    default_adapter: str | None = None
    rewards: tuple[str, ...] = ()
    heldout_metrics: tuple[str, ...] = ()
    prompt_sets: tuple[str, ...] = ("train", "heldout")
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    height: int | None = None
    width: int | None = None
    schedule: str = "evenly:2"

    # -- prompts and scores --------------------------------------------------------------------
    def prompts(self, prompt_set: str = "train", n: int | None = None) -> list[str]:
        """The first ``n`` prompts (a set's default size if ``None``) of ``prompt_set``."""
        raise NotImplementedError(f"{type(self).__name__} defines no prompt sets")

    @property
    def demo_prompts(self) -> list[str]:
        """What ``promptloop demo`` samples when no ``--prompt`` is given."""
        return self.prompts(self.prompt_sets[0], 4)

    def metrics(self) -> dict[str, Callable[[list[Any], list[str]], Sequence[float | None]]]:
        """Extra per-image metrics for :class:`promptloop.evaluation.EvalSettings` (none by default)."""
        return {}

    # -- shipped assets ------------------------------------------------------------------------
    def _asset(self, kind: str, name: str, shipped: Sequence[str]) -> Path:
        """A shipped asset's folder (``name`` one of ``shipped``), or ``name`` as a folder of that kind."""
        marker = MARKERS[kind]
        if name in shipped and self.assets is not None:
            path = self.assets / name
            if (path / marker).is_file():
                return path
            raise FileNotFoundError(f"the {self.title} {kind} {name!r} is not installed at {path} "
                                    f"(reinstall promptloop; {self.docs})")
        path = Path(name).expanduser()
        if (path / marker).is_file():
            return path
        known = ", ".join(shipped) or "none"
        raise FileNotFoundError(f"no {self.title} {kind} {name!r}: the shipped ones are {known}, or give a "
                                f"folder holding {marker} (see {self.docs})")

    def backbone_path(self, name: str | None = None) -> Path:
        """Folder of a shipped backbone (default :attr:`default_backbone`) or of a saved one."""
        return self._asset("backbone", name or self.default_backbone or "", self.backbones)

    def policy_path(self, name: str | None = None) -> Path:
        """Folder of a shipped policy model (default :attr:`default_policy`) or of a saved one."""
        return self._asset("policy", name or self.default_policy or "", self.policies)

    def adapter_path(self, name: str) -> Path:
        """Folder of a shipped policy LoRA adapter or of a saved one."""
        return self._asset("adapter", name, self.adapters)

    def asset_path(self, name: str) -> tuple[str, Path]:
        """``(kind, folder)`` of the shipped asset ``name`` (``backbone``, ``policy`` or ``adapter``)."""
        for kind, shipped in (("backbone", self.backbones), ("policy", self.policies), ("adapter", self.adapters)):
            if name in shipped:
                return kind, self._asset(kind, name, shipped)
        known = ", ".join((*self.backbones, *self.policies, *self.adapters)) or "none"
        raise KeyError(f"{self.title} ships no asset {name!r}; it ships {known}")

    def load_backbone(self, name: str | None = None, device: Any = "cpu", dtype: str | None = None) -> Any:
        """A shipped (or saved) backbone as a diffusers pipeline, progress bar off."""
        from promptloop.specs import load_backbone

        return load_backbone(str(self.backbone_path(name)), device=device, dtype=dtype)

    # -- the demo ------------------------------------------------------------------------------
    def run_demo(self, out: Path, *, prompts: Sequence[str] | None = None, backbone: str | None = None,
                 adapter: str | None = None, steps: int | None = None, schedule: str | None = None,
                 mode: str = "sync", seed: int = 0, echo: Callable[[str], None] = print) -> Mapping[str, Any]:
        """Run ``promptloop demo --world <name>``: write images and the trace to ``out``."""
        raise NotImplementedError(f"{self.title} has no demo")
