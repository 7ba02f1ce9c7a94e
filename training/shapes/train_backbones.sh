#!/usr/bin/env bash
# Train both ShapesWorld backbones on a CPU, as shipped (see docs/shapesworld.md).
# Resumable: re-run the same command after an interruption. Backbone B reuses A's VAE (whose
# decoder is fine-tuned alone after the VAE stage; the encoder, hence the latents, do not change).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
RUNS=${RUNS:-runs/shapesworld}
ASSETS=promptloop/assets/shapesworld
UNET_STEPS_A=${UNET_STEPS_A:-6000}
UNET_STEPS_B=${UNET_STEPS_B:-6000}
BUDGET=${BUDGET_MINUTES:-}
budget_args=(); [ -n "$BUDGET" ] && budget_args=(--time-budget-minutes "$BUDGET")
# 1. the VAE (and backbone A's latents); one thread: two oversubscribe a busy machine
$PY -m promptloop.training.shapes.backbone --out $ASSETS/backbone-a --work $RUNS/backbone-a --seed 0 \
    --vae-steps 3000 --vae-batch 24 --vae-fg-weight 4 --decoder-steps 500 --num-scenes 8000 --threads 1 --stop-after latents
# 2. both UNets + text encoders at once, one core each
$PY -m promptloop.training.shapes.backbone --out $ASSETS/backbone-a --work $RUNS/backbone-a --seed 0 \
    --vae-steps 3000 --vae-batch 24 --vae-fg-weight 4 --decoder-steps 500 --num-scenes 8000 --threads 1 --unet-steps $UNET_STEPS_A "${budget_args[@]}" &
$PY -m promptloop.training.shapes.backbone --out $ASSETS/backbone-b --work $RUNS/backbone-b --seed 1 \
    --vae-from $RUNS/backbone-a/vae-decoder --num-scenes 8000 --threads 1 --unet-steps $UNET_STEPS_B "${budget_args[@]}" &
wait
