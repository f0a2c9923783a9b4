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

# 2. The convertible CNN: QCFS L = 8 (learned λ per layer from the 99.9th percentile of each ReLU's output), 1 epoch at
#    lr 0.01, no warm-up, 11 min 50 s wall (647 s training): 30.21 % before training, **31.96 %**. cnn-q/.
spikelite train --cnn -c configs/cnn_tinyimagenet.yaml --data "$DATA" --init-from "$RUNS/xcep/best.pt" \
  --model-opt act_levels=8 --model-opt act_threshold=1.0 --epochs 1 --lr 0.01 --warmup-epochs 0 --channels-last \
  --threads 1 --out "$RUNS/xcep-q8" --save-every-steps 100 --no-tensorboard --state-dtype bfloat16
# 3. Its SNN, converted with no training: T = 4, rate 2, bursts of 8 (a QCFS CNN with 2 x 4 = 8 levels converts exactly
#    at T = 4): **31.96 %** on all 10,000 validation images against the QCFS CNN's 31.99 % in the same check (-0.03
#    points), above the paper's Tiny ImageNet Xception SNN (23 %). 278 s wall (220 s the check). snn/ (convert.log).
spikelite convert "$RUNS/xcep-q8/best.pt" --out "$RUNS/xcep-snn.pt" --T 4 --burst 8 --rate 2 --check 10000 \
  --check-T 4 --threads 1
# 3b. Its energy on 1,000 seeded validation images against command 1's CNN (90 s): 15.1 M ACs + 118.8 M MACs per image
#     (each separable conv's pointwise conv reads the depthwise conv's linear, non-binary output: MACs at every step),
#     29.9 % firing: 0.5602 mJ (45nm-fp32) against the CNN's 0.2465 (53.6 M MACs), 0.44x: the SNN spends more. The
#     paper's Xception SNN: 1.7797 mJ. snn/energy.txt.
spikelite energy results/tinyimagenet/xception/snn/best.pt --samples 1000 --cnn results/tinyimagenet/xception/cnn/best.pt \
  --profile 45nm-fp32 --profile 45nm-fp32-mem --threads 1
