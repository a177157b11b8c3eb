"""The one compositing kernel: no in-place edits, dtype/device kept, batched == unbatched, exact at m in {0, 1}."""
import numpy as np
import pytest
import torch

from bgbias.core.compose import compose, compose_np

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _inputs(dtype, device, batch=(), soft=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (*batch, 3, 9, 11)
    if dtype == torch.uint8:
        fg = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        bg = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    else:
        fg, bg = torch.rand(shape, generator=g).to(dtype), torch.rand(shape, generator=g).to(dtype)
    m = torch.rand((*batch, 9, 11), generator=g)
    if not soft:
        m = (m > 0.5).float()
    m[..., 0, :] = 1.0
    m[..., -1, :] = 0.0
    return fg.to(device), bg.to(device), m.to(device)


def check_kernel(kernel, fg, bg, m):
    """torchvision-style checks: inputs untouched, dtype/device kept, batched == per-item."""
    versions = [t._version for t in (fg, bg, m)]
    copies = [t.clone() for t in (fg, bg, m)]
    out = kernel(fg, bg, m)
    assert [t._version for t in (fg, bg, m)] == versions
    assert all(torch.equal(a, b) for a, b in zip((fg, bg, m), copies))
    assert out.dtype == fg.dtype and out.device == fg.device and out.shape == fg.shape
    if fg.ndim == 4:
        singles = torch.stack([kernel(fg[i], bg[i], m[i]) for i in range(fg.shape[0])])
        assert torch.equal(out, singles)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [(), (4,)])
def test_compose_check_kernel(device, dtype, batch):
    fg, bg, m = _inputs(dtype, device, batch)
    out = check_kernel(compose, fg, bg, m)
    ones, zeros = (m == 1).unsqueeze(-3).expand_as(fg), (m == 0).unsqueeze(-3).expand_as(fg)
    assert torch.equal(out[ones], fg[ones]), "foreground must be exact where m == 1"
    assert torch.equal(out[zeros], bg[zeros]), "background must be exact where m == 0"


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_soft_mask_blends(dtype):
    fg, bg, m = _inputs(dtype, "cpu", (2,))
    out = compose(fg, bg, m).double()
    want = m.unsqueeze(-3).double() * fg.double() + (1 - m.unsqueeze(-3).double()) * bg.double()
    tol = 0.5 if dtype == torch.uint8 else 1e-6
    assert (out - want).abs().max() <= tol


def test_mask_with_channel_dim_and_bool_mask_agree():
    fg, bg, m = _inputs(torch.float32, "cpu", (3,), soft=False)
    a = compose(fg, bg, m)
    assert torch.equal(a, compose(fg, bg, m.unsqueeze(-3)))
    assert torch.equal(a, compose(fg, bg, m.bool()))


def test_one_foreground_broadcasts_over_many_backgrounds():
    fg, bg, m = _inputs(torch.float32, "cpu", (5,))
    out = compose(fg[0][None], bg, m[0][None])
    assert out.shape == bg.shape
    for k in range(5):
        assert torch.equal(out[k], compose(fg[0], bg[k], m[0]))


def test_bad_inputs_raise_one_clear_error():
    fg, bg, m = _inputs(torch.float32, "cpu")
    with pytest.raises(ValueError, match="does not fit image shape"):
        compose(fg, bg, m[:, :5])
    with pytest.raises(TypeError, match="share a dtype"):
        compose(fg, bg.double(), m)
    with pytest.raises(TypeError, match="Mask must be float"):
        compose(fg, bg, (m * 255).to(torch.uint8))


def test_compose_np_matches_torch_kernel():
    rng = np.random.default_rng(0)
    fg, bg = rng.integers(0, 256, (2, 7, 8, 3), dtype=np.uint8)
    m = rng.random((7, 8)).astype(np.float32)
    out = compose_np(fg, bg, m)
    ref = compose(torch.from_numpy(fg).permute(2, 0, 1), torch.from_numpy(bg).permute(2, 0, 1), torch.from_numpy(m))
    assert out.dtype == np.uint8 and np.array_equal(out, ref.permute(1, 2, 0).numpy())


def test_uint8_fast_paths_give_the_bytes_of_the_plain_float_blend():
    """Bool masks (integer path) and small soft masks (blend only inside the mask's box), on HxWx3
    arrays viewed channels-last as the build passes them, equal round(lerp) over the whole frame."""
    g = np.random.default_rng(0)
    fg = g.integers(0, 256, (2, 40, 50, 3), dtype=np.uint8)
    bg = g.integers(0, 256, (2, 40, 50, 3), dtype=np.uint8)
    soft = np.zeros((2, 40, 50), np.float32)
    soft[:, 10:20, 12:30] = g.random((2, 10, 18), dtype=np.float32)   # support well under 60% of the frame
    soft[0, 12, 14] = 1.0
    t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731

    def reference(m):
        out = torch.lerp(t(bg).float(), t(fg).float(), torch.from_numpy(m)[:, None])
        return out.round_().clamp_(0, 255).to(torch.uint8)

    assert torch.equal(compose(t(fg), t(bg), torch.from_numpy(soft)), reference(soft))
    hard = soft > 0.5
    assert torch.equal(compose(t(fg), t(bg), torch.from_numpy(hard)), reference(hard.astype(np.float32)))
    one = compose(t(fg), t(bg), torch.from_numpy(soft[:1]))      # one mask broadcast over the batch
    assert torch.equal(one, reference(np.repeat(soft[:1], 2, axis=0)))
    empty = compose(t(fg), t(bg), torch.zeros(2, 40, 50))
    assert torch.equal(empty, t(bg))


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_one_hxw_mask_broadcasts_over_a_batch(dtype):
    """The docstring's promise: a plain [H, W] mask serves a whole [N, C, H, W] batch."""
    g = torch.Generator().manual_seed(0)
    fg = (torch.rand(4, 3, 8, 8, generator=g) * 255).to(dtype)
    bg = (torch.rand(4, 3, 8, 8, generator=g) * 255).to(dtype)
    m = torch.rand(8, 8, generator=g) > 0.5
    out = compose(fg, bg, m.float())
    for i in range(4):
        assert torch.equal(out[i], compose(fg[i], bg[i], m.float()))
    assert torch.equal(compose(fg, bg, m), out)
    with pytest.raises(ValueError, match="does not fit"):
        compose(fg, bg, torch.ones(2, 4, 1, 8, 8))


def _torch_ref(fg: np.ndarray, bg: np.ndarray, m: np.ndarray) -> np.ndarray:
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)  # noqa: E731
    return compose(t(fg), t(bg), torch.from_numpy(m)).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("kind", ["random", "k/512", "k/255", "halves", "hard_float", "bool", "empty", "full"])
def test_mask_plan_gives_the_bytes_of_the_torch_kernel(kind):
    """The build's numpy path (one MaskPlan per image, many composites) is the same kernel: byte for byte
    what :func:`compose` gives, for soft weights at every rounding edge (k/255, k/512, exactly 0.5), hard
    masks stored as float or bool, empty and full masks, and black (None) layers."""
    from bgbias.core.compose import MaskPlan

    g = np.random.default_rng(len(kind))
    for _ in range(25):
        h, w = (int(v) for v in g.integers(1, 60, 2))
        fg, bg = g.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        m = {"random": lambda: g.random((h, w), dtype=np.float32),
             "k/512": lambda: (g.integers(0, 513, (h, w)) / 512).astype(np.float32),
             "k/255": lambda: (g.integers(0, 256, (h, w)) / 255).astype(np.float32),
             "halves": lambda: np.where(g.random((h, w)) < 0.3, 0.5, g.integers(0, 2, (h, w))).astype(np.float32),
             "hard_float": lambda: g.integers(0, 2, (h, w)).astype(np.float32),
             "bool": lambda: g.random((h, w)) < 0.4,
             "empty": lambda: np.zeros((h, w), np.float32),
             "full": lambda: np.ones((h, w), np.float32)}[kind]()
        if kind == "random" and h > 4 and w > 4:     # soft support inside a box, as an object's mask
            m[: h // 3] = 0
            m[:, : w // 4] = 0
        plan = MaskPlan(m)
        black = np.zeros_like(fg)
        assert np.array_equal(plan.compose(fg, bg), _torch_ref(fg, bg, m))
        assert np.array_equal(plan.compose(None, bg), _torch_ref(black, bg, m))
        assert np.array_equal(plan.compose(fg, None), _torch_ref(fg, black, m))
        assert np.array_equal(compose_np(fg, bg, m), _torch_ref(fg, bg, m))
        out = plan.compose(fg, bg)
        assert out.dtype == np.uint8 and out.flags.c_contiguous and not np.shares_memory(out, bg)


def test_compose_np_takes_any_numeric_mask_as_the_torch_path_did():
    """0/1 integer and float64 masks are cast to float32 first (as the tensor path always did)."""
    g = np.random.default_rng(3)
    fg, bg = g.integers(0, 256, (2, 9, 11, 3), dtype=np.uint8)
    hard = g.integers(0, 2, (9, 11)).astype(np.uint8)
    soft = g.random((9, 11))
    assert np.array_equal(compose_np(fg, bg, hard), _torch_ref(fg, bg, hard.astype(np.float32)))
    assert np.array_equal(compose_np(fg, bg, soft), _torch_ref(fg, bg, soft.astype(np.float32)))


def test_bool_mask_on_float_images_equals_the_float_blend_of_a_0_1_mask():
    g = torch.Generator().manual_seed(5)
    fg, bg = torch.randn(4, 3, 9, 7, generator=g), torch.randn(4, 3, 9, 7, generator=g)
    m = torch.rand(4, 1, 9, 7, generator=g) > 0.5
    out = compose(fg, bg, m)
    assert torch.equal(out, compose(fg, bg, m.float())) and torch.equal(out, torch.where(m, fg, bg))
    assert torch.equal(compose(fg[0], bg, m[0, 0]), compose(fg[0], bg, m[0, 0].float()))   # broadcasting alike
