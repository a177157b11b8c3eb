"""Coarse-to-fine GrabCut falls back to the fine side when its coarse cut collapses (seen on COCO photos)."""
from __future__ import annotations

import numpy as np
import pytest
from test_masks import iou, scene

import bgbias.masks.methods as masks
from bgbias.core.sample import BadSample


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
