"""Benchmark: bgbias challenge against the exact lower bound and the official early-exit loop, on three models.

Run: ``python bench/challenge.py [--per-class 40] [--rhos 0.95,0.8,0.7] [--repeats 1]``.

Data: scikit-learn digits (white strokes, 32 px) on class-coloured backgrounds
whose colour strength varies per image. One small CNN per ``--rhos`` value is
trained on digits whose background colour matches the class with that
probability: high rho -> fooled almost always, lower -> mostly, about half.
Per model, same data and compositing:

- ``lower bound``: what any exact search must score: one composite per fooled
  foreground plus the whole pool per robust one (known only afterwards);
- ``official``: per foreground, backgrounds in the folder order in batches of
  ``--official-batch`` (32), stop after the first batch with a wrong one (the
  MadryLab backgrounds_challenge loop);
- ``bgbias``: ``run_challenge`` (search forwards; the top-fooling analysis
  counted separately, with its bound ``sum_c min(top_candidates, n_bg_c) *
  fooled_subset_c`` printed);
- ``pure forward``: the model alone on ready composites at the same batch
  size, the rate bgbias's images/s is compared with.

Verdicts of bgbias and the official loop must be identical (asserted).
"""
from __future__ import annotations

import argparse
import json
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


@torch.no_grad()
def pure_rate(net: torch.nn.Module, batch: int, n_batches: int = 20) -> float:
    """Images per CPU-second of the model alone on ready 32x32 composites, ``batch`` per forward.

    CPU time of this process (one thread), not wall time: other processes on a shared machine then do not
    move the ratio to bgbias's rate, which is measured the same way in the same run.
    """
    x = torch.rand(batch, 3, 32, 32, generator=torch_generator(0, "bench-pure"))
    net(x)
    t = time.process_time()
    for _ in range(n_batches):
        net(x)
    return batch * n_batches / (time.process_time() - t)


def bench_model(root: Path, net: torch.nn.Module, args) -> dict:
    """One model: bgbias vs the official loop vs the lower bound; returns its row."""
    runs: dict[str, list[float]] = {"official": [], "bgbias": [], "pure": []}
    for _ in range(args.repeats):
        runs["pure"].append(pure_rate(net, args.batch))
        t = time.process_time()
        official, off_fw = baseline(root, net, args.official_batch)
        runs["official"].append(time.process_time() - t)
        t = time.process_time()
        cfg = ChallengeConfig(model="bench:small-cnn", data=str(root), batch_size=args.batch, device="cpu",
                              progress=False)
        r = run_challenge(cfg, loaded=LoadedModel(net, "bench:small-cnn"))
        runs["bgbias"].append(time.process_time() - t)
        runs["pure"].append(pure_rate(net, args.batch))
    fooled = {f["id"] for f in r["fooled"]}
    assert {k: k in fooled for k in official} == official, "verdicts differ"
    return {"r": r, "official_fw": off_fw, "official_s": statistics.median(runs["official"]),
            "bgbias_s": statistics.median(runs["bgbias"]), "pure": statistics.median(runs["pure"])}


@torch.no_grad()
def resnet50_rate(batch: int = 8, n_batches: int = 2) -> float:
    """Images/s of an untrained torchvision ResNet-50 at 224x224 on this machine (no download)."""
    import torchvision

    net = torchvision.models.resnet50(weights=None).eval()
    x = torch.rand(batch, 3, 224, 224, generator=torch_generator(0, "bench-r50"))
    net(x)
    t = time.perf_counter()
    for _ in range(n_batches):
        net(x)
    return batch * n_batches / (time.perf_counter() - t)


def project_in9(rows: list, rate: float, n: int = 4050) -> list[dict]:
    """IN-9-sized run (n foregrounds x n backgrounds): lower bound from each model's fooled share, forwards from
    its measured ratio to the bound, time from the measured ResNet-50 rate (search forwards dominate)."""
    print(f"projection, IN-9 size ({n} x {n}, 224x224, ResNet-50 at {rate:.1f} img/s measured here):")
    out = []
    for rho, row in rows:
        r = row["r"]
        fooled = 1 - r["challenge_accuracy"]
        lb = fooled * n + (1 - fooled) * n * n
        fw = lb * r["forwards"] / r["lower_bound_forwards"]
        print(f"  like rho {rho:.2f} ({100 * fooled:.0f}% fooled): lower bound {lb:,.0f}, projected {fw:,.0f} forwards "
              f"(+{n} clean), {fw / rate / 3600:,.1f} h here; exhaustive {n * n:,} = {n * n / rate / 3600:,.1f} h")
        out.append({"rho": rho, "fooled": round(fooled, 4), "lower_bound": round(lb), "forwards": round(fw),
                    "hours": round(fw / rate / 3600, 2), "exhaustive_hours": round(n * n / rate / 3600, 1)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--official-batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-projection", action="store_true")
    ap.add_argument("--json", help="also write the summary the README reads (e.g. docs/bench/challenge.json)")
    ap.add_argument("--rhos", default="0.95,0.8,0.7", help="train-time background/class correlation per model")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_data(root, args.per_class, args.seed)
        for rho in (float(v) for v in args.rhos.split(",")):
            net = train(args.steps, args.seed, rho)
            rows.append((rho, bench_model(root, net, args)))
    r0 = rows[0][1]["r"]
    print(f"{r0['n_foregrounds']} foregrounds x {r0['n_backgrounds']} backgrounds, batch {args.batch}; "
          f"verdicts of bgbias and the official loop identical: yes")
    print(f"{'rho':>5} {'fooled':>7} {'lower bound':>12} {'bgbias':>8} {'x LB':>6} {'official':>9} {'x LB':>6} "
          f"{'analysis':>9} {'bound':>7} {'/search':>8} {'bgbias s':>9} {'official s':>10} {'img/s':>8} "
          f"{'pure img/s':>10} {'ratio':>6}")
    for rho, row in rows:
        r = row["r"]
        lb, fw = r["lower_bound_forwards"], r["forwards"]
        rate = (fw + r["clean_forwards"] + r["analysis_forwards"]) / row["bgbias_s"]
        print(f"{rho:>5.2f} {100 * (1 - r['challenge_accuracy']):>6.1f}% {lb:>12} {fw:>8} {fw / lb:>6.2f} "
              f"{row['official_fw']:>9} {row['official_fw'] / lb:>6.2f} {r['analysis_forwards']:>9} "
              f"{r['analysis_forwards_bound']:>7} {r['analysis_forwards'] / max(fw, 1):>8.2f} "
              f"{row['bgbias_s']:>9.2f} {row['official_s']:>10.2f} {rate:>8.0f} {row['pure']:>10.0f} "
              f"{rate / row['pure']:>6.2f}")
    for rho, row in rows:
        r = row["r"]
        n_f = round(r["n_foregrounds"] * (1 - r["challenge_accuracy"]))
        print(f"  rho {rho:.2f}: lower bound {r['lower_bound_forwards']} = {n_f} fooled x 1 + "
              f"{r['n_foregrounds'] - n_f} robust x {r['n_backgrounds']} backgrounds")
    print("x LB: forwards over the exact lower bound (fooled + robust x pool); analysis: top-fooling forwards, "
          "bound = sum_c min(top_candidates, n_bg_c) x fooled subset foregrounds of other classes; img/s: all "
          "bgbias forwards (search + clean + analysis) per CPU-second of its whole run (data reading included); "
          "pure: the model alone on ready composites, same batch, CPU time, median of before/after each run; "
          "bgbias s / official s: CPU seconds")
    projection = None
    if not args.no_projection:
        rate = resnet50_rate()
        projection = {"n": 4050, "resnet50_img_per_s": round(rate, 1), "models": project_in9(rows, rate)}
    if args.json:
        out = []
        for rho, row in rows:
            r = row["r"]
            lb, fw = r["lower_bound_forwards"], r["forwards"]
            rate = (fw + r["clean_forwards"] + r["analysis_forwards"]) / row["bgbias_s"]
            out.append({"rho": rho, "fooled": round(1 - r["challenge_accuracy"], 4), "lower_bound": lb, "forwards": fw,
                        "x_lower_bound": round(fw / lb, 3), "official_forwards": row["official_fw"],
                        "official_x_lower_bound": round(row["official_fw"] / lb, 3),
                        "analysis_over_search": round(r["analysis_forwards"] / max(fw, 1), 3),
                        "rate_over_pure": round(rate / row["pure"], 3),
                        "speedup_vs_official": round(row["official_s"] / row["bgbias_s"], 2)})
        Path(args.json).write_text(json.dumps({"command": "python bench/challenge.py " + " ".join(argv or sys.argv[1:]),
                                               "n_foregrounds": r0["n_foregrounds"], "n_backgrounds": r0["n_backgrounds"],
                                               "batch": args.batch, "identical_verdicts": True, "models": out,
                                               "in9_projection": projection},
                                              indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
