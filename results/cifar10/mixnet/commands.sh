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
#    stay sigmoid), 40 epochs of the unified recipe from scratch. Stopped for CPU time after epoch 3 (36.50 %; 139-277 s
#    an epoch on one shared thread), resumed alone with 2 threads (--threads 2; 44-51 s an epoch) and stopped again
#    at the end of epoch 32 of 40 for the session's end: 73.42 % (the ReLU CNN so far; the SiLU CNN of command 1:
#    71.42 % in 15 epochs). Its resumable last.pt (end of epoch 32) is wip/ (0.9 MB).
#    Resume it where it stopped:
#      mkdir -p "$RUNS/relu40" && cp results/cifar10/mixnet/wip/{last.pt,log.csv,config.yaml} "$RUNS/relu40/"
spikelite train -c configs/cnn_cifar10.yaml --data "$DATA" --model mixnet_s --width 0.05 --model-opt act=relu \
  --epochs 40 --threads 1 --channels-last --out "$RUNS/relu40" --save-every-steps 100 --no-tensorboard --resume
