#!/usr/bin/env bash
# The convertible-CNN recipe (QCFS L = 4, learned λ) against the ReLU CNN it starts from: one epoch over the same
# 2,560 CIFAR-10 training images each, fresh processes, rotated rounds; the QCFS activation eager
# (SPIKELITE_NATIVE=0) and native (spikelite_native::qcfs_forward/backward). Prints epoch, val_acc,
# epoch_seconds, compute_seconds and images/s per run. Run from the repository root:
#   DATA=/path/to/cifar10 bash benchmarks/qcfs_epoch.sh
set -euo pipefail
DATA=${DATA:?set DATA to a folder holding train/<class>/*.jpg}
S=${SPIKELITE:-spikelite}
base="--cnn -c configs/cnn_cifar10.yaml --data $DATA --init-from results/cifar10/squeezenet1_1/cnn-20ep/best.pt --epochs 1 --train-subset 2560 --lr 0.01 --warmup-epochs 0 --threads 2 --no-tensorboard --val-subset 500"
q="--model-opt act_levels=4 --model-opt act_threshold=1.0"
fail() { echo "qcfs_epoch.sh: the $v run failed; the end of its log ($out.log):" >&2; tail -3 "$out.log" >&2; exit 1; }
for r in 1 2; do
  for v in relu eager native; do
    out="${TMPDIR:-/tmp}/ab_$v"
    rm -rf "$out" "$out.log"
    case $v in
      relu) $S train $base --out "$out" >"$out.log" 2>&1 || fail ;;
      eager) SPIKELITE_NATIVE=0 $S train $base $q --out "$out" >"$out.log" 2>&1 || fail ;;
      native) $S train $base $q --out "$out" >"$out.log" 2>&1 || fail ;;
    esac
    echo "round $r $v $(tail -1 "$out/log.csv" | cut -d, -f1,7,9,11,14)"
  done
done
