#!/usr/bin/env bash
# The exact commands behind results/cifar10/squeezenet1_1/README.md, in order.
# DATA is a folder holding train/<class>/*.jpg, e.g. the shared CIFAR-10 training images:
#   mkdir -p data/cifar10 && tar -xzf ../shared/datasets/cifar10-jpeg-train.tar.gz -C data/cifar10
# Every run keeps 5,000 of the 50,000 training images (500 per class, split_seed 0) for validation.
# Runs are resumable: re-run a command with --resume after an interruption.
set -euo pipefail
DATA=${DATA:-data/cifar10}
RUNS=${RUNS:-runs/cifar10}

# 1. The CNN: the unified recipe (configs/cnn_cifar10.yaml: SGD Nesterov lr 0.1, cosine, 1 warm-up
#    epoch, label smoothing 0.1, wd 5e-4, batch 128) for 7 epochs, average pooling (the SNN's pooling).
spikelite train -c configs/cnn_cifar10.yaml --data "$DATA" --out "$RUNS/cnn" --epochs 7 \
  --model-opt pool=avg --threads 2 --channels-last --save-every-steps 50

# 2. The SNN: that CNN converted (ReLU -> LIF, T=4, BatchNorm re-estimated on spikes; its epoch-0 row
#    is the converted network before any fine-tuning) and fine-tuned with surrogate gradients for one
#    epoch over a stratified 15,000-image subset of the 45,000 training images (the session's time budget)
#    (configs/snn_finetune_cifar10.yaml: AdamW lr 1e-3 wd 0.05, cosine, TET loss, atan surrogate).
spikelite train -c configs/snn_finetune_cifar10.yaml --init-from "$RUNS/cnn/best.pt" --data "$DATA" \
  --out "$RUNS/snn" --epochs 1 --train-subset 15000 --threads 2 --save-every-steps 25

# 3. Evaluation and energy of the committed checkpoints (validation split, 1,000 seeded images for energy).
spikelite eval results/cifar10/squeezenet1_1/cnn/best.pt --data "$DATA" --split val --threads 2
spikelite eval results/cifar10/squeezenet1_1/snn/best.pt --data "$DATA" --split val --threads 2
spikelite energy results/cifar10/squeezenet1_1/snn/best.pt --cnn results/cifar10/squeezenet1_1/cnn/best.pt \
  --data "$DATA" --split val --samples 1000
