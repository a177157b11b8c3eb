"""Held-out generalisation on MNIST: do recipes hold on backgrounds that no recipe (and no bank family) draws from?

    python bench/generalize.py [--mnist DIR] [--photos DIR] [--epochs 5] [--recipes ...] [--out DIR]

Protocol (issue 15). The MNIST test file: the first ``--n-train`` (8,000) digits train, the last
``--n-test`` (2,000) test. Every recipe trains on clean digits (black backgrounds, masks from the stroke
intensity) with the same small CNN and loop (``bgbias.train.loop.train``). The test digits are composited
(their stroke masks) onto

* **held-out** backgrounds, which no recipe draws from: crops of natural scene photos
  (``realmasks/backgrounds``, in no training bank; random window, scale and position per digit), and
  three procedural patterns that are *not* bgbias families and are written only in ``bench/heldout.py`` (Voronoi cells,
  random discs, random thick line segments);
* **bgbias families**: paper 002's six textures (stripes, board, border, circles, clock, Bernoulli noise)
  at their fixed parameters. The bank draws these families (with random parameters), so they are
  *seen* for bank-trained recipes and reported apart.

A ``naive`` recipe, written in ``bench/heldout.py`` in ~40 lines (uniform noise, random-angle stripes, random grey level,
smooth noise behind the digit), is the baseline every recipe must beat on the held-out average.
``--lofo`` adds leave-one-family-out over the bank: ``bg-augment`` trained on the bank without family F,
tested on F (one run per F; slow, so off by default).

Each accuracy has a 95% bootstrap interval over test digits (the average resamples digits jointly
across its backgrounds). Adversarial runs also score their learned masks (stage-2 f_m, binarised) against
the true stroke masks (IoU > 0 pixels at 0.5) on the training and test digits. Seconds per epoch are
measured in the same run (stage-3 epochs for ``adversarial``), ratio to ``baseline``. Not a test.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bgbias.core.compose import compose  # noqa: E402
from bgbias.core.seeding import torch_generator  # noqa: E402
from bgbias.models.checkpoint import load_checkpoint  # noqa: E402
from bgbias.models.nets import create_arch  # noqa: E402
from bgbias.sources.base import create_source  # noqa: E402
from bgbias.train.config import TrainConfig  # noqa: E402
from bgbias.train.data import TrainData  # noqa: E402
from bgbias.train.loop import train  # noqa: E402
from heldout import HELD_OUT, PAPER_SIX, photo_crops, test_sets  # noqa: E402  (bench/heldout.py; registers "naive")

SHARED = next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()), Path("data"))
PAPER_AVG = 85.5  # paper 002's proposal, average over its six textures (reference/results.md)


# ------------------------------------------------------------------ data, evaluation
def load_mnist(folder: Path) -> TrainData:
    src = create_source(f"mnist:{folder}", background="black")
    samples = [src.load(i) for i in range(len(src))]
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.rint(np.stack([s.mask for s in samples]) * 255).astype(np.uint8))
    return TrainData(images, masks, torch.tensor([s.label for s in samples]), [s.id for s in samples],
                     list(src.classes), [])


def subset(d: TrainData, rows: slice) -> TrainData:
    return TrainData(d.images[rows], d.masks[rows], d.labels[rows], d.ids[rows], d.classes, [])


def load_model(path: Path):
    ck = load_checkpoint(path)
    meta = ck["meta"]
    model = create_arch(meta["arch"], len(meta["classes"]), **meta["arch_kwargs"])
    model.load_state_dict(ck["state_dict"])
    mean = torch.tensor(meta["preprocess"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["preprocess"]["std"]).view(1, 3, 1, 1)
    return model.eval(), (lambda x: (x - mean) / std)


@torch.no_grad()
def correct(path: Path, sets: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, np.ndarray]:
    """Per test set, a bool array: digit i classified correctly."""
    model, norm = load_model(path)
    return {k: torch.cat([model(norm(x[i:i + 500])).argmax(1) for i in range(0, len(x), 500)]).eq(labels).numpy()
            for k, x in sets.items()}


def boot(hits: np.ndarray, reps: int, seed: int = 0) -> tuple[float, float, float]:
    """Accuracy % and its 95% bootstrap interval; ``hits`` [n] or [n, k] (rows resampled jointly, then mean)."""
    rng = np.random.default_rng(seed)
    n = hits.shape[0]
    stats = hits.reshape(n, -1).mean(1)
    means = stats[rng.integers(0, n, (reps, n))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return 100 * stats.mean(), 100 * lo, 100 * hi


@torch.no_grad()
def learned_mask_iou(run: Path, train_data: TrainData, test_data: TrainData) -> dict[str, float] | None:
    """Mean IoU of the adversarial run's binarised f_m masks with the true masks (train and test digits)."""
    from bgbias.train.adversarial import MaskUNet, mask_iou, predict_masks

    last = run / "last.pt"
    if not last.is_file():
        return None
    aug = load_checkpoint(last)["extra"].get("augment") or {}
    if aug.get("masks") is None or aug.get("mask_net") is None:
        return None
    cfg = load_checkpoint(last)["meta"]["config"]
    net = MaskUNet()
    net.load_state_dict(aug["mask_net"])
    test_pred = predict_masks(net.eval(), test_data.images, cfg["threshold"], cfg["area"], torch.device("cpu"))
    return {"train": round(float(mask_iou(aug["masks"], train_data.masks).mean()), 4),
            "test": round(float(mask_iou(test_pred, test_data.masks).mean()), 4),
            "true_area": round(float((test_data.masks > 127).float().mean()), 4)}


# ------------------------------------------------------------------ main
def ensure_trained(cfg: TrainConfig, train_data: TrainData) -> None:
    """Train unless ``cfg.out`` already holds a finished run of exactly this config (resumes a killed one)."""
    done = Path(cfg.out) / "metrics.json"
    if done.is_file():
        old = json.loads(done.read_text())["config"]
        new = json.loads(json.dumps(dataclasses.asdict(cfg)))
        if {k: v for k, v in old.items() if k != "resume"} == {k: v for k, v in new.items() if k != "resume"}:
            return
        import shutil

        shutil.rmtree(cfg.out)
    train(cfg, progress=False, data=subset(train_data, slice(None)))


def time_per_epoch(runs: dict[str, TrainConfig], names: list[str], train_data: TrainData, out: Path,
                   rows: int, rounds: int) -> dict[str, float]:
    """Seconds per epoch relative to baseline, measured interleaved (round-robin, ``rounds`` times, ``rows``
    digits, the second of two epochs each, at the configured batch size) so that the shared machine's load hits every recipe alike; median of paired ratios."""
    import shutil

    small = subset(train_data, slice(0, rows))
    secs: dict[str, list[float]] = {n: [] for n in ["baseline", *[n for n in names if n != "baseline"]]}
    for r in range(rounds):
        for name in secs:
            cfg = runs[name]
            tdir = out / "_timing" / name
            shutil.rmtree(tdir, ignore_errors=True)
            pre = {}
            if cfg.pretrained:
                pre = dict(pretrained=str(out / "baseline" / "model.pt"), mask_epochs=1)
            # min_steps=0: the recipes' real batch size (--min-steps would shrink batches on a small timing set)
            # two epochs, the second (warm) one counts: a first epoch of 10 steps carries start-up costs
            cfg = dataclasses.replace(cfg, out=str(tdir), epochs=2, resume=False, min_steps=0, **pre)
            hist = train(cfg, progress=False, data=subset(small, slice(None)))["history"]
            secs[name].append([h["seconds"] for h in hist if h["phase"] != "clean"][-1])
    base = np.array(secs["baseline"])
    return {n: float(np.median(np.array(v) / base)) for n, v in secs.items()}


def configs(args, out: Path) -> dict[str, TrainConfig]:
    """Every recipe at its defaults, except the epoch counts the bench uses to fit its time budget."""
    common = dict(data="mnist", epochs=args.epochs, seed=0, val_fraction=0.0, resume=True)
    stage1 = dict(pretrained=str(out / "baseline" / "model.pt"), clean_epochs=0, mask_epochs=args.mask_epochs)
    runs = {"baseline": TrainConfig(recipe="baseline", **common),
            "naive": TrainConfig(recipe="naive", **common),
            "bg-augment": TrainConfig(recipe="bg-augment", **common),
            "bg-augment-old": TrainConfig(recipe="bg-augment", families=("color", "mean", "other_sample"), **common),
            "adversarial": TrainConfig(recipe="adversarial", **{**common, "epochs": args.adv_epochs}, **stage1),
            "adversarial-true-masks": TrainConfig(recipe="adversarial", **{**common, "epochs": args.adv_epochs},
                                                  **stage1, true_masks=True)}
    for spec in args.extra:  # NAME=RECIPE;key=value;... for experiments recorded in RESULTS.md
        name, _, rest = spec.partition("=")
        kv = dict(p.split("=", 1) for p in rest.split(";")[1:])
        base = runs.get(rest.split(";")[0]) or TrainConfig(recipe=rest.split(";")[0], **common)
        fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
        parsed = {k: (tuple(v.split(",")) if k == "families" else None if v == "None" else
                      type(getattr(base, k))(v) if getattr(base, k) is not None else float(v)) for k, v in kv.items()}
        assert all(k in fields for k in parsed), parsed
        runs[name] = dataclasses.replace(base, **parsed)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", default=str(SHARED / "mnist"))
    ap.add_argument("--photos", default=str(SHARED / "realmasks" / "backgrounds"))
    ap.add_argument("--n-train", type=int, default=8000)
    ap.add_argument("--n-test", type=int, default=2000)
    # defaults = `bgbias train`'s (epochs 5; adversarial: stage 1 = the baseline run, f_m 3, stage 3 5)
    ap.add_argument("--epochs", type=int, default=5, help="epochs for baseline / naive / bg-augment (stage 1)")
    ap.add_argument("--adv-epochs", type=int, default=5, help="adversarial stage-3 epochs (stage 1 = baseline run)")
    ap.add_argument("--mask-epochs", type=int, default=3, help="adversarial stage-2 (f_m) epochs")
    ap.add_argument("--recipes", default="baseline,naive,bg-augment,adversarial,adversarial-true-masks")
    ap.add_argument("--extra", action="append", default=[],
                    help="extra run NAME=RECIPE;key=value;... (TrainConfig fields), e.g. 'p9=bg-augment;p=0.9'")
    ap.add_argument("--lofo", action="store_true", help="leave-one-family-out over the bank (bg-augment)")
    ap.add_argument("--by-brightness", action="store_true",
                    help="also print Photos accuracy by the crop's mean luminance, and the bank's luminance spread")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--time-rounds", type=int, default=3, help="interleaved timing rounds (0: skip)")
    ap.add_argument("--time-rows", type=int, default=1280, help="digits per timing epoch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/bgbias-generalize")
    ap.add_argument("--json", help="also write the summary the README reads (e.g. docs/bench/generalize.json)")
    ap.add_argument("--recommended", default="adversarial", help="the recipe the summary names as recommended")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t_start = time.time()

    data = load_mnist(Path(args.mnist))
    if args.n_train + args.n_test > len(data.labels):
        raise ValueError(f"--n-train + --n-test must be <= {len(data.labels)}, got {args.n_train + args.n_test}.")
    train_data = subset(data, slice(0, args.n_train))
    test_data = subset(data, slice(len(data.labels) - args.n_test, None))
    sets = test_sets(test_data, Path(args.photos))
    runs = configs(args, out)
    names = [r for r in args.recipes.split(",") if r] + [s.partition("=")[0] for s in args.extra]
    print(f"MNIST t10k: train {args.n_train} (first), test {args.n_test} (last); small-cnn; epochs {args.epochs}, "
          f"adversarial stage 3 {args.adv_epochs} + f_m {args.mask_epochs} (stage 1 = the baseline run); "
          f"{args.threads} threads; bootstrap {args.boot}", flush=True)

    results: dict[str, dict] = {}
    photo_hits: dict[str, np.ndarray] = {}
    for name in names:
        cfg = dataclasses.replace(runs[name], out=str(out / name))
        ensure_trained(cfg, train_data)
        metrics = json.loads((out / name / "metrics.json").read_text())
        hist = [h for h in metrics["history"] if h["phase"] != "clean"]
        hits = correct(out / name / "model.pt", sets, test_data.labels)
        photo_hits[name] = hits["Photos"]
        row = {k: boot(v, args.boot) for k, v in hits.items()}
        row["held-out avg"] = boot(np.stack([hits[k] for k in HELD_OUT], 1), args.boot)
        row["families avg"] = boot(np.stack([hits[k] for k, _ in PAPER_SIX], 1), args.boot)
        results[name] = {"acc": row, "sec_per_epoch": float(np.median([h["seconds"] for h in hist])),
                         "families_seen": metrics["families_seen"], "config": metrics["config"]}
        if cfg.recipe == "adversarial" and not cfg.true_masks:
            results[name]["mask_iou"] = learned_mask_iou(out / name, train_data, test_data)
        r = row
        print(f"{name}: clean {r['Clean'][0]:.1f}  held-out {r['held-out avg'][0]:.1f} "
              f"[{r['held-out avg'][1]:.1f}, {r['held-out avg'][2]:.1f}]  families {r['families avg'][0]:.1f}  "
              f"{results[name]['sec_per_epoch']:.1f} s/epoch" + (f"  mask IoU {results[name]['mask_iou']}"
                                                                 if "mask_iou" in results[name] else ""), flush=True)

    if args.time_rounds:
        ratios = time_per_epoch(runs, names, train_data, out, args.time_rows, args.time_rounds)
        for k, v in ratios.items():
            if k in results:
                results[k]["time_ratio"] = v
    if args.lofo:
        results.update(lofo(args, out, train_data, test_data))
    report(results, args, time.time() - t_start)
    if args.by_brightness:
        by_brightness(photo_hits, Path(args.photos), test_data, runs)
    (out / "generalize.json").write_text(json.dumps(results, indent=2, default=list))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary(results, args), indent=1) + "\n")


def summary(results: dict[str, dict], args) -> dict:
    """The figures the README shows (docs/readme.py reads them): per recipe clean, held-out and the paper's six
    (value, 95% low, high), the cost ratio, mask IoU; leave-one-family-out; and the command that made them."""
    def pc(t):
        return [round(float(v), 1) for v in t]

    rows = {}
    for name, r in results.items():
        a = r["acc"]
        if "left_out" in r:
            rows[name] = ({"left_out": r["left_out"], "clean": pc(a["Clean"]), "on_left_out": pc(a[r["left_out"]])}
                          if r["left_out"] else {"left_out": None, **{k: pc(v) for k, v in a.items()}})
            continue
        rows[name] = {"clean": pc(a["Clean"]), "held_out": pc(a["held-out avg"]), "paper_six": pc(a["families avg"]),
                      "per_background": {k: round(float(a[k][0]), 1) for k in HELD_OUT},
                      "time_ratio": round(r["time_ratio"], 2) if "time_ratio" in r else None,
                      "mask_iou": r.get("mask_iou")}
    return {"command": "python bench/generalize.py " + " ".join(sys.argv[1:]),
            "protocol": {"n_train": args.n_train, "n_test": args.n_test, "epochs": args.epochs,
                         "adv_epochs": args.adv_epochs, "mask_epochs": args.mask_epochs, "threads": args.threads,
                         "held_out": HELD_OUT, "paper_avg": PAPER_AVG},
            "recommended": args.recommended, "recipes": rows}


def lofo(args, out: Path, train_data: TrainData, test_data: TrainData) -> dict[str, dict]:
    """Leave one bank family out of bg-augment's families, test on that family (rendered with another seed)."""
    from bgbias.synth.bank import bank_families, create_bank_background, create_mixture, parse_bank

    res = {}
    x = test_data.images.float() / 255.0
    m = test_data.masks.float().unsqueeze(1) / 255.0
    # the seven flat greys are one family here: leaving out one grey level while its neighbours stay says nothing
    fams = list(dict.fromkeys("color:greys" if f.startswith("color:#") else f
                              for f in bank_families() if f != "other_sample"))
    render = {f: create_mixture(f) if f == "color:greys" else create_bank_background(f) for f in fams}
    bgs = {f: bg.render(len(x), tuple(x.shape[-2:]), torch_generator(1, "lofo", f)) for f, bg in render.items()}
    full = TrainConfig(recipe="bg-augment", data="mnist", epochs=args.epochs, seed=0, val_fraction=0.0,
                       out=str(out / "lofo-full-bank"))
    ensure_trained(full, train_data)       # the reference: the whole bank, scored on every family
    hits = correct(out / "lofo-full-bank" / "model.pt", {"Clean": x, **{f: compose(x, b, m) for f, b in bgs.items()}},
                   test_data.labels)
    res["lofo-full-bank"] = {"acc": {k: boot(v, args.boot) for k, v in hits.items()}, "left_out": None}
    for fam in fams:
        rest = tuple(f for f in bank_families() if f not in parse_bank(fam))
        name = f"lofo-{fam}"
        cfg = TrainConfig(recipe="bg-augment", data="mnist", epochs=args.epochs, seed=0, val_fraction=0.0,
                          families=rest, out=str(out / name))
        ensure_trained(cfg, train_data)
        sets = {"Clean": x, fam: compose(x, bgs[fam], m)}
        hits = correct(out / name / "model.pt", sets, test_data.labels)
        res[name] = {"acc": {k: boot(v, args.boot) for k, v in hits.items()}, "left_out": fam}
        print(f"{name}: clean {res[name]['acc']['Clean'][0]:.1f}  on {fam} {res[name]['acc'][fam][0]:.1f}", flush=True)
    return res


LUMA_BINS = [0.0, 0.3, 0.5, 0.7, 0.85, 1.01]


def by_brightness(photo_hits: dict[str, np.ndarray], photos: Path, test_data: TrainData,
                  runs: dict[str, TrainConfig]) -> None:
    """Why photos are the hard set: accuracy per bin of the photo crop's mean luminance, beside how often the
    photos and each recipe's background spec land in that bin (4,000 renders; white strokes vanish on bright)."""
    from bgbias.synth.bank import PARTNERS, Mixture, parse_bank

    n, size = len(test_data.labels), test_data.images.shape[-1]
    luma = photo_crops(photos, n, size, torch_generator(0, "generalize", "photos")).mean((1, 2, 3)).numpy()
    bins = np.digitize(luma, LUMA_BINS) - 1
    names = [f"[{a:.2f},{b:.2f})" for a, b in zip(LUMA_BINS, LUMA_BINS[1:])]
    print("\nPhotos accuracy % by the crop's mean luminance (share of crops in the bin):")
    print("| recipe | " + " | ".join(f"{b} ({100 * np.mean(bins == i):.1f}%)" for i, b in enumerate(names)) + " |")
    print("|---|" + "---|" * len(names))
    for name, hits in photo_hits.items():
        print(f"| {name} | " + " | ".join(f"{100 * hits[bins == i].mean():.1f}" for i in range(len(names))) + " |")
    print("\nshare % of training backgrounds per luminance bin (bank-like specs, partners left out):")
    for name, cfg in runs.items():
        if name in photo_hits and cfg.recipe == "bg-augment":
            leaves = {k: v for k, v in parse_bank(",".join(cfg.families)).items() if k not in PARTNERS}
            mix = Mixture(leaves, name)
            lum = mix.render(4000, (size, size), torch_generator(0, "luma", name)).mean((1, 2, 3))
            share = np.histogram(lum.numpy(), LUMA_BINS)[0] / 40
            print(f"  {name}: " + ", ".join(f"{b} {v:.1f}" for b, v in zip(names, share)))


def report(results: dict[str, dict], args, seconds: float) -> None:
    main_rows = {k: v for k, v in results.items() if "left_out" not in v}
    cols = ["Clean", *HELD_OUT, "held-out avg", *[k for k, _ in PAPER_SIX], "families avg"]
    print(f"\nHeld-out generalisation, MNIST ({args.n_train} train / {args.n_test} test), accuracy % "
          f"[95% bootstrap]; chance 10.0; held-out = backgrounds no recipe draws from; families = paper 002's six "
          f"(drawn by the bank, so *seen* by bank-trained recipes); paper 002's proposal: {PAPER_AVG} on its six")
    print("| recipe | " + " | ".join(cols) + " | s/epoch (x baseline, interleaved) |")
    print("|---|" + "---|" * (len(cols) + 1))
    for name, r in main_rows.items():
        a = r["acc"]
        cells = [f"{a[c][0]:.1f}" if "avg" not in c else f"**{a[c][0]:.1f}** [{a[c][1]:.1f}, {a[c][2]:.1f}]"
                 for c in cols]
        ratio = f" ({r['time_ratio']:.2f}x)" if "time_ratio" in r else ""
        print(f"| {name} | " + " | ".join(cells) + f" | {r['sec_per_epoch']:.1f}{ratio} |")
    ious = {k: v["mask_iou"] for k, v in main_rows.items() if v.get("mask_iou")}
    for k, v in ious.items():
        print(f"{k}: learned f_m masks vs true masks: IoU train {v['train']:.3f}, test {v['test']:.3f} "
              f"(true foreground share {v['true_area']:.3f}, area prior a={results[k]['config']['area']})")
    lo = {k: v for k, v in results.items() if "left_out" in v}
    if lo:
        ref = lo.pop("lofo-full-bank", None)
        print("\nLeave-one-family-out (bg-augment on the bank without F, tested on F; in brackets the whole-bank "
              "model on F):")
        for k, v in lo.items():
            a, f = v["acc"][v["left_out"]], v["left_out"]
            full = f" (whole bank {ref['acc'][f][0]:.1f})" if ref else ""
            print(f"  {f}: {a[0]:.1f} [{a[1]:.1f}, {a[2]:.1f}]{full} (clean {v['acc']['Clean'][0]:.1f})")
    print(f"\ntotal {seconds:.0f} s")


if __name__ == "__main__":
    main()
