#!/usr/bin/env bash
# The exact commands behind results/tinyimagenet/mnasnet, in order (issue 26). DATA holds train/<wnid>/*.JPEG (see
# ../squeezenet1_1/commands.sh for how to unpack the shared images). Every run keeps 10,000 of the 100,000 training
# images (50 per class, split_seed 0) for validation. MnasNet-B1 at width 0.12, the study's width (the paper's
# CIFAR-10 parameter budget, docs/models.md), with the zoo's 64 px rule (stride-2 stem): 390k parameters at 200
# classes (most in the 40 -> 1280 head and the 1280 -> 200 classifier), 2.2 M MACs per image.
# Session 20 (2026-12-06), code 07dc6a7 (training and conversion unchanged since), the 2-core Zen 4 VM, torch 2.14.1,
# one thread each, beside a one-thread SqueezeNet run.
set -euo pipefail
DATA=${DATA:-data/tinyimagenet}
RUNS=${RUNS:-runs/tinyimagenet}

# 1. The CNN: the unified recipe (configs/cnn_tinyimagenet.yaml: SGD Nesterov lr 0.1, cosine, 1 warm-up epoch, label
#    smoothing 0.1, wd 5e-4, batch 128, flip + 8 px crop), 30 epochs, 2,639 s in all (84-98 s an epoch, ~920
#    images/s). Validation: 3.28 % after epoch 1, 12.00 (6), 11.87 (11), 22.06 (16), 28.46 (21), 33.27 (26),
#    **34.90 %** (30; macro-F1 0.334). Train accuracy 37.2 % (augmented images), close to validation: the model underfits.
#    cnn/ (log.csv, train.log).
spikelite train -c configs/cnn_tinyimagenet.yaml --data "$DATA" --out "$RUNS/mnas" --model mnasnet_b1 --width 0.12 \
  --epochs 30 --threads 1 --channels-last --save-every-steps 100 --no-tensorboard

# 2. The convertible CNN: QCFS L = 8 (learned λ per layer, starting at the 99.9th percentile of each ReLU's output),
#    16 epochs at lr 0.05 (cosine, no warm-up), 1,535 s: 18.55 % before training, 14.69, 22.44, ... 33.61, 34.20,
#    **34.38 %** (epoch 15, best.pt), 34.36 (16). cnn-q/.
spikelite train --cnn -c configs/cnn_tinyimagenet.yaml --data "$DATA" --init-from "$RUNS/mnas/best.pt" \
  --model-opt act_levels=8 --model-opt act_threshold=1.0 --epochs 16 --lr 0.05 --warmup-epochs 0 --channels-last \
  --threads 1 --out "$RUNS/mnas-q8" --save-every-steps 100 --no-tensorboard

# 3. Its SNN, converted with no training: T = 4, rate 2, bursts of 8 (a QCFS CNN with 2 x 4 = 8 levels converts
#    exactly at T = 4): **34.37 %** on all 10,000 validation images against the QCFS CNN's 34.38 % in the same check
#    (39 s). Below the paper's Tiny ImageNet MnasNet SNN (38 %). snn/ (convert.log).
spikelite convert "$RUNS/mnas-q8/best.pt" --out "$RUNS/mnas-snn.pt" --T 4 --burst 8 --rate 2 --check 10000 \
  --check-T 4 --threads 1
# 3b. Its energy on 1,000 seeded validation images against command 1's CNN (38 s): 1.80 M ACs + 4.35 M MACs per
#     image (the layers after MnasNet's linear bottlenecks take non-binary input), 58.2 % firing: 0.0216 mJ
#     (45nm-fp32) against the CNN's 0.0102, 0.47x (the SNN spends more); the paper's MnasNet SNN 0.2486 mJ.
#     snn/energy.txt.
spikelite energy results/tinyimagenet/mnasnet/snn/best.pt --samples 1000 --cnn results/tinyimagenet/mnasnet/cnn/best.pt \
  --profile 45nm-fp32 --profile 45nm-fp32-mem --threads 1

# --- MnasNet-B1 at width 0.35: a wider MnasNet, stated as such (session 22, 2026-12-06, code ef11327, the 2-core
# Zen 4 VM, torch 2.14.1, one thread each beside a one-thread SqueezeNet run). The x0.12 network above underfits
# (train accuracy ~ validation); at x0.35 it has 763k parameters at 200 classes (the 1280-wide head stays), about
# twice the x0.12 network's, and costs 116-125 s an epoch on one thread against 84-98 s. Folders x0.35/.

# 4. The CNN: the unified recipe, 18 epochs, 2,240 s. Validation: 3.51 % after epoch 1, 16.58 (6), 25.97 (11),
#    32.77 (14), 35.82 (16), **37.03 %** (18; macro-F1 0.357); train accuracy 39.8 %. x0.35/cnn/.
spikelite train -c configs/cnn_tinyimagenet.yaml --data "$DATA" --out "$RUNS/mnas35" --model mnasnet_b1 --width 0.35 \
  --epochs 18 --threads 1 --channels-last --save-every-steps 100 --state-dtype bfloat16 --no-tensorboard

# 5. Its convertible CNN: QCFS L = 16 (learned λ), 9 more epochs at lr 0.03 (cosine, no warm-up): the QCFS phase
#    doubles as the CNN's continued training. 1,248 s (128-140 s an epoch). 32.41 % before training, then 5.90,
#    27.28, 30.41, 30.79, 32.36, 34.06, 37.76, 38.47, **38.60 %** (epoch 9; macro-F1 0.374; train accuracy 43.0 %).
#    (A first QCFS run at lr 0.01 for 4 epochs was stopped at its first step: the CNN it starts from is below 38 %.)
#    x0.35/cnn-q/.
spikelite train --cnn -c configs/cnn_tinyimagenet.yaml --data "$DATA" --init-from "$RUNS/mnas35/best.pt" \
  --model-opt act_levels=16 --model-opt act_threshold=1.0 --epochs 9 --lr 0.03 --warmup-epochs 0 --channels-last \
  --threads 1 --out "$RUNS/mnas35-q16" --save-every-steps 100 --state-dtype bfloat16 --no-tensorboard

# 6. Its SNN, converted with no training: T = 4, rate 4 (thresholds λ/4), bursts of up to 16 (4 x 4 = 16 levels, so
#    the conversion of an L = 16 QCFS CNN is exact at T = 4): **38.61 %** on all 10,000 validation images against the
#    QCFS CNN's 38.60 % in the same check (49 s): above the paper's 38 %. x0.35/snn/ (convert.log).
spikelite convert "$RUNS/mnas35-q16/best.pt" --out "$RUNS/mnas35-snn.pt" --T 4 --burst 16 --rate 4 --check 10000 \
  --check-T 4 --threads 1
# 6b. Its energy on 1,000 seeded validation images against command 4's CNN (36 s, one thread beside two training
#     runs): 4.11 M ACs + 9.46 M MACs per image, 62.5 % firing: 0.0472 mJ (45nm-fp32) against the CNN's 0.0228,
#     0.48x (the SNN spends more, as at x0.12: the layers after the linear bottlenecks read non-binary input);
#     the paper's MnasNet SNN 0.2486 mJ. x0.35/snn/energy.txt.
spikelite energy results/tinyimagenet/mnasnet/x0.35/snn/best.pt --samples 1000 \
  --cnn results/tinyimagenet/mnasnet/x0.35/cnn/best.pt --profile 45nm-fp32 --profile 45nm-fp32-mem --threads 1
