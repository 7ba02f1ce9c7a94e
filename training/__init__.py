"""PromptLoop's trainers, installed as ``promptloop.training`` (run with ``promptloop train``).

- :mod:`~promptloop.training.grpo`: GRPO on the policy, the LLM that refines prompts inside the
  denoising loop (a LoRA adapter; rollouts are real pipeline calls driven by the hook).
- :mod:`~promptloop.training.diffusion`: DDPO and B²-DiffuRL on a LoRA adapter of the backbone's
  UNet, with the log-probability of every DDIM step.
- :mod:`~promptloop.training.shapes`: the ShapesWorld recipes (backbones, shipped policy, the
  experiment).
- Shared by all of them: :mod:`~promptloop.training.config` (config dataclasses, YAML and
  ``--set`` loading), :mod:`~promptloop.training.runtime` (accelerate, seeds, checkpoints that
  resume exactly, logging), :mod:`~promptloop.training.rollouts` (the loop's rollouts as training
  records), :mod:`~promptloop.training.models` and the ``promptloop train`` command
  (:mod:`~promptloop.training.cli`, :mod:`~promptloop.training.launch`).

Training imports the library (:mod:`promptloop`); the library never imports training.
"""
