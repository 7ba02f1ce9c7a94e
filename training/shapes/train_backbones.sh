#!/usr/bin/env bash
# Train the ShapesWorld backbones on a CPU, as shipped (see docs/shapesworld.md): A and B on every
# phrasing, then C and D on descriptive captions (95 % `full`), all on A's VAE.
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
# 3. backbones C and D: descriptive captions (16 min each on a quiet core, side by side)
UNET_STEPS_CD=${UNET_STEPS_CD:-6000}
for pair in "c 2" "d 3"; do
  set -- $pair
  $PY -m promptloop.training.shapes.backbone --out $ASSETS/backbone-$1 --work $RUNS/backbone-$1 --seed $2 \
      --vae-from $RUNS/backbone-a/vae-decoder --num-scenes 8000 --threads 1 --captions descriptive \
      --unet-steps $UNET_STEPS_CD "${budget_args[@]}" &
done
wait
# 4. record the held-out figures the docs report and the tests re-measure
for b in a b c d; do $PY -m promptloop.training.shapes.evaluate --backbone $ASSETS/backbone-$b; done
