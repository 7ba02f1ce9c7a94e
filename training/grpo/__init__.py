"""GRPO for the PromptLoop policy: :mod:`.loss` (advantages, clipped token loss, k3 KL) and
:mod:`.trainer` (rollouts, updates, evaluation, checkpoints)."""
