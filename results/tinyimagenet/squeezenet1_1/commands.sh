#!/usr/bin/env bash
# The exact commands behind results/tinyimagenet/squeezenet1_1, in order (issue 26). DATA holds train/<wnid>/*.JPEG,
# e.g. the shared Tiny ImageNet training images with their class names beside them:
#   mkdir -p data/tinyimagenet && tar -xzf ../shared/datasets/tinyimagenet-train.tar.gz -C data/tinyimagenet
#   cp ../shared/datasets/tinyimagenet-classes.tsv data/tinyimagenet/
# Every run keeps 10,000 of the 100,000 training images (50 per class, split_seed 0) for validation.
set -euo pipefail
DATA=${DATA:-data/tinyimagenet}
RUNS=${RUNS:-runs/tinyimagenet}

# 1. The CNN (session 18, 2026-12-06, code 46950f6-6c58bfe: the CNN path unchanged): the unified recipe
#    (configs/cnn_tinyimagenet.yaml: SGD Nesterov lr 0.1, cosine over 14 epochs, 1 warm-up epoch, label smoothing
#    0.1, wd 5e-4, batch 128, flip + 8 px crop; the zoo's 64 px rule: stem conv stride 2, so the fire modules see
#    32x32 maps as on CIFAR-10; 95 M MACs per image), average pooling (the SNN's pooling), NHWC.
#    Alone on the 2 cores an epoch takes 528 s (170 images/s, 704 steps) plus 14 s of validation; it shared them
#    with the session's benchmarks and tests and was paused (SIGSTOP) while those were timed.
#    Validation after each epoch: 4.90, 12.24, 10.46, 11.60, 21.38 % (wip/log.csv; epochs 2-4 shared the cores;
#    epoch 5 took 1,030 s). wip/last.pt is the state at the end of epoch 5 (step 3,520 of 9,856). Not finished in session 18: its resumable state
#    is committed as wip/last.pt (the SGD momentum stored as bfloat16 to stay under 5 MB; torch casts it back to
#    float32 on load, so the resumed run differs from an uninterrupted one by that rounding only). To continue:
#      mkdir -p "$RUNS/cnn" && cp results/tinyimagenet/squeezenet1_1/wip/last.pt "$RUNS/cnn/"
#      spikelite train --data "$DATA" --out "$RUNS/cnn" --resume --threads 2   # the recipe comes from last.pt
spikelite train -c configs/cnn_tinyimagenet.yaml --data "$DATA" --out "$RUNS/cnn" --epochs 14 \
  --model-opt pool=avg --channels-last --threads 2 --save-every-steps 100 --no-tensorboard
