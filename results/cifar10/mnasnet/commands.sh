#!/usr/bin/env bash
# The exact commands behind results/cifar10/mnasnet/README.md, in order, with their wall times on the
# project's 2-core CPU VM (2026-12-02, session 5). DATA holds train/<class>/*.jpg, e.g. the shared
# CIFAR-10 training images:
#   mkdir -p data/cifar10 && tar -xzf ../shared/datasets/cifar10-jpeg-train.tar.gz -C data/cifar10
# 5,000 of the 50,000 training images (500 per class, split_seed 0) are held out for validation.
# MnasNet-B1 at width 0.12 (146.7k params; the paper's 151.8k). Runs are resumable (--resume).
set -euo pipefail
DATA=${DATA:-data/cifar10}
RUNS=${RUNS:-runs/cifar10/mnasnet}

# 1. The CNN: the unified recipe (configs/cnn_cifar10.yaml: SGD Nesterov lr 0.1, cosine, 1 warm-up
#    epoch, label smoothing 0.1, wd 5e-4, batch 128), 15 epochs (17 min 9 s; ~57 s an epoch).
spikelite train -c configs/cnn_cifar10.yaml --data "$DATA" --out "$RUNS/cnn" --model mnasnet_b1 --width 0.12 \
  --epochs 15 --threads 2 --channels-last --save-every-steps 50

# 2. The SNN: that CNN converted (ReLU -> LIF, T=4, BatchNorm re-estimated on spikes; epoch-0 row) and
#    fine-tuned two epochs over all 45k images (configs/snn_finetune_cifar10.yaml: AdamW lr 1e-3, wd 0.05,
#    cosine, TET loss, atan surrogate) (10 min 56 s; ~5 min an epoch).
spikelite train -c configs/snn_finetune_cifar10.yaml --init-from "$RUNS/cnn/best.pt" --data "$DATA" \
  --out "$RUNS/snn" --epochs 2 --threads 2 --save-every-steps 25 --set data.eval_batch_size=64

# 3. Which blocks to prune: exact ablation and Taylor importance of the 16 blocks on 256 training
#    images (12 s). The four whose removal raises the loss least (ablation) are removed below.
spikelite prune "$RUNS/cnn/best.pt" --data "$DATA" --strategy importance --threads 1 -o "$RUNS/importance.json"

# 4. CNN-P: the CNN without block10, block11, block14 and block15 (identities: stride-1 residual
#    blocks; 115,722 params, -21.1 %; 58.60 % on 1,000 validation images before fine-tuning; 8 s), then
#    5 epochs at SGD lr 0.02, no warm-up (4 min 34 s).
spikelite prune "$RUNS/cnn/best.pt" --data "$DATA" --strategy keep --remove block15,block11,block14,block10 \
  --finetune-epochs 0 --val-subset 1000 --threads 2 -o "$RUNS/cnn_p_pruned.pt"
spikelite train -c configs/cnn_cifar10.yaml --init-from "$RUNS/cnn_p_pruned.pt" --cnn --data "$DATA" --out "$RUNS/cnn-p" \
  --epochs 5 --lr 0.02 --warmup-epochs 0 --threads 2 --channels-last --save-every-steps 50

# 5. SNN-P: the CNN-P converted and fine-tuned two epochs over all 45k images (8 min 45 s).
spikelite train -c configs/snn_finetune_cifar10.yaml --init-from "$RUNS/cnn-p/best.pt" --data "$DATA" \
  --out "$RUNS/snn-p" --epochs 2 --threads 2 --save-every-steps 25 --set data.eval_batch_size=64

# 6. SNN, a second fine-tuning pass: two more epochs from the SNN of step 2 (seed 1) (12 min 56 s; the first epoch
#    shared the CPU with test runs).
spikelite train -c configs/snn_finetune_cifar10.yaml --init-from "$RUNS/snn/best.pt" --data "$DATA" \
  --out "$RUNS/snn-pass2" --epochs 2 --seed 1 --threads 2 --save-every-steps 25 --set data.eval_batch_size=64

# 7. SNN, a third fine-tuning pass (2026-12-03, session 6): three more epochs from the committed SNN of step 6
#    (seed 2). 28 min 30 s of running (2,158 s wall, of which 448 s paused with SIGSTOP while the speed
#    benchmark had the CPU); its first epoch shared the cores with 1-thread recipe-screen runs, the third
#    ran alone: 351 s.
spikelite train -c configs/snn_finetune_cifar10.yaml --init-from results/cifar10/mnasnet/snn-pass2/best.pt \
  --data "$DATA" --out "$RUNS/snn-pass3" --epochs 3 --seed 2 --threads 2 --save-every-steps 25 \
  --set data.eval_batch_size=64

# 8. SNN-P, a second fine-tuning pass (session 6): two more epochs from the SNN-P of step 5 (seed 1):
#    16 min 22 s (347 s, then 594 s while the test suite shared the CPU).
spikelite train -c configs/snn_finetune_cifar10.yaml --init-from results/cifar10/mnasnet/snn-p/best.pt \
  --data "$DATA" --out "$RUNS/snn-p-pass2" --epochs 2 --seed 1 --threads 2 --save-every-steps 25 \
  --set data.eval_batch_size=64

# 9. The study's tables and report, all models (run from the repository root; see ../README.md):
#    spikelite bench results/cifar10/study.yaml --data-root cifar10="$DATA"

# 10. Distillation, a control pair (2026-12-03, session 8, commit 5af74ec's code, alone on the CPU, one after the
#     other): one more epoch from the study's SNN (64.84 %), seed 5, without and with --distill-from the CNN
#     (weight 0.5, temperature 2). Without: 64.86 % (6 min 58 s wall, 389 s training); with: 65.00 % (6 min 48 s,
#     380 s). Neither replaces the study's SNN (docs/recipe.md "Distillation from the CNN at full size").
for kd in plain kd; do
  extra=()
  [ "$kd" = kd ] && extra=(--distill-from results/cifar10/mnasnet/cnn/best.pt)
  spikelite train -c configs/snn_finetune_cifar10.yaml --init-from results/cifar10/mnasnet/snn-pass3/best.pt \
    --data "$DATA" --out "$RUNS/snn-pass4-$kd" --epochs 1 --seed 5 --threads 2 --save-every-steps 25 \
    --set data.eval_batch_size=64 "${extra[@]}"
done

# --- The conversion route (session 16, 2026-12-06): CNNs trained to be converted, SNNs with no SNN training ---
# Trained with the code of commits 5772a63 (the runs started before the restructure of #27; same arithmetic),
# converted at ae0701b+, 1 torch thread each, two to four processes sharing the 2 cores.
# 11. A longer CNN: the unified recipe, 50 epochs from scratch: 80.40 % at epoch 48 (80.38 % at 50), against
#     75.02 % in 15 epochs (command 1). 59 min 33 s wall (36-308 s an epoch: the cores were shared). cnn-50ep/.
spikelite train -c configs/cnn_cifar10.yaml --data "$DATA" --model mnasnet_b1 --width 0.12 \
  --epochs 50 --threads 1 --channels-last --out "$RUNS/cnn50" --save-every-steps 100 --no-tensorboard
# 12. Its QCFS CNN with L = 8 levels (a learned λ per layer, from the 99.9th percentile of each ReLU output):
#     69.90 % before training, 78.16 % after 5 epochs at lr 0.01 (cosine; best epoch 4). 9 min 4 s. cnn-q8/.
#     (L = 4, the SqueezeNet setting, lost too much here: 50.16 % before training, 69.90 % after 2 epochs;
#     stopped.)
spikelite train --cnn -c configs/cnn_cifar10.yaml --data "$DATA" --init-from "$RUNS/cnn50/best.pt" \
  --model-opt act_levels=8 --model-opt act_threshold=1.0 --epochs 5 --lr 0.01 --warmup-epochs 0 --channels-last \
  --threads 1 --out "$RUNS/q8" --no-tensorboard
# 13. 5 more epochs at lr 0.005: 78.36 % (best epoch 4; 78.10 % at 5). 9 min 11 s. cnn-q8-pass2/ (the study's cnn-q).
spikelite train --cnn -c configs/cnn_cifar10.yaml --data "$DATA" --init-from "$RUNS/q8/best.pt" \
  --epochs 5 --lr 0.005 --warmup-epochs 0 --channels-last --threads 1 --out "$RUNS/q8-pass2" --no-tensorboard
# 14. Its SNN, converted with no training: ConversionIF neurons, T = 4, rate 2 (up to 2 spikes per step on average,
#     thresholds λ/2) and bursts of up to 8, so 4 steps carry the QCFS CNN's 8 levels: 78.38 % on all 5,000
#     validation images (the QCFS CNN: 78.36 %; +0.02 from rounding ties). 35 s. snn-q8/ (the study's snn).
spikelite convert "$RUNS/q8-pass2/best.pt" --out "$RUNS/snn-q8.pt" --T 4 --burst 8 --rate 2 --check 5000 --check-T 4 --threads 1
# 15. Its energy on 1,000 seeded validation images against the 50-epoch CNN (33 s): 1.384M ACs and 3.377M MACs per
#     image, 0.01678 mJ (45nm-fp32) against the CNN's 0.00911 mJ: this SNN costs 1.84x its CNN. MnasNet's linear
#     bottlenecks feed the next 1x1 convs with non-spikes, which stay MACs, 4 times over (snn-q8/energy.txt).
spikelite energy results/cifar10/mnasnet/snn-q8/best.pt --samples 1000 --cnn results/cifar10/mnasnet/cnn-50ep/best.pt \
  --profile 45nm-fp32 --profile 45nm-fp32-mem --threads 1
