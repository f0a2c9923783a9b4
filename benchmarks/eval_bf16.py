"""Evaluation under bfloat16 autocast on the CPU, against float32, for CNN and SNN checkpoints.

Each checkpoint's inference copy (BatchNorm folded, NHWC) is evaluated on every 5th validation image, twice
per precision (alternating): images per second and accuracy.

    python benchmarks/eval_bf16.py CKPT [CKPT ...] --data DIR --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from spikelite.allocator import retain_freed_memory
from spikelite.checkpoint import checkpoint_data, load_model
from spikelite.snn import inference_model
from spikelite.train.metrics import evaluate


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    for ck in args.checkpoints:
        model, meta = load_model(ck)
        data, _ = checkpoint_data(meta, ck, "val", data_root=args.data)
        data = data.subset(torch.arange(0, len(data), 5))
        fast = inference_model(model, channels_last=True)
        for bf16 in (False, True, False, True):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                evaluate(fast, data.subset(torch.arange(100)), batch_size=500)
                t0 = time.perf_counter()
                res = evaluate(fast, data, batch_size=500)
                dt = time.perf_counter() - t0
            print(f"{ck}  {'bf16' if bf16 else 'fp32'}  {len(data) / dt:7.1f} images/s  accuracy {res['accuracy']:.4f}",
                  flush=True)


if __name__ == "__main__":
    main()
