"""Benchmark of GrabCut-from-box masks: speed (1 vs 2 workers), GrabCut calls of the IN-9 recipe, real-data IoU.

Run from the repo root:  python bench/masks.py [--realmasks ../shared/data/realmasks] [--n 24] [--only-settings]
0. speed / mean IoU per GrabCut setting (full resolution; working side of the boxes' crop; refinement none, band, guided,
   fine = coarse-to-fine);
1. masks/s at ImageNet-like size (400x500) on generated scenes, 1 and 2 worker processes;
2. the IN-9 recipe (``imagenet:`` source: one box, centre-crop rules) calls cv2.grabCut once per kept
   image and never for dropped ones (the published generator ran it twice per image);
3. real photos with true masks (third-party data, read in place, never copied): mean IoU of
   GrabCut-from-box against the truth per source, with the box itself as the baseline; the COCO
   reader's masks against the same truth; the IN-9 rules' drops on these photos.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_masks import ListSource, scene  # noqa: E402

import bgbias.masks.methods as masks
from bgbias.core.io import read_mask
from bgbias.masks.run import quality_summary, run_masks
from bgbias.sources.annotated import parse_voc_xml
from bgbias.sources.base import create_source
from bgbias.sources.masked import with_masks


class BigScenes(ListSource):
    def __init__(self, n: int):
        self.spec, self.classes, self.scan_dropped = "bench-scenes", ["thing"], []
        self.scenes = [scene(1000 + s, 400, 500) for s in range(n)]


def bench_speed(n: int) -> None:
    src = with_masks(BigScenes(n), "grabcut", cache=False)
    t = time.perf_counter()
    recs = run_masks(src, None, 1)
    one = n / (time.perf_counter() - t)
    ious = [_iou(src.load(i).mask > 0.5, src.base.scenes[i][1]) for i in range(min(4, n))]
    print(f"speed: {n} GrabCut masks 400x500, 1 worker: {one:.2f} masks/s (IoU vs truth on 4: {np.mean(ious):.3f}; "
          f"kept {sum('reason' not in r for r in recs)})")
    run_masks(src, None, 2, indices=[0, 1])          # start the fork server (imports bgbias once)
    t = time.perf_counter()
    run_masks(src, None, 2)
    two = n / (time.perf_counter() - t)
    print(f"speed: 2 workers: {two:.2f} masks/s (incl. starting 2 forked workers) -> {two / one:.2f}x of 1 worker "
          f"(2 cores, shared with other jobs)")


def bench_in9_calls(tmp: Path) -> None:
    images, boxes = tmp / "in" / "images", tmp / "in" / "boxes"
    n_kept_expected = 0
    for k in range(12):
        img, _, (x0, y0, x1, y1) = scene(2000 + k, 400, 500)
        cname = f"c{k % 3}"
        (images / cname).mkdir(parents=True, exist_ok=True)
        (boxes / cname).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(images / cname / f"i{k}.png"), img[:, :, ::-1])
        objs = [(x0, y0, x1, y1)]
        if k % 4 == 1:
            objs.append((10, 10, 60, 60))          # two boxes -> box_count
        elif k % 4 == 2:
            objs = [(3, 3, 498, 398)]              # covers the crop -> box_crop_cover
        else:
            n_kept_expected += 1
        xml = "".join(f"<object><name>{cname}</name><bndbox><xmin>{a + 1}</xmin><ymin>{b + 1}</ymin><xmax>{c}</xmax>"
                      f"<ymax>{d}</ymax></bndbox></object>" for a, b, c, d in objs)
        (boxes / cname / f"i{k}.xml").write_text(f"<annotation><size><width>500</width><height>400</height></size>"
                                                 f"{xml}</annotation>")
    calls = []
    real = cv2.grabCut
    masks.cv2.grabCut = lambda *a: (calls.append(1), real(*a))[1]
    try:
        src = create_source(f"imagenet:{images}", boxes=str(boxes), cache=False)
        recs = run_masks(src, None, 1)
    finally:
        masks.cv2.grabCut = real
    kept = sum("reason" not in r for r in recs)
    s = quality_summary(recs)
    print(f"in9 recipe: {len(recs)} images, {kept} kept (expected {n_kept_expected}), cv2.grabCut calls: {len(calls)} "
          f"-> {len(calls) / max(kept, 1):.2f} per kept image; drops {s['drops_by_rule']}")
    assert len(calls) == kept == n_kept_expected, "GrabCut must run exactly once per kept image"


def family(source: str) -> str:
    return "coco" if source.startswith("coco") else source


def bench_real(root: Path, workers: int, limit: int | None = None) -> None:
    if not (root / "manifest.csv").is_file():
        print(f"real data: {root} not found; skipped (pass --realmasks DIR)")
        return
    rows = list(csv.DictReader(open(root / "manifest.csv")))
    src = create_source(f"imagenet:{root / 'images'}", boxes=str(root / "annotations" / "voc_derived"),
                        box_mode="union", crop_rules=False, cache=False)
    by_id = {r["id"]: r for r in rows}
    t = time.perf_counter()
    ids = src.ids()
    results = _grabcut_all(src, workers, None if limit is None else list(range(0, len(src), len(src) // limit))[:limit])
    dt = time.perf_counter() - t
    per: dict[str, dict[str, list]] = {}
    iou_by_index: dict[int, float] = {}
    for i, res in results.items():
        row = by_id[ids[i]]
        truth = read_mask(root / row["mask"]) > 0.5
        fam = per.setdefault(family(row["source"]), {"gc": [], "box": [], "one_box_gc": [], "drop": [],
                                                         "ok": []})
        ann = parse_voc_xml(root / "annotations" / "voc_derived" / row["class"] / f"{row['id']}.xml")
        boxes = [o.box for o in ann.objects if o.name == row["class"]] or [o.box for o in ann.objects]
        region = masks._box_region(tuple(boxes), *truth.shape)
        fam["box"].append(_iou(region, truth))
        if isinstance(res, str):
            fam["drop"].append(res)
            fam["gc"].append(0.0)
            fam["ok"].append(False)
            continue
        fam["gc"].append(_iou(res, truth))
        fam["ok"].append(True)
        iou_by_index[i] = fam["gc"][-1]
        if len(boxes) == 1:
            fam["one_box_gc"].append(fam["gc"][-1])
    print(f"real data: {len(results)} photos in {dt:.1f} s ({workers} workers); GrabCut from the annotation box(es) "
          f"(union of the label's boxes) vs the true mask:")
    allg = []
    for fam, d in sorted(per.items()):
        allg += d["gc"]
        one = f", single-box images {np.mean(d['one_box_gc']):.3f} (n={len(d['one_box_gc'])})" if d["one_box_gc"] else ""
        ok = [g for g, r in zip(d["gc"], d["ok"]) if r]
        rules = {r: sum(x.split(":")[0] == r for x in d["drop"]) for r in sorted({x.split(":")[0] for x in d["drop"]})}
        print(f"  {fam:9s} n={len(d['gc']):3d}  mean IoU GrabCut {np.mean(d['gc']):.3f} (median "
              f"{np.median(d['gc']):.3f}; failures count 0), box-as-mask {np.mean(d['box']):.3f}{one}; "
              f"failed {len(d['drop'])} {rules or ''}; mean IoU of the {len(ok)} masks made {np.mean(ok):.3f}")
    print(f"  all       n={len(allg):3d}  mean IoU GrabCut {np.mean(allg):.3f}")
    rules = create_source(f"imagenet:{root / 'images'}", boxes=str(root / "annotations" / "voc_derived"),
                          cache=False)
    drops: dict[str, int] = {}
    kept_iou = []
    for i in range(len(rules)):
        try:
            rules.rules.apply(rules.base.load(i))
            if i in results:
                kept_iou.append(iou_by_index.get(i, 0.0))
        except masks.BadSample as e:
            drops[e.reason.split(":")[0]] = drops.get(e.reason.split(":")[0], 0) + 1
    print(f"  IN-9 rules on these photos (before GrabCut): {len(rules) - sum(drops.values())} kept of {len(rules)}, "
          f"drops {drops}; mean GrabCut IoU on the kept ones {np.mean(kept_iou):.3f} (n={len(kept_iou)})")
    coco = create_source(f"coco:{root / 'annotations' / 'coco' / 'instances_realmasks.json'}:{root}",
                         classes=["person", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
                                  "giraffe", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
                                  "boat"])
    cids = coco.ids()
    exact = [_iou(coco.load(i).mask > 0.5, read_mask(root / by_id[cid]["mask"]) > 0.5) for i, cid in enumerate(cids)
             if cid in by_id]
    print(f"  COCO reader (coco: source, polygons+RLE) vs the true masks: n={len(exact)}, mean IoU {np.mean(exact):.4f}, "
          f"exact {sum(e == 1.0 for e in exact)}; images without the classes: {coco.not_in_classes}")
    voc = create_source(f"voc:{root / 'annotations' / 'voc'}", cache=False)
    s = quality_summary(run_masks(voc, None, workers))
    print(f"  VOC originals (voc: source, boxes only -> GrabCut): {s['masks']} masks, mean area "
          f"{s['mean_area_fraction']}, drops {s['drops_by_rule']} (no true masks to score)")


SETTINGS = [("full resolution", "none", dict()),
            ("full resolution, ring retry", "none", dict(retries=3)),
            ("200 (crop)", "none", dict(work_side=200)),
            ("300 (crop)", "none", dict(work_side=300)),
            ("300 (crop)", "guided", dict(work_side=300, refine="guided")),
            ("400 (crop)", "none", dict(work_side=400)),
            ("400 (crop)", "band", dict(work_side=400, refine="band")),
            # coarse-to-fine: 1 iteration at 200 (the costly first cut), then N at the fine side from its GMMs;
            # "ring retry": a 4th try when the box leaves no background (retries=3, grabcut_fast's default)
            ("200x1 -> 400x3, IN-9 retries", "fine", dict(work_side=200, iterations=1, refine="fine")),
            ("200x1 -> 400x2 (crop)", "fine", dict(work_side=200, iterations=1, refine="fine", fine_iterations=2,
                                                   retries=3)),
            ("200x1 -> 400x3 = grabcut_fast", "fine", dict(work_side=200, iterations=1, refine="fine", retries=3)),
            ("200x1 -> 460x3 (crop)", "fine", dict(work_side=200, iterations=1, refine="fine", fine_side=460,
                                                   retries=3))]
# Rows of earlier runs (bench/RESULTS.md): "300 (whole photo, no crop)", "200 (crop) + band", "300 (crop) + band".


def label_boxes(root: Path, row: dict) -> tuple:
    """The photo's annotation boxes of its class (VOC-style XML), as a real build gets them."""
    ann = parse_voc_xml(root / "annotations" / "voc_derived" / row["class"] / f"{row['id']}.xml")
    return tuple([o.box for o in ann.objects if o.name == row["class"]] or [o.box for o in ann.objects])


def bench_settings(root: Path, every: int, start: int = 0, rows: list[str] | None = None) -> list[dict]:
    """Speed / IoU per GrabCut setting on every ``every``-th real photo (the label's annotation boxes), 1 process.

    A failed mask (``grabcut_small``) counts IoU 0; the interval is a 95% bootstrap over photos (2000 resamples).
    ``start``: the first photo (another offset is a held-out subset); ``rows``: only the settings whose number in
    ``SETTINGS`` (0 = full resolution, always run as the speed reference) is listed.
    """
    if not (root / "manifest.csv").is_file():
        print(f"settings: {root} not found; skipped")
        return []
    chosen = [s for k, s in enumerate(SETTINGS) if rows is None or k == 0 or str(k) in rows]
    rows = list(csv.DictReader(open(root / "manifest.csv")))[start::every]
    photos = [(masks.cv2.cvtColor(masks.cv2.imread(str(root / r["image"])), masks.cv2.COLOR_BGR2RGB),
               read_mask(root / r["mask"]) > 0.5, label_boxes(root, r)) for r in rows]
    print(f"settings on {len(photos)} real photos (every {every}th from #{start}; the label's annotation boxes; 1 process; "
          f"failures count IoU 0):")
    print(f"  {'working side':30s} {'refine':7s} {'photos/CPU-s':>12s} {'vs full':>8s}  mean IoU [95% bootstrap]  failed"
          f"  (photos per CPU-second of this process: wall time on shared cores is noise)")
    base, rng, table = None, np.random.default_rng(0), []
    for name, refine, kw in chosen:
        if refine == "guided" and not hasattr(masks.cv2, "ximgproc"):
            print(f"  {name:30s} {refine:7s} skipped: needs opencv-contrib (cv2.ximgproc)")
            continue
        t, ious, failed = time.process_time(), [], 0
        for img, truth, boxes in photos:
            try:
                m = masks.grabcut_from_boxes(img, boxes, **kw) > 0.5
            except masks.BadSample:
                m, failed = np.zeros_like(truth), failed + 1
            ious.append(_iou(m, truth))
        rate = len(photos) / (time.process_time() - t)
        base = base or rate
        boot = np.mean(np.asarray(ious)[rng.integers(0, len(ious), (2000, len(ious)))], 1)
        print(f"  {name:30s} {refine:7s} {rate:12.2f} {rate / base:7.1f}x  {np.mean(ious):.3f} "
              f"[{np.quantile(boot, 0.025):.3f}, {np.quantile(boot, 0.975):.3f}]    {failed}", flush=True)
        table.append({"setting": name, "refine": refine, "photos": len(photos), "photos_per_cpu_s": round(rate, 3),
                      "vs_full": round(rate / base, 2), "mean_iou": round(float(np.mean(ious)), 3),
                      "ci95": [round(float(np.quantile(boot, q)), 3) for q in (0.025, 0.975)], "failed": failed})
    return table


def _grabcut_all(src, workers: int, indices: list[int] | None = None) -> dict:
    """GrabCut for every item (or ``indices``) in a pool; returns {index: bool mask | drop reason}."""
    with tempfile.TemporaryDirectory() as d:
        recs = run_masks(src, d, workers, indices)
        out = {}
        for r in recs:
            if "reason" in r:
                out[r["index"]] = r["reason"]
            else:
                cdir = next((Path(d) / "fg_mask" / "val").glob(f"{r['label']:02d}_*"))
                out[r["index"]] = np.load(cdir / f"{r['id']}.npy") > 0.5
        return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--realmasks", type=Path, default=REPO.parent / "shared" / "data" / "realmasks",
                   help="the realmasks folder (in a worktree: /work/shared/data/realmasks)")
    p.add_argument("--n", type=int, default=24, help="generated scenes for the speed test")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--skip-real", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--limit", type=int, help="real data: score only this many photos (spread over the classes)")
    p.add_argument("--settings-every", type=int, default=12, help="settings table: every k-th real photo")
    p.add_argument("--settings-start", type=int, default=0, help="settings table: the first photo (a held-out offset)")
    p.add_argument("--settings-rows", help="settings table: only these rows of SETTINGS, e.g. 3,9 (row 0 always runs)")
    p.add_argument("--only-settings", action="store_true")
    p.add_argument("--json", help="also write the settings table the README reads (e.g. docs/bench/masks.json)")
    a = p.parse_args()
    table = bench_settings(a.realmasks.resolve(), a.settings_every, a.settings_start,
                           a.settings_rows.split(",") if a.settings_rows else None)
    if a.json and table:
        Path(a.json).write_text(json.dumps({"command": "python bench/masks.py " + " ".join(sys.argv[1:]),
                                            "settings": table}, indent=1) + "\n")
    if a.only_settings:
        return
    if not a.skip_speed:
        bench_speed(a.n)
        with tempfile.TemporaryDirectory() as tmp:
            bench_in9_calls(Path(tmp))
    if not a.skip_real:
        bench_real(a.realmasks.resolve(), a.workers, a.limit)


if __name__ == "__main__":
    main()
