"""What a build worker does: the per-chunk tasks of the three passes of :func:`bgbias.synth.build.build`.

Each worker process holds the source, config and plan in ``_STATE`` (set once by
:func:`_init_worker`, so tasks carry only chunk indices). Tasks write their files
atomically and return records; the main process writes the manifest.
"""
from __future__ import annotations

import io
import os
from typing import Any, Sequence

import cv2
import numpy as np

from bgbias.core.io import OutputError, atomic_write_bytes, write_npy, write_png
from bgbias.core.layout import MASK_DIR, safe_join
from bgbias.core.sample import BadSample, Drop, Sample, check_mask_usable
from bgbias.synth.backgrounds import MeanBackground, only_bg_t, resize_crop
from bgbias.synth.variants import render_variants


def _init_worker(state: dict) -> None:
    """Per-process state (source, variants, config, OUT); one torch/cv2 thread per worker.

    One thread: per-image tensors are small, and a multi-threaded pool on busy
    cores made each tiny op take milliseconds instead of microseconds.
    """
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    _STATE.clear()
    _DIRS.clear()
    _STATE.update(state)


def _prepared(i: int) -> Sample:
    """Load sample ``i``, resize it and check its mask; BadSample carries ``stage``."""
    src, cfg = _STATE["source"], _STATE["config"]
    try:
        s = src.load(i)
    except BadSample as e:
        e.stage = "load"
        raise
    except Exception as e:  # a reader bug or exotic file must not stop the build
        bad = BadSample(f"cannot load ({type(e).__name__}: {e})", _STATE["ids"][i], rule="load_error",
                        values={"error": type(e).__name__})
        bad.stage = "load"
        raise bad from None
    try:
        if s.mask is None:
            raise BadSample(f"no foreground mask for {s.id} ({MASK_HINT})", rule="no_mask", values={"id": s.id})
        before = float((s.mask > 0.5).mean()) if cfg.size is not None else None
        s = fit_sample(s, cfg.size)
        if cfg.mask_threshold is not None:     # --binary-masks: what the official script reads
            s = s.with_(mask=(s.mask >= cfg.mask_threshold).astype(np.float32))
        try:
            check_mask_usable(s.mask)
        except BadSample as e:
            if before is None or e.drop.rule != "mask_empty" or before < 1e-4:
                raise
            h, w = cfg.size
            raise BadSample(f"the centre crop to {h}x{w} cut the object out ({100 * before:.2g}% of the image was "
                            f"foreground before the crop, none after)", rule="crop_cut_object",
                            values={"size": f"{h}x{w}", "fraction_before": round(before, 6)}) from None
    except BadSample as e:
        e.stage = "mask"
        raise
    return s


MASK_HINT = "give --masks DIR or --masks-from grabcut"


def _drop(i: int, exc: BaseException, stage: str | None = None) -> dict:
    drop = exc.drop if isinstance(exc, BadSample) else Drop("unexpected_error", f"{type(exc).__name__}: {exc}",
                                                             {"error": type(exc).__name__})
    return {"i": i, "id": _STATE["ids"][i], **drop.to_dict(), "stage": stage or getattr(exc, "stage", "variant")}


def _fit_task(chunk: Sequence[int]) -> dict:
    bg = MeanBackground(True, _STATE["fit_size"])
    samples = []
    for i in chunk:
        try:
            samples.append(_prepared(i))
        except Exception:   # dropped samples are recorded by the samples pass
            continue
    return {"sums": bg.sums(samples)}


def _sample_task(task: dict) -> list[dict]:
    cfg, variants = _STATE["config"], _STATE["variants"]
    plain = [v for v in variants if v.pairing is None]
    need_tiles = any(v.pairing for v in variants)
    records, offset, cache = [], 0, None
    try:
        for i in task["chunk"]:
            paths = {v.name: _path(v.dirname, i) for v in plain}
            mpath = _path(MASK_DIR, i, ".npy")
            have_mask = os.path.exists(mpath)                 # one stat per file: a fresh build has none
            todo = [v for v in plain if not os.path.exists(paths[v.name])]
            if have_mask and not todo:
                records.append({"i": i})
                continue
            try:
                s = _prepared(i)
                images = render_variants(s, todo, cfg.seed)
                if need_tiles:                                # a partner must have an Only-BG-T background
                    tiled = images["only_bg_t"] if "only_bg_t" in images else only_bg_t(s.image, s.object_boxes())
            except Exception as e:  # never crash mid-build: record and go on
                records.append(_drop(i, e))
                continue
            for v in todo:
                _write_image(paths[v.name], images[v.name])
            if not have_mask:
                write_npy(mpath, s.mask.astype(np.float32))
            rec: dict[str, Any] = {"i": i}
            if need_tiles:
                h, w = s.size
                key = task.get("key", f"{task['k']:06d}")
                try:
                    if cache is None:  # streamed to a temp file, renamed when the chunk is done
                        os.makedirs(os.path.join(_STATE["out"], CACHE), exist_ok=True)
                        cache = open(_cache_file(key) + f".{os.getpid()}.tmp", "wb")
                    cache.write(np.ascontiguousarray(s.image).data)
                    cache.write(np.ascontiguousarray(tiled).data)
                except OSError as e:
                    raise OutputError.of(_cache_file(key), e) from None
                rec["cache"] = (key, offset, h, w)
                offset += 2 * h * w * 3
            records.append(rec)
    finally:
        if cache is not None:
            cache.close()
    if cache is not None:
        os.replace(cache.name, _cache_file(task.get("key", f"{task['k']:06d}")))
    return records


def _cache_file(key: str) -> str:
    """One file per chunk and run: the run token in the name means no run can read another run's offsets."""
    return os.path.join(_STATE["out"], CACHE, f"{key}.{_STATE['run']}.bin")


def split_task(fn, task) -> list[tuple[Any, int]]:
    """``task`` cut into one task per sample (with that sample's index), to find the one that crashes a worker."""
    if fn is _fit_task:
        return [([i], i) for i in task]
    if fn is _sample_task:
        return [({"chunk": [i], "k": task["k"], "key": f"{task['k']:06d}-{i}"}, i) for i in task["chunk"]]
    return [({"chunk": [i], "partners": task["partners"], "cache": task["cache"]}, i) for i in task["chunk"]]


def crash_record(fn, task, i: int, state: dict, exc: BaseException) -> Any:
    """The result a task of one sample gives when that sample killed its worker process: a named drop."""
    drop = Drop("worker_crash", f"the worker process died on this sample ({exc})", {"error": str(exc)}).to_dict()
    sid = state["ids"][i]
    if fn is _fit_task:
        return None
    if fn is _sample_task:
        return [{"i": i, "id": sid, **drop, "stage": "load"}]
    names = [name for name, p in task["partners"].items() if sid in p]
    return [{"i": i, "id": sid, **drop, "stage": "variant", "variant": ",".join(names)}] if names else []


def _cached(i: int, which: int) -> np.ndarray | None:
    """Sample ``i``'s original (which=0) or Only-BG-T (which=1) from the chunk cache, if pass 1 left it.

    The cache files a mixed task reads stay open for the task (:data:`_OPEN`, closed by it): one
    seek and read per image instead of an open per image.
    """
    loc = _STATE.get("cache", {}).get(i)
    if loc is None:
        return None
    k, offset, h, w = loc
    n = h * w * 3
    name = _cache_file(k)
    f = _OPEN.get(name)
    if f is None:
        if len(_OPEN) >= 64:
            _close_cache()
        f = _OPEN[name] = open(name, "rb")
    f.seek(offset + which * n)
    arr = np.empty((h, w, 3), np.uint8)
    if f.readinto(memoryview(arr).cast("B")) != n:
        raise BadSample(f"build cache for chunk {k} is truncated")
    return arr


def _close_cache() -> None:
    while _OPEN:
        _OPEN.popitem()[1].close()


def _load_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    """The ``fg_mask`` file pass 1 wrote (float32 HxW): one read when its header is the one ``np.save`` writes
    for that shape, else ``np.load``."""
    head = _NPY_HEADERS.get(shape)
    if head is None:
        buf = io.BytesIO()
        np.save(buf, np.zeros(shape, np.float32), allow_pickle=False)
        head = _NPY_HEADERS[shape] = buf.getvalue()[:-4 * shape[0] * shape[1]]
    data = bytearray(os.path.getsize(path))
    with open(path, "rb") as f:
        got = f.readinto(data)
    if got != len(data) or len(data) != len(head) + 4 * shape[0] * shape[1] or data[:len(head)] != head:
        return np.load(path, allow_pickle=False)
    return np.frombuffer(data, np.float32, offset=len(head)).reshape(shape)


def _write_image(path: str, image: np.ndarray) -> None:
    """PNG, or JPEG (quality 95, 4:4:4; deterministic bytes for one libjpeg) for builds the official scripts read."""
    cfg = _STATE["config"]
    if cfg.image_format == "jpeg":
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]),
                               [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
        if not ok:
            raise BadSample(f"cannot encode {os.path.basename(path)} as JPEG")
        atomic_write_bytes(path, buf.tobytes())
    else:
        write_png(path, image, cfg.png_compression)


def _lossless() -> bool:
    """Whether images read back from disk equal the rendered ones (PNG); JPEG read-backs are re-rendered instead."""
    return _STATE["config"].image_format == "png"


def _path(variant_dir: str, i: int, ext: str | None = None) -> str:
    """OUT/<variant_dir>/<split>/<class>/<id><ext> (ext: the build's image format by default); folders checked by
    ``safe_join`` once, ids checked in :func:`build`. A plain string: pathlib costs more than the stat."""
    if ext is None:
        ext = ".JPEG" if _STATE["config"].image_format == "jpeg" else ".png"
    cdir, split = _STATE["class_dirs"][_STATE["labels"][i]], _STATE["splits"][i]
    key = (variant_dir, split, cdir)
    d = _DIRS.get(key)
    if d is None:
        d = _DIRS[key] = os.fspath(safe_join(_STATE["out"], variant_dir, split, cdir))
    return os.path.join(d, _STATE["ids"][i] + ext)


def _read_png(path: str) -> np.ndarray:
    arr = cv2.imread(path, cv2.IMREAD_COLOR)
    if arr is None:
        raise BadSample(f"cannot read back {os.path.basename(path)}")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def _foreground(i: int) -> Sample:
    p, mp_ = _path("original", i), _path(MASK_DIR, i, ".npy")
    image = _cached(i, 0)
    if image is not None:
        return Sample(image, _load_mask(mp_, image.shape[:2]), _STATE["labels"][i], _STATE["ids"][i])
    if "original" in _STATE["written"] and os.path.exists(p) and os.path.exists(mp_) and _lossless():
        return Sample(_read_png(p), np.load(mp_, allow_pickle=False), _STATE["labels"][i], _STATE["ids"][i])
    return _prepared(i)


def _background(j: int) -> np.ndarray:
    cached = _cached(j, 1)
    if cached is not None:
        return cached
    p = _path("only_bg_t", j)
    if "only_bg_t" in _STATE["written"] and os.path.exists(p) and _lossless():
        return _read_png(p)
    s = _prepared(j)
    return only_bg_t(s.image, s.object_boxes())


def _mixed_task(task: dict) -> list[dict]:
    cfg = _STATE["config"]
    _STATE["cache"] = task["cache"]
    paired = [v for v in _STATE["variants"] if v.pairing]
    records = []
    try:
        for i in task["chunk"]:
            _mixed_one(i, task, paired, cfg, records)
    finally:
        _close_cache()
    return records


def _mixed_one(i: int, task: dict, paired: list, cfg: Any, records: list[dict]) -> None:
    """The Mixed-* images of foreground ``i``: its pixels on each partner's Only-BG-T."""
    sid = _STATE["ids"][i]
    paths = {v.name: _path(v.dirname, i) for v in paired if sid in task["partners"][v.name]}
    todo = [v for v in paired if v.name in paths and not os.path.exists(paths[v.name])]
    if not todo:
        return
    try:
        s = _foreground(i)
        bgs, cache = {}, {}                       # per foreground only: memory stays one sample's worth
        for v in todo:
            j = task["partners"][v.name][sid]
            if j not in cache:
                cache[j] = _background(j)
            bgs[v.name] = cache[j]
        images = render_variants(s, todo, cfg.seed, bgs)
    except Exception as e:
        records.append({**_drop(i, e, "variant"), "variant": ",".join(v.name for v in todo)})
        return
    for v in todo:
        _write_image(paths[v.name], images[v.name])


CACHE = ".bgbias-cache"          # raw originals + Only-BG-T per chunk, for the mixed pass; removed at the end


def _bounded_resize_crop(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """:func:`resize_crop` with memory bounded by the output size.

    Resizing first and cropping after would make a 1x20000 image at 224x224 a 224x4,480,000
    intermediate (gigabytes); when the resized image would be over 4x the output, the source
    region the crop keeps is cut out first and only it is resized (same geometry).
    """
    (h, w), (th, tw) = arr.shape[:2], size
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    if nh * nw <= 4 * th * tw:
        return resize_crop(arr, size)
    oy, ox = (nh - th) // 2, (nw - tw) // 2
    y0, x0 = int(np.floor(oy / scale)), int(np.floor(ox / scale))
    y1, x1 = min(h, int(np.ceil((oy + th) / scale)) + 1), min(w, int(np.ceil((ox + tw) / scale)) + 1)
    region = np.ascontiguousarray(arr[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)])
    # the region resized by the same scale, then the crop's offset inside it
    rh, rw = max(th, round(region.shape[0] * scale)), max(tw, round(region.shape[1] * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = cv2.resize(region, (rw, rh), interpolation=interp)
    dy, dx = min(max(0, round(oy - y0 * scale)), rh - th), min(max(0, round(ox - x0 * scale)), rw - tw)
    return np.ascontiguousarray(out[dy:dy + th, dx:dx + tw])


def fit_sample(sample: Sample, size: tuple[int, int] | None) -> Sample:
    """Resize image, mask and boxes together (shorter side to cover ``size``, then centre crop)."""
    if size is None or sample.size == tuple(size):
        return sample
    (h, w), (th, tw) = sample.size, size
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    oy, ox = (nh - th) // 2, (nw - tw) // 2
    boxes = []
    for x0, y0, x1, y1 in sample.boxes:
        b = (min(tw, max(0, round(x0 * nw / w) - ox)), min(th, max(0, round(y0 * nh / h) - oy)),
             min(tw, max(0, round(x1 * nw / w) - ox)), min(th, max(0, round(y1 * nh / h) - oy)))
        if b[2] > b[0] and b[3] > b[1]:
            boxes.append(b)
    mask = None if sample.mask is None else np.clip(_bounded_resize_crop(sample.mask.astype(np.float32), size), 0, 1)
    return sample.with_(image=_bounded_resize_crop(sample.image, size), mask=mask, boxes=tuple(boxes))


_STATE: dict[str, Any] = {}
_DIRS: dict[tuple[str, str, str], str] = {}
_OPEN: dict[str, Any] = {}                               # cache files open for the running mixed task
_NPY_HEADERS: dict[tuple[int, int], bytes] = {}
