#!/usr/bin/env bash
# The exact commands behind results/tinyimagenet/xception, in order (issue 26). DATA holds train/<wnid>/*.JPEG (see
# ../squeezenet1_1/commands.sh for how to unpack the shared images). Every run keeps 10,000 of the 100,000 training
# images (50 per class, split_seed 0) for validation. xception_mini at width 1.02, the study's width (the paper's
# CIFAR-10 parameter budget, docs/models.md), with the zoo's 64 px rule (stride-2 stem): 1.096 M parameters at
# 200 classes.
# Session 21 (2026-12-06), code 4862365-2b561b6 (the CNN path and conversion unchanged), the 2-core Zen 4 VM,
# torch 2.14.1, one thread, beside the one-thread SqueezeNet CNN-P run (squeezenet1_1/commands.sh 10).
set -euo pipefail
DATA=${DATA:-data/tinyimagenet}
RUNS=${RUNS:-runs/tinyimagenet}

# 1. The CNN: the unified recipe (configs/cnn_tinyimagenet.yaml), 6 epochs (1 of warm-up, cosine), 53 min 15 s wall
#    (497-543 s an epoch, 0.73 s a step). Validation 5.60, 13.08, 18.50, 24.28, 30.47, **32.20 %** (macro-F1 0.301;
#    train accuracy 32.8 %, augmented: more epochs would lift it). cnn/.
spikelite train -c configs/cnn_tinyimagenet.yaml --data "$DATA" --out "$RUNS/xcep" --model xception_mini \
  --width 1.02 --epochs 6 --threads 1 --channels-last --save-every-steps 100 --no-tensorboard --state-dtype bfloat16
