"""Benchmark ``bgbias build``: the 8 IN-9 variants at 224x224 from generated images vs a plain per-image loop.

Run: ``python bench/build.py`` (``--n 500`` images, ``--quick`` for 100). Prints images/s of
``bgbias.synth.build.build`` (one worker, one thread) and of a naive PIL/numpy loop that writes the
same files (same variants, same pairing, PIL's default PNG, everything recomputed per
variant), and the **I/O floor**: decoding every input image and mask with bgbias's own readers and
encoding + writing every output file the build wrote (its own pixels, loaded beforehand, same PNG
encoder and level): no build can take less. The build's share of the floor is floor time over build
time (1.0 = nothing but I/O). The resize of every input to 224x224 (image and mask) is timed apart and
reported as a second share, floor + resize over build (the floor as issue #19 words it). All per CPU-second (fair on a busy machine) and per wall-second, and the ratio.
Each run is a fresh process; the two are interleaved for ``--rounds`` rounds and the median
ratio is reported (the machine is shared). Then the peak RSS growth of a build of N/2 vs N images.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from bgbias.core.layout import IN9_VARIANTS as IN9

SIZE = (224, 224)


def make_images(root: Path, n: int, h: int = 256, w: int = 320, classes: int = 9) -> tuple[Path, Path]:
    """``n`` generated photos-like images (smooth colour field + an ellipse object) and 0/255 PNG masks."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        c = i % classes
        base = rng.uniform(40, 200, 3)
        img = base + 40 * np.sin(xx[..., None] / rng.uniform(5, 30) + yy[..., None] / rng.uniform(5, 30))
        img += rng.normal(0, 8, img.shape)
        cy, cx, ry, rx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w, h * 0.25, w * 0.2
        m = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)
        img[m] = rng.uniform(0, 255, 3)
        for sub, arr in (("images", np.clip(img, 0, 255).astype(np.uint8)[:, :, ::-1]), ("masks", m.astype(np.uint8) * 255)):
            d = root / sub / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(d / f"img{i:04d}.png"), arr)
    return root / "images", root / "masks"


def run_bgbias(images: Path, masks: Path, out: Path, n: int) -> dict:
    """One build in this process; returns timings and peak RSS growth."""
    import torch

    from bgbias.sources.base import SubsetSource, create_source
    from bgbias.synth.build import BuildConfig, build

    torch.set_num_threads(1)
    src = create_source(f"folder:{images}", masks=str(masks))
    src = SubsetSource(src, range(n)) if n < len(src) else src
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    build(src, out, BuildConfig(variants=IN9, size=SIZE), workers=1, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"n": n, "wall": wall, "cpu": cpu,
            "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024}


def run_floor(images: Path, masks: Path, built: Path, out: Path) -> dict:
    """The I/O floor: decode every input (image + mask), encode and write every file ``built`` holds.

    Each output folder is made once, before the clock (the build makes each once too), and files are
    written by plain string paths, so the floor carries no per-file overhead the build does not pay.
    Then, timed apart (``cpu_resize``), the resize of every decoded input to the output size (image
    and mask, :func:`bgbias.synth.build_worker.fit_sample`): the step the issue counts in the floor too.
    """
    from bgbias.core.io import read_image, read_mask, write_npy, write_png
    from bgbias.core.sample import Sample
    from bgbias.synth.build import BuildConfig
    from bgbias.synth.build_worker import fit_sample

    level = BuildConfig().png_compression
    outputs = [(p.relative_to(built), np.load(p) if p.suffix == ".npy" else cv2.imread(str(p), cv2.IMREAD_UNCHANGED))
               for p in sorted(built.rglob("*")) if p.suffix in (".png", ".npy")]
    outputs = [(str(out / rel), rel.suffix, a if rel.suffix == ".npy" or a.ndim == 2 else np.ascontiguousarray(a[..., ::-1]))
               for rel, a in outputs]
    for d in sorted({os.path.dirname(path) for path, _, _ in outputs}):
        os.makedirs(d, exist_ok=True)
    inputs = sorted(images.rglob("*.png"))
    t0, c0 = time.perf_counter(), time.process_time()
    for path in inputs:
        read_image(path)
        read_mask(masks / path.relative_to(images))
    for path, suffix, a in outputs:
        if suffix == ".npy":
            write_npy(path, a)
        else:
            write_png(path, a, level)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    resize = 0.0
    for path in inputs:
        s = Sample(read_image(path), read_mask(masks / path.relative_to(images)), 0, path.stem)
        c1 = time.process_time()
        fit_sample(s, SIZE)
        resize += time.process_time() - c1
    return {"n": len(inputs), "files": len(outputs), "wall": wall, "cpu": cpu, "cpu_resize": resize}


# ---------------------------------------------------------------- the naive loop

def _pil_load(path: Path, mode: str, size: int = 224):
    from PIL import Image

    im = Image.open(path).convert(mode)
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


def _naive_tiled(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Only-BG-T with numpy indexing (what a careful script would write)."""
    ys, xs = np.nonzero(m > 0.5)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    h, w = m.shape
    side = int(np.argmax([x0 * h, (w - x1) * h, y0 * w, (h - y1) * w]))
    if side < 2:
        strip = img[:, :x0] if side == 0 else img[:, x1:]
        tiled = strip[:, (np.arange(w) - x0) % strip.shape[1]]
    else:
        strip = img[:y0] if side == 2 else img[y1:]
        tiled = strip[(np.arange(h) - y0) % strip.shape[0]]
    out = img.copy()
    out[y0:y1, x0:x1] = tiled[y0:y1, x0:x1]
    return out


def run_naive(images: Path, masks: Path, out: Path, manifest: dict) -> dict:
    """Per image, per variant: decode, resize, recompute, PIL-save (default PNG settings)."""
    from PIL import Image

    files = {p.stem: p for p in images.rglob("*.png")}
    t0, c0 = time.perf_counter(), time.process_time()
    for s in manifest["samples"]:
        stem = s["id"].split("_", 1)[1]
        path = files[stem]
        mpath = masks / path.relative_to(images)
        for v in IN9:
            img = _pil_load(path, "RGB")
            m = (_pil_load(mpath, "L") / 255.0).astype(np.float32)
            mm = m[..., None]
            if v == "original":
                res = img
            elif v == "only_bg_b":
                ys, xs = np.nonzero(m > 0.5)
                res = img.copy()
                res[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = 0
            elif v == "only_bg_t":
                res = _naive_tiled(img, m)
            elif v == "no_fg":
                res = img * (1 - mm)
            elif v == "only_fg":
                res = img * mm
            else:
                partner = files[manifest["pairing"][v][s["id"]].split("_", 1)[1]]
                pimg, pm = _pil_load(partner, "RGB"), _pil_load(masks / partner.relative_to(images), "L") / 255.0
                res = img * mm + _naive_tiled(pimg, pm) * (1 - mm)
            d = out / v / "val" / s["class_dir"]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(res).astype(np.uint8)).save(d / f"{s['id']}.png")
        d = out / "fg_mask" / "val" / s["class_dir"]
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / f"{s['id']}.npy", m)
    return {"n": len(manifest["samples"]), "wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}


def profile(images: Path, masks: Path, out: Path, n: int, top: int) -> None:
    """Where one build's CPU time goes: cProfile timed by CPU seconds, the ``top`` functions by own time."""
    import cProfile
    import pstats

    import torch  # noqa: F401  (imports and the source's plugins before the profiler: only the build is in it)

    from bgbias.sources.base import create_source
    from bgbias.synth import build as _  # noqa: F401

    create_source(f"folder:{images}", masks=str(masks))
    prof = cProfile.Profile(time.process_time)
    prof.enable()
    res = run_bgbias(images, masks, out, n)
    prof.disable()
    print(f"one build of {n} images: {res['cpu']:.2f} CPU-s (under the profiler)")
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)
    print("the build's stages (time with callees):")     # variants, resize, cache reads vs the floor's own work
    pstats.Stats(prof).sort_stats("cumulative").print_stats(
        r"\((render_variants|fit_sample|_cached|_load_mask|_write_image|write_npy|read_image|read_mask|plan_pairing)\)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--quick", action="store_true", help="100 images, 2 rounds")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of both; the median ratio is reported")
    ap.add_argument("--dir", default=None, help="where to build (default: the system temp folder); e.g. /dev/shm "
                    "to leave out the disk, whose per-file cost both runs pay alike")
    ap.add_argument("--json", help="also write the summary the README reads (e.g. docs/bench/build.json)")
    ap.add_argument("--profile", type=int, metavar="K", help="instead: one build of --n images under cProfile "
                    "(CPU time), print the K functions with the most time of their own, and exit")
    ap.add_argument("--child", nargs=5, metavar=("WHICH", "IMAGES", "MASKS", "OUT", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        which, images, masks, out, k = args.child
        if which == "bgbias":
            res = run_bgbias(Path(images), Path(masks), Path(out), int(k))
        elif which == "floor":
            res = run_floor(Path(images), Path(masks), Path(out).parent / "bgbias", Path(out))
        else:
            res = run_naive(Path(images), Path(masks), Path(out), json.loads((Path(out).parent / "manifest.json").read_text()))
        print(json.dumps(res))
        return
    n, rounds = (100, 2) if args.quick else (args.n, args.rounds)
    tmp = Path(tempfile.mkdtemp(prefix="bgbias-bench-", dir=args.dir))
    try:
        images, masks = make_images(tmp / "data", n)
        if args.profile:
            profile(images, masks, tmp / "bgbias", n, args.profile)
            return

        def child(which: str, k: int, name: str) -> dict:
            shutil.rmtree(tmp / name, ignore_errors=True)
            cmd = [sys.executable, __file__, "--child", which, str(images), str(masks), str(tmp / name), str(k)]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                raise SystemExit(f"{which} run failed:\n{proc.stderr[-3000:]}")
            return json.loads(proc.stdout)

        half = child("bgbias", n // 2, "bgbias_half")
        ours, naive, floor = [], [], []
        for r in range(rounds):          # interleaved, so all see the same machine load
            ours.append(child("bgbias", n, "bgbias"))
            floor.append(child("floor", n, "floor"))
            shutil.copy(tmp / "bgbias" / "manifest.json", tmp / "manifest.json")
            naive.append(child("naive", n, "naive"))
        files = lambda root: sorted(p.relative_to(root) for p in root.rglob("*") if p.suffix in (".png", ".npy"))  # noqa: E731
        same = files(tmp / "bgbias") == files(tmp / "naive")
        med = lambda rs, key: statistics.median(r[key] for r in rs)  # noqa: E731
        print(f"build of the 8 IN-9 variants at 224x224 from {n} generated 256x320 images "
              f"(1 worker, 1 thread; median of {rounds} interleaved rounds; in {tmp.parent})")
        for name, rs in (("bgbias build", ours), ("I/O floor", floor), ("naive PIL/numpy loop", naive)):
            print(f"  {name:<22} {n / med(rs, 'cpu'):8.1f} images/CPU-s  {n / med(rs, 'wall'):8.1f} images/s wall")
        ratios = sorted(b["cpu"] / a["cpu"] for a, b in zip(ours, naive))
        print(f"  speed-up per core: {statistics.median(ratios):.1f}x (CPU time; rounds {', '.join(f'{x:.1f}' for x in ratios)}), "
              f"{med(naive, 'wall') / med(ours, 'wall'):.1f}x (wall); same files written: {same}")
        shares = sorted(f["cpu"] / a["cpu"] for a, f in zip(ours, floor))
        print(f"  build's share of the I/O floor: {statistics.median(shares):.2f} (floor CPU-s / build CPU-s; rounds "
              f"{', '.join(f'{x:.2f}' for x in shares)}; 1.0 = the build does nothing but read and write; "
              f"{floor[-1]['files']} files)")
        with_resize = sorted((f["cpu"] + f["cpu_resize"]) / a["cpu"] for a, f in zip(ours, floor))
        print(f"  with the resize to 224x224 in the floor: {statistics.median(with_resize):.2f} (rounds "
              f"{', '.join(f'{x:.2f}' for x in with_resize)}; resize {med(floor, 'cpu_resize'):.2f} CPU-s of "
              f"{med(floor, 'cpu'):.2f} for decode + encode + write)")
        print(f"  peak RSS growth: {half['rss_growth_mb']:.1f} MB for {half['n']} images, "
              f"{ours[-1]['rss_growth_mb']:.1f} MB for {n} images")
        if args.json:
            summary = {"command": "python bench/build.py " + " ".join(a for a in sys.argv[1:]), "n": n,
                       "rounds": rounds, "images_per_cpu_s": {"bgbias": round(n / med(ours, "cpu"), 1),
                                                              "floor": round(n / med(floor, "cpu"), 1),
                                                              "naive": round(n / med(naive, "cpu"), 1)},
                       "speedup_cpu": round(statistics.median(ratios), 2), "speedup_rounds": [round(x, 2) for x in ratios],
                       "floor_share": round(statistics.median(shares), 3), "floor_share_rounds": [round(x, 3) for x in shares],
                       "floor_with_resize_share": round(statistics.median(with_resize), 3),
                       "rss_growth_mb": {str(half["n"]): round(half["rss_growth_mb"], 1),
                                         str(n): round(ours[-1]["rss_growth_mb"], 1)}, "same_files": same}
            Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
