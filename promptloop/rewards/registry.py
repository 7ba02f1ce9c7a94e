"""The reward registry every trainer and ``promptloop eval`` share.

A reward is a batched function ``(images, prompts, metadata) -> list[float]``: one PIL image,
one prompt and one metadata dict per sample, one float per sample back. Rewards are registered
by name with :func:`register_reward` (a decorator on a *factory*: a callable that takes keyword
options such as a model path and returns the reward function), built with :func:`get_reward`,
and combined with weights from a spec string such as ``"jpeg_compressibility:1.0,clip:0.5"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from PIL import Image

Metadata = Sequence[Mapping[str, Any]] | None


@runtime_checkable
class Reward(Protocol):
    """One float per (image, prompt, metadata) sample, batched."""

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str],
                 metadata: Metadata = None) -> list[float]: ...


RewardFactory = Callable[..., Reward]
_REGISTRY: dict[str, RewardFactory] = {}


def register_reward(name: str, *, overwrite: bool = False) -> Callable[[RewardFactory], RewardFactory]:
    """Register a reward factory under ``name``.

    The decorated callable is called with the keyword options given to :func:`get_reward` and
    returns the reward function. A plain reward function with no options works as its own
    factory only if wrapped; the usual pattern is::

        @register_reward("my_reward")
        def my_reward(scale: float = 1.0):
            def score(images, prompts, metadata=None):
                return [scale * len(p) for p in prompts]
            return score
    """
    if not name or any(c in name for c in ",: "):
        raise ValueError(f"reward name {name!r} must be non-empty and contain no ',', ':' or spaces")

    def decorator(factory: RewardFactory) -> RewardFactory:
        if name in _REGISTRY and not overwrite and _REGISTRY[name] is not factory:
            raise ValueError(f"a reward named {name!r} is already registered (pass overwrite=True)")
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_rewards() -> list[str]:
    """Names of the registered rewards, sorted."""
    _import_pending()
    return sorted(_REGISTRY)


def reward_factory(name: str) -> RewardFactory:
    """The factory registered as ``name`` (its signature lists the reward's options)."""
    _import_pending()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown reward {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def get_reward(name: str, **options: Any) -> Reward:
    """Build the reward registered as ``name`` with its factory's keyword ``options``."""
    return reward_factory(name)(**options)


def parse_reward_spec(spec: str | Mapping[str, float]) -> dict[str, float]:
    """``"a:1.0,b:0.5"`` (or ``"a"``, weight 1) -> ``{"a": 1.0, "b": 0.5}``."""
    if isinstance(spec, Mapping):
        return {str(k): float(v) for k, v in spec.items()}
    weights: dict[str, float] = {}
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        name, _, weight = part.partition(":")
        name = name.strip()
        try:
            weights[name] = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ValueError(f"bad weight {weight!r} for reward {name!r} in {spec!r}") from None
    if not weights:
        raise ValueError(f"empty reward spec {spec!r}")
    return weights


class CombinedReward:
    """A weighted sum of registered rewards; :meth:`terms` gives each term for logging."""

    def __init__(self, weights: Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None = None):
        options = options or {}
        self.weights = dict(weights)
        self.rewards = {name: get_reward(name, **dict(options.get(name, {}))) for name in self.weights}

    @classmethod
    def from_spec(cls, spec: str | Mapping[str, float],
                  options: Mapping[str, Mapping[str, Any]] | None = None) -> CombinedReward:
        return cls(parse_reward_spec(spec), options)

    def terms(self, images: Sequence[Image.Image], prompts: Sequence[str],
              metadata: Metadata = None) -> dict[str, list[float]]:
        """Each term's unweighted scores, by name."""
        out = {}
        for name, reward in self.rewards.items():
            scores = [float(s) for s in reward(images, prompts, metadata)]
            if len(scores) != len(images):
                raise ValueError(f"reward {name!r} returned {len(scores)} scores for {len(images)} images")
            out[name] = scores
        return out

    def combine(self, terms: Mapping[str, Sequence[float]]) -> list[float]:
        n = len(next(iter(terms.values()))) if terms else 0
        return [sum(self.weights[name] * terms[name][i] for name in self.weights) for i in range(n)]

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str],
                 metadata: Metadata = None) -> list[float]:
        return self.combine(self.terms(images, prompts, metadata))


def load_reward(spec: str | Mapping[str, float],
                options: Mapping[str, Mapping[str, Any]] | None = None) -> CombinedReward:
    """Build a (possibly weighted) reward from a spec string: ``"jpeg_compressibility"``,
    ``"jpeg_compressibility:1.0,clip:0.5"``. ``options`` maps a reward name to its factory's
    keyword options (e.g. ``{"clip": {"path": "openai/clip-vit-base-patch32"}}``)."""
    return CombinedReward.from_spec(spec, options)


ENTRY_POINT_GROUP = "promptloop.rewards"
_PENDING_MODULES: list[str] = []
_ENTRY_POINTS_READ = False


def register_reward_module(module: str) -> None:
    """Import ``module`` (which registers its rewards) the first time rewards are listed or built.

    The package's ``__init__`` names the built-ins this way, so importing :mod:`promptloop.rewards`
    stays cheap (no torch) and this module imports none of them. Other packages need no call: they
    declare their module in the ``promptloop.rewards`` entry-point group of their ``pyproject.toml``::

        [project.entry-points."promptloop.rewards"]
        my_reward = "my_package.rewards"
    """
    _PENDING_MODULES.append(module)


def _import_pending() -> None:
    global _ENTRY_POINTS_READ
    if not _ENTRY_POINTS_READ:
        _ENTRY_POINTS_READ = True
        from importlib.metadata import entry_points

        _PENDING_MODULES.extend(entry.value for entry in entry_points(group=ENTRY_POINT_GROUP))
    while _PENDING_MODULES:
        importlib.import_module(_PENDING_MODULES.pop(0))
