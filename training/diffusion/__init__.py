"""DDPO and B²-DiffuRL: reinforcement learning of a LoRA adapter on a diffusion UNet.

* :mod:`.ddim_logprob`  the one DDIM step with a log-probability both trainers use;
* :mod:`.trajectory`    sampling and recording trajectories, the denoiser call training repeats;
* :mod:`.stat_tracker`  per-prompt reward statistics (DDPO's buffer, B²'s stage history);
* :mod:`.lora`          the UNet's LoRA adapter (peft through diffusers), saved for ``load_lora_weights``;
* :mod:`.ddpo`          DDPO-SF / DDPO-IS / RWR (:class:`DDPOTrainer`);
* :mod:`.b2`            B²-DiffuRL on the DDPO-IS optimiser (:class:`B2Trainer`).
"""
