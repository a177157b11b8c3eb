"""Property tests (hypothesis): the readers and ``compose`` on random shapes, dtypes and values.

Readers either return the one canonical form (uint8 HxWx3 images, float32 HxW masks in [0, 1])
or raise ``BadSample``; nothing else escapes. ``compose`` keeps fg where the mask is 1, bg where
it is 0, stays between them elsewhere, and keeps the dtype.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from bgbias.core.compose import compose
from bgbias.core.io import read_image, read_mask
from bgbias.core.sample import BadSample

SETTINGS = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_])
SHAPES = st.one_of(hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
                   st.tuples(st.integers(1, 12), st.integers(1, 12), st.sampled_from([1, 2, 3, 4, 5])))


def _array(draw, dtype, shape):
    elements = None
    if np.dtype(dtype).kind == "f":
        elements = st.one_of(st.floats(-1e6, 1e6, width=32), st.sampled_from([np.nan, np.inf, -np.inf]))
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def arrays(draw):
    return _array(draw, draw(DTYPES), draw(SHAPES))


@SETTINGS
@given(arr=arrays(), fmt=st.sampled_from(["png", "tiff", "npy", "bytes"]), cut=st.integers(0, 400))
def test_readers_give_canonical_form_or_bad_sample(tmp_path, arr, fmt, cut):
    path = tmp_path / f"x.{fmt if fmt != 'bytes' else 'png'}"
    if fmt == "npy":
        np.save(path, arr)
    elif fmt == "bytes":                       # a truncated or garbled file
        buf = io.BytesIO()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, format="PNG")
        path.write_bytes(buf.getvalue()[:cut] + bytes(arr.astype(np.uint8).ravel()[:32]))
    else:
        try:
            Image.fromarray(arr).save(path)
        except (TypeError, ValueError, OSError, KeyError):
            return                              # PIL cannot write this dtype/shape: nothing to read
    for read in (lambda: read_image(path), lambda: read_mask(path), lambda: read_mask(path, arr.shape[:2])):
        try:
            out = read()
        except BadSample:
            continue
        if out.ndim == 3:
            assert out.dtype == np.uint8 and out.shape[2] == 3
        else:
            assert out.dtype == np.float32 and out.ndim == 2
            assert np.isfinite(out).all() and out.min(initial=0) >= 0 and out.max(initial=0) <= 1


@st.composite
def triples(draw):
    h, w, c = draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.sampled_from([1, 3]))
    lead = draw(st.sampled_from([(), (2,)]))
    dtype = draw(st.sampled_from([torch.uint8, torch.float32]))
    if dtype == torch.uint8:
        fg, bg = (torch.from_numpy(draw(hnp.arrays(np.uint8, lead + (c, h, w)))) for _ in range(2))
    else:
        vals = st.floats(-1e3, 1e3, width=32)
        fg, bg = (torch.from_numpy(draw(hnp.arrays(np.float32, lead + (c, h, w), elements=vals))) for _ in range(2))
    kind = draw(st.sampled_from(["bool", "binary", "soft"]))
    m = draw(hnp.arrays(np.float32, lead + (h, w), elements=st.floats(0, 1, width=32)))   # a mask per image
    mask = torch.from_numpy(m > 0.5) if kind == "bool" else torch.from_numpy(np.round(m) if kind == "binary" else m)
    return fg, bg, mask


@SETTINGS
@given(t=triples())
def test_compose_keeps_fg_bg_and_dtype(t):
    fg, bg, mask = t
    out = compose(fg, bg, mask)
    assert out.dtype == fg.dtype and out.shape == torch.broadcast_shapes(fg.shape, bg.shape)
    m = mask.float().unsqueeze(-3).expand_as(out)
    assert torch.equal(out[m == 1], fg.expand_as(out)[m == 1])
    assert torch.equal(out[m == 0], bg.expand_as(out)[m == 0])
    lo, hi = torch.minimum(fg, bg).float(), torch.maximum(fg, bg).float()
    tol = 0.51 if fg.dtype == torch.uint8 else 1e-3
    assert ((out.float() >= lo - tol) & (out.float() <= hi + tol)).all()


@SETTINGS
@given(t=triples())
def test_compose_refuses_mismatched_inputs(t):
    fg, bg, mask = t
    other = bg.float() if bg.dtype == torch.uint8 else bg.to(torch.uint8)
    with pytest.raises(TypeError):
        compose(fg, other, mask)
