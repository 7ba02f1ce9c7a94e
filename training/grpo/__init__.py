"""GRPO for the PromptLoop policy.

* :mod:`.config`   :class:`~.config.GRPOConfig` (the shared base config + the loop and TRL's fields);
* :mod:`.loss`     group advantages, the clipped token loss, k3 KL;
* :mod:`.trainer`  rollouts, updates, evaluation, checkpoints (:class:`~.trainer.GRPOTrainer`);
* :mod:`.command`  ``promptloop train grpo``.
"""
