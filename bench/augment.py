"""What BackgroundSwap adds to a training step: small-cnn, batch 128, 28x28, CPU (or --device).

    python bench/augment.py [--steps 30] [--threads 2] [--json docs/bench/augment.json]

Times a training step (forward, backward, AdamW) and ``BackgroundSwap.batch`` for several family
mixes, interleaved, and prints what the augmentation adds to a step (the issue's budget: < 20%). Not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bgbias.core.sample import Sample
from bgbias.models.nets import create_arch
from bgbias.train.augment import BackgroundSwap

MIXES = {"color,mean,other_sample": {"color": 1, "mean": 1, "other_sample": 1},
         "texture (all six)": {"texture": 1},
         "color,texture,other,same,next": {"color": 1, "texture": 1, "other_sample": 1, "same_class": 1,
                                           "next_class": 1}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the summary the README reads (e.g. docs/bench/augment.json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    n, s = args.batch_size, args.size
    x = torch.rand(n, 3, s, s, generator=g).to(dev)
    m = (torch.rand(n, 1, s, s, generator=g) > 0.8).float().to(dev)
    y = torch.randint(10, (n,), generator=g).to(dev)
    model = create_arch("small-cnn", 10).to(dev)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)

    def step() -> float:
        t0 = time.perf_counter()
        loss = F.cross_entropy(model((x - 0.5) / 0.5), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def augment(aug: BackgroundSwap) -> float:
        t0 = time.perf_counter()
        aug.batch(x, m, y)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    samples = [Sample((x[i].permute(1, 2, 0).cpu() * 255).to(torch.uint8).numpy(), m[i, 0].cpu().numpy(), 0, str(i))
               for i in range(16)]
    augs = {name: BackgroundSwap(fams, p=0.8, seed=0).fit(samples) for name, fams in MIXES.items()}
    for _ in range(3):
        step(), [augment(a) for a in augs.values()]
    # interleaved, so load from other processes hits both sides alike; medians
    times: dict[str, list[float]] = {"step": [], **{k: [] for k in augs}}
    for _ in range(args.steps):
        times["step"].append(step())
        for name, aug in augs.items():
            times[name].append(augment(aug))
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(f"small-cnn training step, batch {n}, {s}x{s}, {args.device}, {args.threads} threads: "
          f"{1000 * med['step']:.1f} ms (median of {args.steps})")
    for name in augs:
        print(f"  BackgroundSwap({name}).batch: {1000 * med[name]:.2f} ms = "
              f"{100 * med[name] / med['step']:.1f}% of a step")
    if args.json:
        summary = {"command": "python bench/augment.py " + " ".join(sys.argv[1:]), "batch_size": n, "size": s,
                   "device": args.device, "threads": args.threads, "steps": args.steps,
                   "step_ms": round(1000 * med["step"], 2),
                   "share_of_step": {k: round(med[k] / med["step"], 4) for k in augs}}
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
