"""Benchmark: bgbias challenge vs the plain exhaustive loop with early exit (how the published evaluation works).

Run: ``python bench/challenge.py [--per-class 40] [--steps 300] [--repeats 3]``.

Data: scikit-learn digits (white strokes, 32 px) on class-coloured backgrounds
whose colour strength varies per image; a small CNN trained a few hundred
steps on them leans on the background, so most foregrounds are fooled, but
only by the few strongly coloured backgrounds of another class. Baselines,
same model, same data, same compositing:

- ``pairwise``: for each foreground, backgrounds one by one in the fixed
  (folder) order, stop at the first wrong prediction;
- ``batched``: for each foreground, backgrounds in fixed order in batches of
  ``--batch`` per forward pass, stop after the first batch with a wrong one
  (the MadryLab backgrounds_challenge loop).

Verdicts of all three must be identical (asserted). Prints image forwards and
wall time (median of ``--repeats``) and the speed-ups.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bgbias.audit.challenge import ChallengeConfig, run_challenge
from bgbias.core.compose import compose
from bgbias.core.io import read_image, read_mask, write_npy, write_png
from bgbias.core.layout import class_dirname, find_mask, list_items
from bgbias.core.seeding import numpy_rng, torch_generator
from bgbias.models.load import LoadedModel
from bgbias.models.nets import SmallCNN

HUES = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                 [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [0, 128, 128]], dtype=np.float32)


def make_images(n_per_class: int, seed: int, split: str, rho: float = 1.0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [N,32,32,3], masks float32 [N,32,32], labels [N], backgrounds uint8 [N,32,32,3]).

    The background hue is the class's with probability ``rho``, else a random class's.
    """
    import cv2
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = numpy_rng(seed, "bench-digits", split)
    imgs, masks, labels, bgs = [], [], [], []
    for c in range(10):
        pool = np.flatnonzero(digits.target == c)
        for i in rng.choice(pool, n_per_class, replace=len(pool) < n_per_class):
            d = cv2.resize(digits.images[i] / 16.0, (24, 24), interpolation=cv2.INTER_LINEAR)
            m = np.zeros((32, 32), np.float32)
            m[4:28, 4:28] = (d > 0.35).astype(np.float32)
            strength = rng.uniform(0.0, 1.0) ** 3            # few backgrounds are strongly coloured
            hue = HUES[c] if rng.uniform() < rho else HUES[rng.integers(0, 10)]
            base = strength * hue + (1 - strength) * 128.0
            bg = np.clip(base + rng.normal(0, 12, (32, 32, 3)), 0, 255).astype(np.uint8)
            fg = np.full((32, 32, 3), 235, np.uint8)
            imgs.append(np.where(m[:, :, None] > 0, fg, bg))
            masks.append(m)
            labels.append(c)
            bgs.append(bg)
    return np.stack(imgs), np.stack(masks), np.array(labels), np.stack(bgs)


def train(steps: int, seed: int, rho: float) -> torch.nn.Module:
    """A small CNN trained on digits whose background colour matches the class with probability ``rho``."""
    x, _, y, _ = make_images(60, seed, "train", rho)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    yt = torch.from_numpy(y)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = SmallCNN(num_classes=10, width=8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch_generator(seed, "bench-train")
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def write_data(root: Path, per_class: int, seed: int) -> None:
    imgs, masks, labels, bgs = make_images(per_class, seed, "test")
    for i, (img, m, c, bg) in enumerate(zip(imgs, masks, labels, bgs)):
        cdir = class_dirname(int(c), str(c), 10)
        write_png(root / "original" / "val" / cdir / f"t{i:05d}.png", img)
        write_png(root / "only_bg_t" / "val" / cdir / f"t{i:05d}.png", bg)
        write_npy(root / "fg_mask" / "val" / cdir / f"t{i:05d}.npy", m)


@torch.no_grad()
def baseline(root: Path, net: torch.nn.Module, batch: int) -> tuple[dict[str, bool], int]:
    """Fixed order, early exit per foreground, ``batch`` backgrounds per forward pass."""
    t = lambda a: torch.from_numpy(np.array(a)).permute(2, 0, 1).float() / 255  # noqa: E731
    bgs = torch.stack([t(read_image(b.path)) for b in list_items(root, "only_bg_t")])
    verdict, forwards = {}, 0
    for it in list_items(root, "original"):
        img, m = t(read_image(it.path)), torch.from_numpy(read_mask(find_mask(root, it)))
        verdict[it.id] = False
        for j in range(0, len(bgs), batch):
            x = compose(img[None], bgs[j:j + batch], m[None])
            forwards += len(x)
            if (net(x).argmax(1) != it.label).any():
                verdict[it.id] = True
                break
    return verdict, forwards


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rho", type=float, default=0.95, help="train-time background/class correlation")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    net = train(args.steps, args.seed, args.rho)
    print(f"trained small-cnn for {args.steps} steps in {time.time() - t0:.1f}s")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_data(root, args.per_class, args.seed)
        runs: dict[str, list[float]] = {"pairwise": [], "batched": [], "bgbias": []}
        fw: dict[str, int] = {}
        verdicts: dict[str, dict] = {}
        for _ in range(args.repeats):
            for name, b in (("pairwise", 1), ("batched", args.batch)):
                t = time.perf_counter()
                verdicts[name], fw[name] = baseline(root, net, b)
                runs[name].append(time.perf_counter() - t)
            t = time.perf_counter()
            cfg = ChallengeConfig(model="bench:small-cnn", data=str(root), batch_size=args.batch, device="cpu",
                                  progress=False, top_k=0)
            r = run_challenge(cfg, loaded=LoadedModel(net, "bench:small-cnn"))
            runs["bgbias"].append(time.perf_counter() - t)
            fw["bgbias"] = r["forwards"]
            fooled = {f["id"] for f in r["fooled"]}
            verdicts["bgbias"] = {k: k in fooled for k in verdicts["pairwise"]}
        assert verdicts["bgbias"] == verdicts["pairwise"] == verdicts["batched"], "verdicts differ"
        n = len(verdicts["pairwise"])
        print(f"{n} foregrounds x {r['n_backgrounds']} backgrounds; challenge accuracy "
              f"{100 * r['challenge_accuracy']:.1f}% (clean {100 * r['clean_accuracy']:.1f}%); "
              f"verdicts identical: yes; exhaustive (no early exit) = {r['exhaustive_forwards']} forwards")
        print(f"{'method':<10} {'image forwards':>15} {'median wall s':>14}")
        for name in runs:
            print(f"{name:<10} {fw[name]:>15} {statistics.median(runs[name]):>14.2f}")
        ours = statistics.median(runs["bgbias"])
        for name in ("pairwise", "batched"):
            print(f"bgbias vs {name}: {fw[name] / fw['bgbias']:.1f}x fewer forwards, "
                  f"{statistics.median(runs[name]) / ours:.1f}x less wall time")
        print(f"(not counted for bgbias: its {r['clean_forwards']} clean forwards, one per foreground, which give the "
              "clean accuracy the baselines do not compute)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
