"""``promptloop eval`` (registered lazily by :mod:`promptloop.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _split_ints(text: str | None) -> list[int] | None:
    """``"0,1,2"`` -> ``[0, 1, 2]``; a part that is not an integer is a ConfigError naming ``--seeds``."""
    from promptloop.validation import ConfigError

    parts = _split(text)
    if parts is None:
        return None
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ConfigError("--seeds", text, "must be integers separated by commas, e.g. 0,1,2") from None


def world_defaults(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """What ``--world NAME`` fills in: the standard rows' inputs (``backbone``, ``policy``,
    ``schedule``: the world's shipped defaults as ``<world>:<asset>`` specs) and the settings (its
    held-out prompt set, its reward and held-out metrics, the sampling its backbones were evaluated with)."""
    from promptloop.validation import ConfigError
    from promptloop.worlds import available_worlds, get_world

    if name not in available_worlds():
        raise ConfigError("--world", name, f"unknown world; registered: {', '.join(available_worlds()) or 'none'}")
    world = get_world(name)
    rows = {"backbone": f"{world.name}:{world.default_backbone}" if world.default_backbone else None,
            "policy": f"{world.name}:{world.default_policy}" if world.default_policy else None,
            "schedule": world.schedule}
    prompt_set = "heldout" if "heldout" in world.prompt_sets else world.prompt_sets[0]
    settings = {"prompts": f"{world.name}-{prompt_set}", "rewards": [*world.rewards, *world.heldout_metrics],
                "num_inference_steps": world.num_inference_steps, "guidance_scale": world.guidance_scale,
                "height": world.height, "width": world.width}
    return rows, {k: v for k, v in settings.items() if v not in (None, [])}


def eval_command(
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", exists=True, dir_okay=False,
        help="YAML file with 'rows:' (EvalRow fields) and 'settings:' (EvalSettings fields); see docs/evaluation.md.")] = None,
    world: Annotated[str | None, typer.Option(
        help="A world (promptloop.worlds, e.g. shapes): its shipped backbone and policy are the default --backbone "
             "and --policy (without --config), and its held-out prompts, reward + held-out metric and sampling "
             "settings the defaults of the options below.")] = None,
    backbone: Annotated[str | None, typer.Option(
        help="Backbone (folder, hub id, tiny:sd or a world's shipped one such as shapes:backbone-a): adds the "
             "standard rows backbone, backbone+policy, tuned, tuned+policy for the inputs given.")] = None,
    policy: Annotated[str | None, typer.Option(
        help="PromptLoop policy: folder, hub id, tiny, tiny-warm or a world's shipped one (shapes:policy-sft).")] = None,
    policy_adapter: Annotated[str | None, typer.Option(
        help="peft LoRA folder of the policy (promptloop train grpo) or a shipped one (shapes:policy-grpo).")] = None,
    backbone_adapter: Annotated[str | None, typer.Option(
        help="diffusers LoRA folder of the tuned backbone (promptloop train ddpo|b2).")] = None,
    schedule: Annotated[str | None, typer.Option(
        help="Refine schedule of the policy rows ('evenly:2', '0.3,0.6', 'oneshot'; default: the world's, "
             "else evenly:2).")] = None,
    mode: Annotated[str, typer.Option(help="sync | async | ahead.")] = "sync",
    prompts: Annotated[str | None, typer.Option(
        help="Prompt set: tiny-heldout, <world>-heldout[:N] such as shapes-heldout:32, or a text file (one "
             "prompt a line).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Sampling seeds, e.g. 0,1,2.")] = None,
    rewards: Annotated[str | None, typer.Option(help="Reward names from the registry, e.g. shapes,shapes_fidelity.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale.")] = None,
    size: Annotated[int | None, typer.Option(help="Image height and width.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Prompts per pipeline call.")] = None,
    num_strips: Annotated[int | None, typer.Option(help="Prompts shown in each row's trace strip.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if available).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (cells/, strips/, results.*).")] = Path("promptloop-eval"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Score rows (backbone alone, + policy, tuned backbone, tuned + policy ...) on held-out prompts
    over several seeds with rewards from the registry.

    Writes OUT/results.md (mean ± 95% half-width), OUT/results.csv, OUT/rewards.png and
    OUT/strips/<row>.png; each (row, seed) cell is saved under OUT/cells/ and reused by the next run.
    Rows and settings are checked before any model loads (ranges, prompt files, reward names,
    local model paths): a bad one ends with exit status 2 and one line naming it.

    Example:

      promptloop eval --backbone tiny:sd --policy tiny-warm --prompts tiny-heldout --seeds 0,1,2
      --rewards jpeg_compressibility --steps 4 --size 64 --out runs/eval

      promptloop eval --world shapes --prompts shapes-heldout:16 --seeds 0,1 --out runs/eval-shapes
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        typer.secho('error: `promptloop eval` draws its plot with matplotlib, which is not installed: '
                    'pip install "promptloop[eval]" (in a checkout: bash scripts/install.sh)', fg="red", err=True)
        raise typer.Exit(1) from None
    from promptloop.evaluation.config import check_eval, load_eval_config
    from promptloop.evaluation.rows import MODES, standard_rows
    from promptloop.evaluation.runner import evaluate
    from promptloop.evaluation.settings import EvalSettings
    from promptloop.validation import ConfigError, check_choice, check_schedule, exit_on_config_error

    with exit_on_config_error():  # everything is checked before a model loads: one line, exit 2
        rows, raw = load_eval_config(config) if config else ([], {})
        world_rows, world_settings = world_defaults(world) if world else ({}, {})
        if world and not config and not backbone:
            backbone, policy = world_rows["backbone"], policy or world_rows["policy"]
        schedule = schedule or world_rows.get("schedule") or "evenly:2"
        if backbone:
            check_choice("--mode", mode, MODES)
            check_schedule("--schedule", schedule)
            if policy_adapter and not policy:
                raise ConfigError("--policy-adapter", policy_adapter, "needs --policy")
            rows += standard_rows(backbone, policy=policy, policy_adapter=policy_adapter,
                                  backbone_adapter=backbone_adapter, schedule=schedule, mode=mode)
        elif policy or policy_adapter or backbone_adapter:
            raise ConfigError("--backbone", backbone, "--policy/--policy-adapter/--backbone-adapter need --backbone")
        if not rows:
            raise ConfigError("--backbone", backbone, "nothing to evaluate: give --config with rows, --backbone or --world")
        overrides = {"prompts": prompts, "seeds": _split_ints(seeds), "rewards": _split(rewards),
                     "num_inference_steps": steps, "guidance_scale": guidance, "height": size, "width": size,
                     "batch_size": batch_size, "num_strips": num_strips, "device": device}
        raw.update({k: v for k, v in overrides.items() if v is not None})
        for key, value in world_settings.items():
            raw.setdefault(key, value)
        raw.setdefault("prompts", "tiny-heldout")
        raw.setdefault("seeds", [0, 1, 2])
        raw.setdefault("rewards", ["jpeg_compressibility"])
        check_eval(rows, raw)
    settings = EvalSettings(**raw)
    report = evaluate(rows, settings, out, progress=not quiet)
    reused = len(report.cells) - len(report.computed)
    typer.echo(report.markdown())
    typer.echo(f"\n{len(report.computed)} cells computed, {reused} reused. Wrote {out}/results.md, results.csv, "
               f"rewards.png, strips/.")
