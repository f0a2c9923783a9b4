#!/usr/bin/env bash
# The exact commands behind results/cifar10/mixnet/README.md, in order, with their wall times on the
# project's 2-core CPU VM (2026-12-02, session 5). DATA holds train/<class>/*.jpg, e.g. the shared
# CIFAR-10 training images:
#   mkdir -p data/cifar10 && tar -xzf ../shared/datasets/cifar10-jpeg-train.tar.gz -C data/cifar10
# 5,000 of the 50,000 training images (500 per class, split_seed 0) are held out for validation.
# MixNet-S at width 0.05 (85.6k params; the paper's 84.9k). Runs are resumable (--resume).
set -euo pipefail
DATA=${DATA:-data/cifar10}
RUNS=${RUNS:-runs/cifar10/mixnet}

# 1. The CNN: the unified recipe (configs/cnn_cifar10.yaml), 15 epochs (22 min 55 s; ~78 s an epoch).
spikelite train -c configs/cnn_cifar10.yaml --data "$DATA" --out "$RUNS/cnn" --model mixnet_s --width 0.05 \
  --epochs 15 --threads 2 --channels-last --save-every-steps 50

# 2. The SNN: that CNN converted (ReLU/SiLU -> LIF, T=4, BatchNorm re-estimated on spikes; epoch-0 row;
#    the squeeze-excitation sigmoid gates stay analog) and fine-tuned two epochs over all 45k images
#    (configs/snn_finetune_cifar10.yaml) (12 min 9 s; ~5 min 40 s an epoch).
spikelite train -c configs/snn_finetune_cifar10.yaml --init-from "$RUNS/cnn/best.pt" --data "$DATA" \
  --out "$RUNS/snn" --epochs 2 --threads 2 --save-every-steps 25 --set data.eval_batch_size=64

# 3. Which blocks to prune: exact ablation and Taylor importance of the 16 blocks on 256 training
#    images (11 s). The four whose removal raises the loss least (ablation) are removed below.
spikelite prune "$RUNS/cnn/best.pt" --data "$DATA" --strategy importance --threads 2 -o "$RUNS/importance.json"

# 4. CNN-P: the CNN without block10, block11, block13 and block16 (identities; 71,638 params, -16.3 %;
#    65.70 % on 1,000 validation images before fine-tuning; 10 s), then 5 epochs at SGD lr 0.02 (5 min 56 s).
spikelite prune "$RUNS/cnn/best.pt" --data "$DATA" --strategy keep --remove block13,block11,block16,block10 \
  --finetune-epochs 0 --val-subset 1000 --threads 2 -o "$RUNS/cnn_p_pruned.pt"
spikelite train -c configs/cnn_cifar10.yaml --init-from "$RUNS/cnn_p_pruned.pt" --cnn --data "$DATA" --out "$RUNS/cnn-p" \
  --epochs 5 --lr 0.02 --warmup-epochs 0 --threads 2 --channels-last --save-every-steps 50

# 5. SNN-P: the CNN-P converted and fine-tuned two epochs over all 45k images (13 min 36 s; the second
#    epoch shared the CPU with test runs).
spikelite train -c configs/snn_finetune_cifar10.yaml --init-from "$RUNS/cnn-p/best.pt" --data "$DATA" \
  --out "$RUNS/snn-p" --epochs 2 --threads 2 --save-every-steps 25 --set data.eval_batch_size=64

# 6. SNN, a second fine-tuning pass (2026-12-03, session 6): three more epochs from the committed SNN of step 2
#    (seed 1), alone on the CPU: 23 min 34 s (434-456 s per epoch).
spikelite train -c configs/snn_finetune_cifar10.yaml --init-from results/cifar10/mixnet/snn/best.pt \
  --data "$DATA" --out "$RUNS/snn-pass2" --epochs 3 --seed 1 --threads 2 --save-every-steps 25 \
  --set data.eval_batch_size=64

# 7. SNN-P, a second fine-tuning pass (session 6): two more epochs from the SNN-P of step 5 (seed 1):
#    23 min 3 s (the first epoch shared the CPU with the test suite, the second ran alone: 396 s).
spikelite train -c configs/snn_finetune_cifar10.yaml --init-from results/cifar10/mixnet/snn-p/best.pt \
  --data "$DATA" --out "$RUNS/snn-p-pass2" --epochs 2 --seed 1 --threads 2 --save-every-steps 25 \
  --set data.eval_batch_size=64

# 8. The study's tables and report, all models (run from the repository root; see ../README.md):
#    spikelite bench results/cifar10/study.yaml --data-root cifar10="$DATA"

# --- The conversion route (session 16, 2026-12-06), in progress ---
# 9. MixNet's ReLU variant (act=relu: a convertible CNN needs ReLU/QCFS activations; the squeeze-excitation gates
#    stay sigmoid), 40 epochs of the unified recipe from scratch, over sessions 16-17: stopped for CPU time after
#    epoch 3 and again after epoch 32 (73.42 %), resumed each time with --resume (the command below); 1-2 threads,
#    44-57 s an epoch alone with 2 threads, 139-277 s on one shared thread. Best 75.14 % at epoch 37 (74.72 % at 40),
#    against 71.42 % for the SiLU CNN of command 1 (15 epochs). cnn-relu40/ (best.pt, log.csv, config.yaml).
spikelite train -c configs/cnn_cifar10.yaml --data "$DATA" --model mixnet_s --width 0.05 --model-opt act=relu \
  --epochs 40 --threads 1 --channels-last --out "$RUNS/relu40" --save-every-steps 100 --no-tensorboard --resume
# 10. Session 17 (2026-12-06, code b3034fa: act_levels keeps the SE gates sigmoid). Its QCFS CNN with L = 8:
#     67.36 % before training, 72.44 % after 5 epochs at lr 0.01 (cosine); 15 min 29 s wall (148-241 s an epoch,
#     one thread shared with two other jobs). Converted at T = 4 (rate 2, bursts of 8): 70.96 % (-1.48: the SE gate
#     multiplies each step's spikes by a gate computed from that step's spikes, not from their mean, so the
#     conversion is not exact through squeeze-excitation). One SNN fine-tuning epoch from there (AdamW lr 5e-4,
#     distilled from command 9's CNN, BatchNorm statistics kept) made it worse: 69.02 % (1,118 s). Not kept.
spikelite train --cnn -c configs/cnn_cifar10.yaml --data "$DATA" --init-from "$RUNS/relu40/best.pt" \
  --model-opt act_levels=8 --model-opt act_threshold=1.0 --epochs 5 --lr 0.01 --warmup-epochs 0 --channels-last \
  --threads 1 --out "$RUNS/q8" --no-tensorboard
spikelite convert "$RUNS/q8/best.pt" --out "$RUNS/snn-q8.pt" --T 4 --burst 8 --rate 2 --check 5000 --check-T 4 --threads 1
# 11. L = 16 instead: 73.38 % before training, **74.30 %** after 4 epochs at lr 0.01 (74.24 % at 5; cosine); 14 min 0 s
#     wall (139-172 s an epoch, one shared thread). cnn-q16/ (the study's cnn-q).
spikelite train --cnn -c configs/cnn_cifar10.yaml --data "$DATA" --init-from "$RUNS/relu40/best.pt" \
  --model-opt act_levels=16 --model-opt act_threshold=1.0 --epochs 5 --lr 0.01 --warmup-epochs 0 --channels-last \
  --threads 1 --out "$RUNS/q16" --no-tensorboard
# 12. Its SNN, converted with no training: T = 4, rate 4 (up to 4 spikes per step on average, thresholds λ/4), bursts
#     of up to 16: **74.22 %** on all 5,000 validation images (the QCFS CNN: 74.30 %; -0.08: with 4 levels in each
#     step, each step's spikes are close to the activation itself, and so is the SE gate). 52 s (34 s the check).
#     snn-q16/ (the study's snn; convert.log the check's output).
spikelite convert "$RUNS/q16/best.pt" --out "$RUNS/snn-q16.pt" --T 4 --burst 16 --rate 4 --check 5000 --check-T 4 --threads 1
# 13. Its energy on 1,000 seeded validation images against command 9's CNN (code beaa5b2: average pools of spikes
#     fold into the next layer): 1.717M ACs and 2.704M MACs per image (the depthwise blocks' linear projections feed
#     the next 1x1 convs with non-spikes, and the SE paths), 65.7 % of spike slots used (4 per step): 0.01398 mJ
#     (45nm-fp32) against the CNN's 0.00739 mJ: this SNN costs 1.89x its CNN (paper's MixNet SNN: 0.0093 mJ).
#     snn-q16/energy.txt.
spikelite energy results/cifar10/mixnet/snn-q16/best.pt --samples 1000 --cnn results/cifar10/mixnet/cnn-relu40/best.pt \
  --profile 45nm-fp32 --profile 45nm-fp32-mem --threads 1
