"""Model loading (torchvision / TorchScript / checkpoint / module), safe unpickling, preprocessing."""
from __future__ import annotations

import io

import pytest
import torch

from bgbias.models.checkpoint import save_checkpoint
from bgbias.models.load import (
    IN9_MEAN,
    IN9_STD,
    LoadedModel,
    Preprocess,
    load_model,
    make_preprocess,
)
from bgbias.models.nets import SmallCNN

torch.set_num_threads(1)


class Evil:
    """Any custom class: unpickling it needs code, so weights_only loading must refuse it."""


def small(classes: int = 3, width: int = 4) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return SmallCNN(num_classes=classes, width=width).eval()


def x() -> torch.Tensor:
    return torch.linspace(0, 1, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)


def test_torchvision_spec_with_state_dict_infers_classes(tmp_path):
    net = small(width=32)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    lm = load_model("torchvision:small-cnn", weights=str(tmp_path / "w.pth"))
    assert not lm.module.training
    torch.testing.assert_close(lm.logits(x()), net(x()))


def test_weights_for_another_architecture_name_the_arch(tmp_path):
    torch.save(small().state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match="does not fit architecture 'resnet18'"):
        load_model("torchvision:resnet18", weights=str(tmp_path / "w.pth"), num_classes=3)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript(tmp_path):
    net = small()
    torch.jit.script(net).save(str(tmp_path / "m.pt"))
    lm = load_model(f"torchscript:{tmp_path / 'm.pt'}")
    torch.testing.assert_close(lm.logits(x()), net(x()))


def test_checkpoint_carries_classes_preprocess_and_families(tmp_path):
    net = small(width=8)
    meta = {"arch": "small-cnn", "arch_kwargs": {"width": 8}, "classes": ["a", "b", "c"],
            "preprocess": {"size": [16, 16], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
            "families_seen": ["color", "texture:stripes"]}
    save_checkpoint(tmp_path / "m.pt", net.state_dict(), meta)
    lm = load_model(f"checkpoint:{tmp_path / 'm.pt'}")
    assert lm.classes == ["a", "b", "c"] and lm.families_seen == ["color", "texture:stripes"]
    assert lm.preprocess.size == (16, 16) and lm.preprocess.mean == (0.5, 0.5, 0.5)
    torch.testing.assert_close(lm.logits(x()), net(x()))


def test_unsafe_pickle_is_refused_with_how_to_allow(tmp_path):
    buf = io.BytesIO()
    torch.save({"format": "bgbias-checkpoint/1", "state_dict": small().state_dict(), "meta": {"x": Evil()}}, buf)
    (tmp_path / "evil.pt").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="Refused to load .*--trust-checkpoint"):
        load_model(f"checkpoint:{tmp_path / 'evil.pt'}")
    with pytest.raises(ValueError, match="--trust-checkpoint"):
        load_model("torchvision:small-cnn", weights=str(tmp_path / "evil.pt"))
    with pytest.raises(ValueError, match="no 'arch'"):   # trusted: loads, then fails for a plain reason
        load_model(f"checkpoint:{tmp_path / 'evil.pt'}", trust=True)


def test_module_factory_spec():
    lm = load_model("module:bgbias.models.nets:small_cnn", num_classes=4)
    assert lm.logits(x()).shape == (2, 4)


@pytest.mark.parametrize("spec, match", [("resnet18", "valid: torchvision:<arch>"), ("onnx:m.onnx", "valid"),
                                         ("torchvision:nonet", "Unknown architecture 'nonet'"),
                                         ("torchscript:/no/file.pt", "does not exist"),
                                         ("checkpoint:/no/file.pt", "does not exist"),
                                         ("module:no_such_mod:f", "Cannot import")])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        load_model(spec)


def test_nan_logits_fail_loudly():
    class NaNNet(torch.nn.Module):
        def forward(self, t):
            return torch.full((len(t), 3), float("nan"))

    with pytest.raises(ValueError, match="NaN"):
        LoadedModel(NaNNet(), "module:x:nan").logits(x())


def test_preprocess_presets_and_overrides():
    assert make_preprocess("imagenet").size == (224, 224)
    assert make_preprocess("in9").mean == IN9_MEAN and make_preprocess("in9").std == IN9_STD
    assert make_preprocess(None) == make_preprocess("none")
    pp = make_preprocess("in9", size=[8])
    assert pp.size == (8, 8) and pp.name == "in9+custom"
    default = Preprocess("checkpoint", (4, 4))
    assert make_preprocess(None, default=default) == default
    for kw, match in [(dict(preset="imgnet"), "valid: imagenet, in9, none"), (dict(std=[1, 0, 1]), "positive"),
                      (dict(mean=[1, 2]), "3"), (dict(size=[0]), "positive")]:
        with pytest.raises(ValueError, match=match):
            make_preprocess(**kw)


def test_preprocess_runs_batched_uint8_and_float_alike():
    pp = Preprocess("t", (4, 6), (0.5, 0.5, 0.5), (0.5, 0.25, 0.5))
    u8 = torch.arange(2 * 3 * 8 * 12, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(2, 3, 8, 12)
    before = u8.clone()
    out = pp(u8)
    assert out.shape == (2, 3, 4, 6) and out.dtype == torch.float32 and torch.equal(u8, before)
    torch.testing.assert_close(out, pp(u8.float() / 255))
    torch.testing.assert_close(pp(u8)[1:], pp(u8[1:]))
    flat = Preprocess("t", None, (0.5, 0.5, 0.5), (0.5, 0.25, 0.5))(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))
    assert flat[0, :, 0, 0].tolist() == [1.0, 2.0, 1.0]


def test_training_and_audits_normalise_with_the_same_function_and_numbers():
    from bgbias.models.load import IMAGENET_MEAN, IMAGENET_STD, Preprocess, normalize
    from bgbias.train.loop import normalizer

    x = torch.rand(2, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    want = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pp = Preprocess("imagenet", None, IMAGENET_MEAN, IMAGENET_STD)
    train_norm = normalizer({"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}, torch.device("cpu"))
    for got in (normalize(x, IMAGENET_MEAN, IMAGENET_STD), pp.normalize(x), pp(x), train_norm(x)):
        assert torch.equal(got, want)
