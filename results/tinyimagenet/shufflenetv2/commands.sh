#!/usr/bin/env bash
# The exact commands behind results/tinyimagenet/shufflenetv2, in order (issue 26). DATA holds train/<wnid>/*.JPEG (see
# ../squeezenet1_1/commands.sh for how to unpack the shared images). Every run keeps 10,000 of the 100,000 training
# images (50 per class, split_seed 0) for validation. ShuffleNetV2 at width 0.81 of x1.0, the study's width (the
# paper's CIFAR-10 parameter budget, docs/models.md), with the zoo's 64 px rule (stride-2 stem): 1.107 M parameters
# at 200 classes, 31.4 M MACs per image.
# Session 20 (2026-12-06), code 07dc6a7 (training and conversion unchanged since), the 2-core Zen 4 VM, torch 2.14.1,
# one thread, beside a one-thread SqueezeNet run.
set -euo pipefail
DATA=${DATA:-data/tinyimagenet}
RUNS=${RUNS:-runs/tinyimagenet}

# 1. The CNN: the unified recipe (configs/cnn_tinyimagenet.yaml), 3 epochs (1 of warm-up, cosine), 1,652 s wall
#    (498-576 s an epoch, ~180 images/s). Validation 4.59, 15.38, **26.17 %** (macro-F1 0.233). cnn/.
spikelite train -c configs/cnn_tinyimagenet.yaml --data "$DATA" --out "$RUNS/shuf" --model shufflenetv2_x1_0 \
  --width 0.81 --epochs 3 --threads 1 --channels-last --save-every-steps 100 --no-tensorboard

# 2. The convertible CNN: QCFS L = 4 (learned λ per layer from the 99.9th percentile of each ReLU's output), 1 epoch
#    at lr 0.01, no warm-up, 513 s wall: 17.24 % before training, **24.71 %**. cnn-q/.
spikelite train --cnn -c configs/cnn_tinyimagenet.yaml --data "$DATA" --init-from "$RUNS/shuf/best.pt" \
  --model-opt act_levels=4 --model-opt act_threshold=1.0 --epochs 1 --lr 0.01 --warmup-epochs 0 --channels-last \
  --threads 1 --out "$RUNS/shuf-q4" --save-every-steps 100 --no-tensorboard

# 3. Its SNN, converted with no training: T = 4, bursts of 4: **24.70 %** on all 10,000 validation images against the
#    QCFS CNN's 24.71 % in the same check (128 s wall), above the paper's Tiny ImageNet ShuffleNetV2 SNN (11 %).
#    snn/ (convert.log).
spikelite convert "$RUNS/shuf-q4/best.pt" --out "$RUNS/shuf-snn.pt" --T 4 --burst 4 --check 10000 --check-T 4 \
  --threads 1
# 3b. Its energy on 1,000 seeded validation images against command 1's CNN (61 s): 14.3 M ACs + 42.9 M MACs per image
#     (each unit's second 1x1 conv takes the depthwise conv's linear, non-binary output, and the stem runs on the
#     image at every step), 18.6 % firing: 0.2102 mJ (45nm-fp32) against the CNN's 0.1443, 0.69x (the SNN spends
#     more); the paper's ShuffleNetV2 SNN 0.0180 mJ. snn/energy.txt.
spikelite energy results/tinyimagenet/shufflenetv2/snn/best.pt --samples 1000 \
  --cnn results/tinyimagenet/shufflenetv2/cnn/best.pt --profile 45nm-fp32 --profile 45nm-fp32-mem --threads 1
