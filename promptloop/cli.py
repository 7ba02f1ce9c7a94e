"""The ``promptloop`` command line: ``demo``, ``generate``, ``trace``, ``eval`` (the evaluation,
:mod:`promptloop.evaluation`), and the surfaces built on the library: ``serve`` (the sidecar),
``comfy`` (the ComfyUI pack) and ``train`` (the trainers).

The surfaces are registered lazily: importing this module (or running ``promptloop --help``)
imports none of ``promptloop.server``, ``promptloop.comfy_nodes`` or ``promptloop.training``;
each is imported when its command runs.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import click
import typer

app = typer.Typer(
    name="promptloop",
    help=(
        "PromptLoop: a multimodal LLM policy rewrites the prompt of a frozen diffusion model while it "
        "samples.\n\nStart with `promptloop demo` (tiny built-in models, no download), then "
        "`promptloop generate --help` for real checkpoints."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

ScheduleOpt = Annotated[
    str,
    typer.Option(
        "--schedule",
        help="Where to refine: 'evenly:3' (3 equally spaced), '0.2,0.4,0.6' (fractions), '5,10,15' "
        "(step indices), 'every:5', or 'none'.",
    ),
]
ModeOpt = Annotated[
    str,
    typer.Option("--mode", help="sync: wait for the policy; async: never wait, apply on arrival; "
                 "ahead: plan all prompts before sampling."),
]
PreviewOpt = Annotated[
    str, typer.Option("--preview", help="What the policy sees: 'vae' (exact), 'taesd' (needs --taesd), 'linear' (fast).")
]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        for name in ("transformers", "diffusers"):
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            import diffusers
            import transformers

            transformers.logging.set_verbosity_error()
            diffusers.utils.logging.set_verbosity_error()
        except ImportError:  # pragma: no cover
            pass


def _write_outputs(out: Path, images, hook, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        image.save(out / f"image_{i:02d}.png")
    trace = hook.trace
    trace.meta.update(meta)
    trace.save(out)
    (out / "trace.html").write_text(trace.to_html(images=images, title="PromptLoop run"))
    trace.render_strip(images=images).save(out / "trace.png")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for images and the trace.")] = Path("promptloop-demo"),
    world: Annotated[str, typer.Option(
        help="A world (`promptloop.worlds`; shapes: ShapesWorld's shipped backbone and policy, with exact "
             "rewards before/after) or random: tiny random-weight models (--family, --preview, --size, "
             "--policy-steps apply).")] = "shapes",
    family: Annotated[str, typer.Option(help="Tiny backbone family: sd, sdxl, sd3 or flux.")] = "sd",
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Prompt (repeatable).")] = None,
    steps: Annotated[int | None, typer.Option(
        help="Denoising steps (default: the world's, 20 on ShapesWorld; 20 on random models).")] = None,
    schedule: Annotated[str | None, typer.Option(
        "--schedule", help="Where to refine (default: the world's, evenly:2 on ShapesWorld, as trained and "
                           "evaluated; evenly:3 on random models).")] = None,
    mode: ModeOpt = "sync",
    preview: PreviewOpt = "vae",
    backbone: Annotated[str | None, typer.Option(
        help="The world's shipped backbone (default: its own; on ShapesWorld backbone-c, trained on descriptive "
             "captions; or backbone-a/-b/-d) or a folder.")] = None,
    adapter: Annotated[str, typer.Option(help="Policy LoRA of the world: 'default' (its trained one; ShapesWorld: "
                                              "policy-grpo), 'none' (the shipped policy alone), a shipped one or "
                                              "a folder.")] = "default",
    size: Annotated[int, typer.Option(help="Image size in pixels (tiny models: keep it small).")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of the diffusion noise.")] = 0,
    policy_steps: Annotated[int, typer.Option(
        help="Fine-tuning steps that teach the tiny policy to append a style phrase (0: random policy, "
             "whose output is rejected as garbage; the trace then shows the fallbacks).")] = 300,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the loop on a world (default: ShapesWorld) or on tiny random models built in code (no download).

    ShapesWorld (--world shapes): a small Stable Diffusion pipeline trained here on images of
    coloured shapes, and a tiny Qwen2-VL policy supervised to restate prompts explicitly, both
    shipped with the package. Each prompt is sampled without and with the policy from the same
    noise, and the exact reward of both images is printed and shown on the trace page.

    Random models (--world random): it builds a tiny diffusion pipeline (random weights) and a tiny Qwen2-VL policy, which it
    first teaches, in about 40 s on a CPU (cached under ~/.cache/promptloop), to answer with the
    current prompt plus a style phrase. Both are saved with save_pretrained and loaded back
    through the same code real checkpoints use. The images and the trace (JSON, HTML page, PNG
    strip) go to --out. The diffusion model is random: the point is to see the loop.
    """
    _setup_logging(verbose)
    if world != "random":
        from promptloop.worlds import World, available_worlds, get_world

        if world not in available_worlds():
            raise typer.BadParameter(f"unknown world {world!r}: choose {', '.join(available_worlds())} or random",
                                     param_hint="--world")
        chosen = get_world(world)
        if type(chosen).run_demo is World.run_demo:
            raise typer.BadParameter(f"{chosen.title} has no demo; see {chosen.docs}", param_hint="--world")
        lora = chosen.default_adapter if adapter == "default" else None if adapter == "none" else adapter
        chosen.run_demo(out, prompts=prompt, backbone=backbone, adapter=lora,
                        steps=steps, schedule=schedule, mode=mode, seed=seed, echo=typer.echo)
        return
    steps = steps or 20
    import torch

    from promptloop import PromptLoopHook
    from promptloop.backbones import load_pipeline
    from promptloop.policies import SamplingConfig, TransformersPolicy
    from promptloop.testing import TINY_PROMPTS, save_tiny_pipeline
    from promptloop.testing.policy import save_tiny_qwen2vl

    prompts = list(prompt or TINY_PROMPTS[:2])
    with tempfile.TemporaryDirectory(prefix="promptloop-demo-") as tmp:
        typer.echo(f"building tiny {family} pipeline ...")
        backbone_dir = save_tiny_pipeline(family, Path(tmp) / f"tiny-{family}")
        pipe = load_pipeline(backbone_dir, device="cpu", dtype="float32")
        if policy_steps > 0:
            policy_dir = _warm_tiny_policy(policy_steps)
        else:
            typer.echo("building an untrained tiny Qwen2-VL policy (its output will be rejected) ...")
            policy_dir = save_tiny_qwen2vl(Path(tmp) / "tiny-qwen2vl")
        policy = TransformersPolicy.from_pretrained(policy_dir, device="cpu", dtype="float32",
                                                    sampling=SamplingConfig(max_new_tokens=48))
    hook = PromptLoopHook(policy, schedule=schedule or "evenly:3", mode=mode, preview=preview, preview_size=128)
    kwargs = {"num_inference_steps": steps, "height": size, "width": size,
              "generator": torch.Generator().manual_seed(seed)}
    if family != "flux":
        kwargs["guidance_scale"] = 5.0
    start = time.perf_counter()
    images = pipe(prompts, callback_on_step_end=hook, **kwargs).images
    elapsed = time.perf_counter() - start
    policy_name = f"tiny-qwen2vl (taught, {policy_steps} steps)" if policy_steps else "tiny-qwen2vl (random)"
    _write_outputs(out, images, hook, {"seed": seed, "backbone": f"tiny-{family}", "policy": policy_name,
                                       "seconds": round(elapsed, 3)})
    typer.echo(hook.trace.to_text())
    typer.echo(f"\n{len(images)} images in {elapsed:.2f} s. Open {out / 'trace.html'} (or {out / 'trace.png'}).")


def _warm_tiny_policy(steps: int) -> Path:
    """The taught tiny policy, trained once and cached."""
    from promptloop.testing.warmup import cached_warm_tiny_qwen2vl

    cache = Path(os.environ.get("PROMPTLOOP_CACHE", Path.home() / ".cache" / "promptloop"))
    if not (cache / f"tiny-qwen2vl-warm-{steps}" / "config.json").exists():
        typer.echo(f"teaching the tiny Qwen2-VL policy its job ({steps} steps, ~40 s on a CPU; cached in {cache}) ...")
    return cached_warm_tiny_qwen2vl(steps=steps, cache_dir=cache)


@app.command()
def generate(
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Prompt (repeatable for a batch).")],
    backbone: Annotated[str, typer.Option(help="Diffusers pipeline: local folder or hub id (SD 1.5, SDXL, SD3, FLUX).")],
    policy: Annotated[str, typer.Option(help="Policy: local folder or hub id (Qwen2-VL / Qwen2.5-VL), or a sidecar URL.")],
    policy_backend: Annotated[str | None, typer.Option(
        help="transformers | vllm | http | openai (default: http for URLs, transformers otherwise).")] = None,
    adapter: Annotated[str | None, typer.Option(help="peft LoRA adapter folder for the policy.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="PROMPTLOOP_API_KEY", help="API key for http/openai policies.")] = None,
    schedule: ScheduleOpt = "evenly:5",
    mode: ModeOpt = "sync",
    preview: PreviewOpt = "vae",
    taesd: Annotated[str | None, typer.Option(help="TAESD AutoencoderTiny folder or hub id, for --preview taesd.")] = None,
    preview_size: Annotated[int, typer.Option(help="Longer side of the preview shown to the policy.")] = 256,
    negative_prompt: Annotated[str | None, typer.Option(help="Negative prompt.")] = None,
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = 30,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale (pipeline default if unset).")] = None,
    num_images: Annotated[int, typer.Option(help="Images per prompt.")] = 1,
    height: Annotated[int | None, typer.Option(help="Image height (pipeline default if unset).")] = None,
    width: Annotated[int | None, typer.Option(help="Image width (pipeline default if unset).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the diffusion noise.")] = 0,
    policy_seed: Annotated[int | None, typer.Option(help="Seed of the policy's sampling.")] = None,
    temperature: Annotated[float, typer.Option(help="Policy temperature (0 = greedy).")] = 0.0,
    max_new_tokens: Annotated[int, typer.Option(help="Longest refined prompt, in tokens.")] = 96,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for one policy answer before keeping the prompt.")] = 60.0,
    device: Annotated[str | None, typer.Option(help="cuda, cpu, cuda:1 ... (default: cuda if available).")] = None,
    dtype: Annotated[str, typer.Option(help="auto | float16 | bfloat16 | float32.")] = "auto",
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for images and the trace.")] = Path("promptloop-out"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Generate with a real backbone and policy, given as local folders or hub ids.

    Example:

      promptloop generate -p "a red fox in the snow" --backbone stable-diffusion-v1-5/stable-diffusion-v1-5
      --policy Qwen/Qwen2.5-VL-3B-Instruct --schedule evenly:5
    """
    _setup_logging(verbose)
    import torch

    from promptloop import PromptLoopHook
    from promptloop.backbones import load_pipeline
    from promptloop.devices import default_device
    from promptloop.policies import SamplingConfig, load_policy

    device = device or default_device()
    pipe = load_pipeline(backbone, device=device, dtype=dtype)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=policy_seed)
    refiner = load_policy(policy, backend=policy_backend, adapter=adapter, sampling=sampling, device=device,
                          api_key=api_key)
    hook = PromptLoopHook(refiner, schedule=schedule, mode=mode, preview=preview, taesd=taesd,
                          preview_size=preview_size, timeout_s=timeout)
    kwargs = {"num_inference_steps": steps, "num_images_per_prompt": num_images,
              "generator": torch.Generator(device="cpu").manual_seed(seed)}
    for key, value in (("guidance_scale", guidance), ("height", height), ("width", width),
                       ("negative_prompt", negative_prompt)):
        if value is not None:
            kwargs[key] = value
    start = time.perf_counter()
    images = pipe(list(prompt), callback_on_step_end=hook, **kwargs).images
    elapsed = time.perf_counter() - start
    _write_outputs(out, images, hook, {"seed": seed, "backbone": backbone, "policy": policy, "seconds": round(elapsed, 3)})
    typer.echo(hook.trace.to_text())
    typer.echo(f"\nwrote {len(images)} images and the trace to {out}/ in {elapsed:.1f} s")


@app.command()
def trace(
    path: Annotated[Path, typer.Argument(help="A trace.json (or the folder holding it).")],
    html_out: Annotated[Path | None, typer.Option("--html", help="Write an HTML page here.")] = None,
    png_out: Annotated[Path | None, typer.Option("--png", help="Write a PNG strip here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the trace as JSON.")] = False,
) -> None:
    """Show a saved trace as text, or re-render it as HTML / PNG."""
    from promptloop.trace import Trace

    loaded = Trace.load(path)
    if html_out:
        html_out.write_text(loaded.to_html())
    if png_out:
        loaded.render_strip().save(png_out)
    typer.echo(json.dumps(loaded.to_dict(), indent=2) if as_json else loaded.to_text())


# -- surfaces: imported when their command runs ------------------------------------------------
# (name, "module:attribute" of a typer app or command function, one-line help, pip extra)
SURFACES: tuple[tuple[str, str, str, str | None], ...] = (
    ("serve", "promptloop.server.cli:serve",
     "Run the HTTP sidecar: a policy behind POST /refine and /plan (see `promptloop serve --help`).", "server"),
    ("comfy", "promptloop.comfy_nodes.install:comfy_app",
     "Install the PromptLoop node pack into ComfyUI (`promptloop comfy install --help`).", None),
    ("train", "promptloop.training.cli:app",
     "Train the policy (GRPO) or the backbone (DDPO, B2-DiffuRL) from a YAML config.", "train"),
    ("eval", "promptloop.evaluation.command:eval_command",
     ("Score the backbone, tuned backbone and PromptLoop policies on held-out prompts and seeds "
      "(table, CSV, plot, trace strips; resumable). See `promptloop eval --help`."), "eval"),
    ("experiment", "promptloop.training.shapes.experiment:app",
     "Run the ShapesWorld alignment experiment end to end (`promptloop experiment shapes --help`).", "train"),
)
# Everything after the command name goes to the surface's own command, --help included.
_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


class SurfaceUnavailable(RuntimeError):
    """A surface's command cannot be imported (not installed, or a dependency missing)."""


def _surface_command(name: str, target: str, extra: str | None) -> click.Command:
    """Import ``module:attribute`` and return it as a click command.

    Raises :class:`SurfaceUnavailable`, saying what to install, when it cannot.
    """
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise SurfaceUnavailable(
                f"`promptloop {name}` is not available: {module_name} is not part of this installation "
                "of promptloop (reinstall or upgrade promptloop to get it).") from None
        hint = f": pip install \"promptloop[{extra}]\"" if extra else ""
        raise SurfaceUnavailable(f"`promptloop {name}` needs the package {missing!r}, which is not "
                                   f"installed{hint}") from None
    obj = getattr(module, attr, None)
    if isinstance(obj, typer.Typer):
        return typer.main.get_command(obj)
    if isinstance(obj, click.Command):
        return obj
    if callable(obj):  # a typer-style command function
        single = typer.Typer(add_completion=False)
        single.command(name=name, help=obj.__doc__)(obj)
        return typer.main.get_command(single)
    raise SurfaceUnavailable(f"`promptloop {name}` is not available: {target} is not a command")


def _register_surface(name: str, target: str, help_text: str, extra: str | None) -> None:
    @app.command(name, help=help_text, context_settings=_PASS_THROUGH, add_help_option=False)
    def run_surface(ctx: typer.Context) -> None:
        try:
            command = _surface_command(name, target, extra)
        except SurfaceUnavailable as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
        with command.make_context(ctx.info_name, list(ctx.args), parent=ctx.parent) as sub:
            command.invoke(sub)


for _surface in SURFACES:
    _register_surface(*_surface)


def main() -> None:  # pragma: no cover - console entry point
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
