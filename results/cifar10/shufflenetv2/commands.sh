#!/usr/bin/env bash
# The exact commands behind results/cifar10/shufflenetv2/README.md, in order, with their wall times on the
# project's 2-core CPU VM (2026-12-03, session 7). DATA holds train/<class>/*.jpg, e.g. the shared
# CIFAR-10 training images:
#   mkdir -p data/cifar10 && tar -xzf ../shared/datasets/cifar10-jpeg-train.tar.gz -C data/cifar10
# 5,000 of the 50,000 training images (500 per class, split_seed 0) are held out for validation.
# ShuffleNetV2 x1.0 at width 0.81 (912,290 params; the paper's 911k). Runs are resumable (--resume).
set -euo pipefail
DATA=${DATA:-data/cifar10}
RUNS=${RUNS:-runs/cifar10/shufflenetv2}

# 1. The CNN: the unified recipe (configs/cnn_cifar10.yaml: SGD Nesterov lr 0.1, cosine, 1 warm-up
#    epoch, label smoothing 0.1, wd 5e-4, batch 128), 10 epochs (44 min 49 s; 205-220 s an epoch alone,
#    250-593 s for epochs 1-3, which shared the cores with tests and a 1-thread recipe run).
spikelite train -c configs/cnn_cifar10.yaml --data "$DATA" --out "$RUNS/cnn" --model shufflenetv2_x1_0 --width 0.81 \
  --epochs 10 --threads 2 --channels-last --save-every-steps 50

# 2. The SNN: that CNN converted (ReLU -> LIF, T=4, BatchNorm re-estimated on spikes; epoch-0 row) and
#    fine-tuned two epochs over all 45k images (configs/snn_finetune_cifar10.yaml: AdamW lr 1e-3, wd 0.05,
#    cosine, TET loss, atan surrogate) (51 min 42 s: epoch 1 1,897 s sharing the cores with a 1-thread MnasNet run and tests, epoch 2 1,058 s).
spikelite train -c configs/snn_finetune_cifar10.yaml --init-from "$RUNS/cnn/best.pt" --data "$DATA" \
  --out "$RUNS/snn" --epochs 2 --threads 2 --save-every-steps 25 --set data.eval_batch_size=64

# 3. Which units to prune: exact ablation and Taylor importance of the 16 units on 256 training
#    images (49 s, 1 thread). The four whose removal raises the loss least (ablation) are removed below.
spikelite prune "$RUNS/cnn/best.pt" --data "$DATA" --strategy importance --threads 1 -o "$RUNS/importance.json"

# 4. CNN-P: the CNN without stage4_unit1 (replaced by a strided 1x1 projection + ReLU), stage4_unit2,
#    stage4_unit3 and stage3_unit7 (706,336 params, −22.6 %; 40.20 % on 1,000 validation images before fine-tuning; 21 s), then 3 epochs at SGD lr 0.02, no warm-up (9 min 52 s; 186-194 s an epoch).
spikelite prune "$RUNS/cnn/best.pt" --data "$DATA" --strategy keep --remove stage4_unit1,stage4_unit2,stage3_unit7,stage4_unit3 \
  --finetune-epochs 0 --val-subset 1000 --threads 2 -o "$RUNS/cnn_p_pruned.pt"
spikelite train -c configs/cnn_cifar10.yaml --init-from "$RUNS/cnn_p_pruned.pt" --cnn --data "$DATA" --out "$RUNS/cnn-p" \
  --epochs 3 --lr 0.02 --warmup-epochs 0 --threads 2 --channels-last --save-every-steps 50

# 5. SNN-P: the CNN-P converted and fine-tuned one pass over 22,500 of the 45k images (stratified subset) (7 min 46 s; 407 s of training, alone).
spikelite train -c configs/snn_finetune_cifar10.yaml --init-from "$RUNS/cnn-p/best.pt" --data "$DATA" \
  --out "$RUNS/snn-p" --epochs 1 --train-subset 22500 --threads 2 --save-every-steps 25 --set data.eval_batch_size=64

# 6. The study's tables and report, all models (run from the repository root; see ../README.md):
#    spikelite bench results/cifar10/study.yaml --data-root cifar10="$DATA"

# 7. SNN-P, one more epoch over all 45k images, distilled from the CNN-P (2026-12-03, session 8, commit 5af74ec's
#    code; --distill-from, weight 0.5, temperature 2): 72.68 → 75.86 %. 14 min 44 s wall (828 s training, alone).
#    The study's SNN-P since session 8 (snn-p-kd-pass2/best.pt); then `spikelite bench results/cifar10/study.yaml`
#    re-measured that cell (47 s).
spikelite train -c configs/snn_finetune_cifar10.yaml --init-from results/cifar10/shufflenetv2/snn-p/best.pt --data "$DATA" \
  --out "$RUNS/snn-p-kd-pass2" --epochs 1 --seed 1 --threads 2 --save-every-steps 25 --set data.eval_batch_size=64 \
  --distill-from results/cifar10/shufflenetv2/cnn-p/best.pt

# 8. The undistilled twin of command 7 (same start, seed and data; session 8, alone): 72.68 → 74.72 %
#    (command 7: 75.86 %). 13 min 33 s wall (757 s training). Logs only (snn-p-pass2/).
spikelite train -c configs/snn_finetune_cifar10.yaml --init-from results/cifar10/shufflenetv2/snn-p/best.pt --data "$DATA" \
  --out "$RUNS/snn-p-pass2" --epochs 1 --seed 1 --threads 2 --save-every-steps 25 --set data.eval_batch_size=64

# --- The conversion route (session 16, 2026-12-06; code 2321e0b, 2 torch threads, alone on the CPU) ---
# 10. The convertible CNN: command 1's CNN with QCFS activations (L = 4, a learned λ per layer from the 99.9th
#     percentile of each ReLU output): 75.34 % before training, **79.30 %** after one epoch at lr 0.01 (cosine).
#     3 min 59 s wall. cnn-q/.
spikelite train --cnn -c configs/cnn_cifar10.yaml --data "$DATA" --init-from results/cifar10/shufflenetv2/cnn/best.pt \
  --model-opt act_levels=4 --model-opt act_threshold=1.0 --epochs 1 --lr 0.01 --warmup-epochs 0 --channels-last \
  --threads 2 --out "$RUNS/q4" --save-every-steps 100 --no-tensorboard
# 11. Its SNN, converted with no training: T = 4, bursts of 4: **79.28 %** on all 5,000 validation images, the QCFS
#     CNN's figure exactly (79.28 % in the same evaluation), against 76.52 % for the old route's SNN (2 SNN epochs)
#     and the paper's 40 %. 57 s. snn-q/.
spikelite convert "$RUNS/q4/best.pt" --out "$RUNS/snn-q.pt" --T 4 --burst 4 --check 5000 --check-T 4 --threads 2
# 12. Its energy against command 1's CNN: 0.2046 mJ (45nm-fp32) against 0.1434: 1.43x the CNN. The units' depthwise
#     convs feed the next 1x1 convs with analog values, MACs at every step (snn-q/energy.txt).
spikelite energy results/cifar10/shufflenetv2/snn-q/best.pt --samples 1000 --cnn results/cifar10/shufflenetv2/cnn/best.pt \
  --profile 45nm-fp32 --profile 45nm-fp32-mem --threads 2
