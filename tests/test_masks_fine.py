"""Coarse-to-fine GrabCut (grabcut_fast): the fine pass, the ring retry, and the fallback when the coarse cut collapses."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_masks import iou, scene

import bgbias.masks.methods as masks
from bgbias.core.sample import BadSample, Sample
from bgbias.masks.methods import GrabCutMask, create_mask_method, grabcut_from_boxes


def _collapse_below(side: int, monkeypatch, reason: str = "grabcut_small: mask covers 0.0% of the box (< 10%) after 4 "
                    "tries") -> list[tuple[int, int]]:
    """Make GrabCut fail with ``reason`` on images no larger than ``side`` (empty at side 200 on some real photos)."""
    real, calls = masks._grabcut, []

    def fake(image, boxes, iterations, *a, **kw):
        calls.append((max(image.shape[:2]), iterations))
        if max(image.shape[:2]) <= side:
            raise BadSample(reason)
        return real(image, boxes, iterations, *a, **kw)

    monkeypatch.setattr(masks, "_grabcut", fake)
    return calls


def test_collapsed_coarse_cut_is_redone_at_the_fine_side(monkeypatch):
    img, truth, box = scene(3, 360, 480)
    expect = masks.grabcut_from_boxes(img, (box,), iterations=5, work_side=256) > 0.5   # single scale at 256
    calls = _collapse_below(100, monkeypatch)
    m = masks.grabcut_from_boxes(img, (box,), iterations=1, work_side=100, refine="fine", fine_side=256) > 0.5
    assert calls[0] == (100, 1) and len(calls) == 2              # the coarse try, then the fine side alone:
    assert calls[1][0] > 100 and calls[1][1] == masks.FALLBACK_ITERATIONS   # the crop at up to 256, 5 iterations
    assert np.array_equal(m, expect) and iou(m, truth) >= 0.8


def test_other_failures_are_not_retried(monkeypatch):
    img, _, box = scene(3, 360, 480)
    calls = _collapse_below(100, monkeypatch, "box_zero_area: every box has zero area inside the image")
    with pytest.raises(BadSample, match="box_zero_area"):
        masks.grabcut_from_boxes(img, (box,), iterations=1, work_side=100, refine="fine")
    assert len(calls) == 1


def blurry_scene(seed: int, h: int = 360, w: int = 480):
    """A scene with a thin limb (a 4-px bar) and a soft (Gaussian-blurred) object edge: what a low working side
    loses; returns (image, truth, tight box)."""
    img, truth, _ = scene(seed, h, w)
    fg = truth.astype(np.uint8)
    ys, xs = np.nonzero(fg)
    cy, x0 = int(ys.mean()), int(xs.max()) - 6
    limb = np.zeros_like(fg)
    limb[cy - 2:cy + 2, x0:min(w - 20, x0 + w // 5)] = 1
    limb &= ~fg.astype(bool)
    img[limb.astype(bool)] = img[fg.astype(bool)].mean(0).astype(np.uint8)
    truth = fg.astype(bool) | limb.astype(bool)
    img = cv2.GaussianBlur(img, (0, 0), 1.5)
    ys, xs = np.nonzero(truth)
    return img, truth, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def test_fine_refinement_lifts_the_coarse_segmentation_and_is_deterministic():
    """Coarse-to-fine GrabCut (1 iteration at side 64, 3 at side 256 from that mask and its GMMs) keeps the thin
    limb that the coarse side loses even with as many iterations, is as good overall on blurry-edged objects, stays
    in the (5%-enlarged) box, repeats exactly, and is grabcut_fast's default."""
    coarse, fine, limb_coarse, limb_fine = [], [], [], []
    for s in range(6):
        img, truth, box = blurry_scene(30 + s)
        limb = truth & ~scene(30 + s, *truth.shape)[1]
        a = grabcut_from_boxes(img, (box,), iterations=4, work_side=64) > 0.5
        b = grabcut_from_boxes(img, (box,), iterations=1, work_side=64, refine="fine", fine_side=256) > 0.5
        assert np.array_equal(b, grabcut_from_boxes(img, (box,), iterations=1, work_side=64, refine="fine",
                                                    fine_side=256) > 0.5)
        assert not (b & ~masks._box_region(masks._enlarge((box,), 0.05, *truth.shape), *truth.shape)).any()
        coarse.append(iou(a, truth))
        fine.append(iou(b, truth))
        limb_coarse.append((a & limb).sum() / limb.sum())
        limb_fine.append((b & limb).sum() / limb.sum())
    assert np.mean(limb_fine) >= np.mean(limb_coarse) + 0.3
    assert np.mean(fine) >= np.mean(coarse) - 0.01 and np.mean(fine) >= 0.85
    fast = create_mask_method("grabcut_fast")
    assert fast.params()["refine"] == "fine" and fast.params()["work_side"] == 200 and fast.iterations == 1
    assert create_mask_method("grabcut_fast", refine="guided").params()["work_side"] == 300
    assert fast.params() != create_mask_method("grabcut_fast", fine_side=500).params()   # a different cache key
    with pytest.raises(ValueError, match="fine_side"):
        create_mask_method("grabcut_fast", fine_side=100)


def test_fine_refinement_keeps_small_crops_and_several_boxes():
    """A crop already under the working side still gets the fine iterations (same size); several boxes work."""
    img, truth, box = scene(3)                                    # 120x160: the crop is under 200 px
    m = grabcut_from_boxes(img, (box,), iterations=1, work_side=200, refine="fine") > 0.5
    assert iou(m, truth) >= 0.8
    x0, y0, x1, y1 = box
    halves = ((x0, y0, (x0 + x1) // 2, y1), ((x0 + x1) // 2, y0, x1, y1))
    assert iou(grabcut_from_boxes(img, halves, iterations=1, work_side=64, refine="fine", fine_side=160) > 0.5,
               truth) >= 0.8


def test_ring_retry_makes_a_mask_when_the_box_covers_the_whole_photo():
    """A box covering the photo leaves GrabCut no background: the IN-9 tries fail (grabcut_error, as before), the
    fourth try (retries=3, grabcut_fast's default) takes the box's border ring as probable background."""
    ious = []
    for s in range(6):
        img, truth, (x0, y0, x1, y1) = scene(40 + s, 240, 320)
        img, truth = np.ascontiguousarray(img[y0 - 6:y1 + 6, x0 - 6:x1 + 6]), truth[y0 - 6:y1 + 6, x0 - 6:x1 + 6]
        whole = ((0, 0, img.shape[1], img.shape[0]),)
        with pytest.raises(BadSample, match="^grabcut_error"):
            grabcut_from_boxes(img, whole)
        m = grabcut_from_boxes(img, whole, retries=3)
        assert np.array_equal(m, grabcut_from_boxes(img, whole, retries=3))
        ious.append(iou(m > 0.5, truth))
        fast = create_mask_method("grabcut_fast", work_side=64, fine_side=160)(Sample(img, None, 0, "x", whole))
        assert iou(fast > 0.5, truth) >= 0.5
    assert np.mean(ious) >= 0.85 and np.mean(ious) > np.mean(truth) + 0.2   # better than the box as the mask
    assert create_mask_method("grabcut").retries == 2 and create_mask_method("grabcut_fast").retries == 3
    with pytest.raises(ValueError, match="retries in 0..3"):
        GrabCutMask(retries=4)
