#!/usr/bin/env bash
# The exact commands behind results/cifar10/xception/README.md, in order, with their wall times on the
# project's 2-core CPU VM (2026-12-03, session 10). DATA holds
# train/<class>/*.jpg, e.g. the shared CIFAR-10 training images:
#   mkdir -p data/cifar10 && tar -xzf ../shared/datasets/cifar10-jpeg-train.tar.gz -C data/cifar10
# 5,000 of the 50,000 training images (500 per class, split_seed 0) are held out for validation.
# xception_mini at width 1.02 (1,033,210 params; the paper's 1,025.0k). Runs are resumable (--resume).
set -euo pipefail
DATA=${DATA:-data/cifar10}
RUNS=${RUNS:-runs/cifar10/xception}

# 1. The CNN: the unified recipe (configs/cnn_cifar10.yaml: SGD Nesterov lr 0.1, cosine, 1 warm-up
#    epoch, label smoothing 0.1, wd 5e-4, batch 128), 5 epochs (61 min 28 s wall, 3,666 s training; epochs 743, 1,551, 448, 424, 432 s: the first two shared the
#    cores with a CI run of the test suite).
spikelite train -c configs/cnn_cifar10.yaml --data "$DATA" --out "$RUNS/cnn" --model xception_mini --width 1.02 \
  --epochs 5 --threads 2 --channels-last --save-every-steps 50

# 2. Which blocks matter: exact ablation and Taylor importance of the 8 blocks on 256 training images
#    (50 s). No pruned pair was trained for Xception (no time left in the session); the ranking is
#    recorded in importance.md.
spikelite prune "$RUNS/cnn/best.pt" --data "$DATA" --strategy importance --threads 2 -o "$RUNS/importance.json"

# 3. The SNN: that CNN converted (ReLU -> LIF, T=4, BatchNorm re-estimated on spikes; epoch-0 row) and
#    fine-tuned one pass over a stratified 15k of the 45k training images (configs/snn_finetune_cifar10.yaml:
#    AdamW lr 1e-3, wd 0.05, cosine, TET loss, atan surrogate), distilled from the CNN it was converted from
#    (--distill-from source: weight 0.5, temperature 2) (14 min 38 s wall; the 118-step pass 718 s, 6.1 s a step).
spikelite train -c configs/snn_finetune_cifar10.yaml --init-from "$RUNS/cnn/best.pt" --data "$DATA" --out "$RUNS/snn" \
  --epochs 1 --train-subset 15000 --threads 2 --channels-last --save-every-steps 25 --distill-from source \
  --set data.eval_batch_size=64

# 4. The SNN, a second pass over the same 15k images (seed 1), still distilled from the CNN (the source
#    lineage: snn/best.pt -> cnn/best.pt) (13 min 3 s wall; 648 s for the pass). It ended at
#    72.58 %, as it started (F1 0.7244 against 0.7237): its best.pt is the input, so only its logs are committed
#    (snn-pass2/) and the study keeps snn/best.pt).
spikelite train -c configs/snn_finetune_cifar10.yaml --init-from "$RUNS/snn/best.pt" --data "$DATA" --out "$RUNS/snn-pass2" \
  --epochs 1 --train-subset 15000 --seed 1 --threads 2 --channels-last --save-every-steps 25 --distill-from source \
  --set data.eval_batch_size=64

# 5. The study's tables and report, all models (run from the repository root; see ../README.md):
#    spikelite bench results/cifar10/study.yaml --data-root cifar10="$DATA"

# --- The conversion route (session 16, 2026-12-06; code ae0701b+, 1 torch thread, sharing the 2 cores) ---
# 6. The convertible CNN: command 1's CNN with QCFS activations (L = 4, a learned λ per layer from the 99.9th
#    percentile of each ReLU output): 75.26 % before training, **75.68 %** after one epoch at lr 0.01 (cosine).
#    13 min 56 s wall. cnn-q/.
spikelite train --cnn -c configs/cnn_cifar10.yaml --data "$DATA" --init-from results/cifar10/xception/cnn/best.pt \
  --model-opt act_levels=4 --model-opt act_threshold=1.0 --epochs 1 --lr 0.01 --warmup-epochs 0 --channels-last \
  --threads 1 --out "$RUNS/q4" --save-every-steps 50 --no-tensorboard
# 7. Its SNN, converted with no training: T = 4, bursts of 4: **75.62 %** on all 5,000 validation images (the QCFS
#    CNN 75.70 % in the same evaluation; -0.08, 4 images), against 72.58 % (validation) for the old route's SNN and the
#    paper's 75 %. snn-q/.
spikelite convert "$RUNS/q4/best.pt" --out "$RUNS/snn-q.pt" --T 4 --burst 4 --check 5000 --check-T 4 --threads 1
# 8. Its energy on 1,000 seeded validation images against command 1's CNN: 9.79M ACs and 118.57M MACs per image,
#    0.5542 mJ (45nm-fp32) against the CNN's 0.2462: 2.25x the CNN (0.44x, as the old route's SNN): the separable
#    convs' pointwise layers read the depthwise layers' analog outputs, MACs at every step (snn-q/energy.txt).
spikelite energy results/cifar10/xception/snn-q/best.pt --samples 1000 --cnn results/cifar10/xception/cnn/best.pt \
  --profile 45nm-fp32 --profile 45nm-fp32-mem --threads 1
