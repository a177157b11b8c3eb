"""timm / Hugging Face / CLIP model kinds on tiny random models saved locally: load, preprocess, same logits."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bgbias.models.kinds_clip import ZeroShotClassifier, preprocess_from_clip_cfg, read_prompts
from bgbias.models.labelmap import resolve_label_map
from bgbias.models.load import MODEL_KINDS, load_model

torch.set_num_threads(1)


def smooth_images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, h, w, 3] low-frequency images (resampling filters agree on these to about a grey level)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _ in range(n):
        a, b, c = rng.random(3) * 6
        img = np.stack([np.sin(a * xx + b * yy + c), np.cos(b * xx - a * yy), np.sin(c * xx * yy + a)], -1)
        out.append(((img + 1) * 127.5).round().astype(np.uint8))
    return np.stack(out)


def as_batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def test_every_kind_is_registered():
    assert {"torchvision", "torchscript", "checkpoint", "module", "timm", "hf", "clip"} <= set(MODEL_KINDS.names())
    with pytest.raises(ValueError, match="module:pkg.mod:factory, clip:<arch>.*timm:<name>"):
        load_model("keras:model.h5")


# ---------------------------------------------------------------- timm


@pytest.fixture(scope="module")
def timm_vit(tmp_path_factory):
    timm = pytest.importorskip("timm")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = timm.create_model("test_vit", num_classes=3).eval()
    path = tmp_path_factory.mktemp("timm") / "vit.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_timm_loads_with_class_count_from_weights_and_same_logits(timm_vit):
    net, path = timm_vit
    lm = load_model("timm:test_vit", weights=str(path))
    assert lm.num_outputs == 3 and lm.files == [str(path)] and not lm.module.training
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(lm.logits(x), net(x))


def test_timm_preprocessing_follows_data_config(timm_vit):
    timm = pytest.importorskip("timm")
    from PIL import Image

    net, path = timm_vit
    lm = load_model("timm:test_vit", weights=str(path))
    cfg = timm.data.resolve_data_config({}, model=net)
    pp = lm.preprocess
    assert pp.size == tuple(cfg["input_size"][1:]) and pp.interpolation == cfg["interpolation"]
    assert pp.mean == tuple(cfg["mean"]) and pp.std == tuple(cfg["std"])
    assert pp.resize_to == int(160 / cfg["crop_pct"])            # shorter side to size / crop_pct, then crop
    tf = timm.data.create_transform(**cfg)                       # timm's own (PIL) eval transform
    for hw in ((224, 224), (180, 240)):
        imgs = smooth_images(2, *hw)
        ref = torch.stack([tf(Image.fromarray(i)) for i in imgs])
        mine = pp(as_batch(imgs))
        assert mine.shape == ref.shape
        assert (mine - ref).abs().mean() < 0.01 and (mine - ref).abs().max() < 0.1


def test_timm_offline_by_default_and_from_the_local_cache(timm_vit, tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    net, path = timm_vit
    with pytest.raises(ValueError, match="not in the local cache; pass --weights FILE, or --download-weights"):
        load_model("timm:test_vit")
    # timm's own pretrained file, found in a Hugging Face cache without any network call
    import huggingface_hub.constants as hc
    from safetensors.torch import save_file

    with torch.random.fork_rng():
        torch.manual_seed(1)
        pre = timm.create_model("test_vit").eval()
    snap = tmp_path / "models--timm--test_vit.r160_in1k" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (tmp_path / "models--timm--test_vit.r160_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--test_vit.r160_in1k" / "refs" / "main").write_text("abc")
    save_file({k: v.contiguous() for k, v in pre.state_dict().items()}, str(snap / "model.safetensors"))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    lm = load_model("timm:test_vit")
    assert lm.files == [str(snap / "model.safetensors")] and lm.num_outputs == 1000
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(lm.logits(x), pre(x))


def test_timm_unknown_name():
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match="Unknown timm model 'no_such_net'"):
        load_model("timm:no_such_net")


# ---------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hf") / "vit"
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=32,
                                 num_attention_heads=2, intermediate_size=64, num_labels=3,
                                 id2label={0: "blue", 1: "red", 2: "green"},
                                 label2id={"blue": 0, "red": 1, "green": 2})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        transformers.ViTForImageClassification(cfg).save_pretrained(d)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                                   image_std=[0.2, 0.25, 0.3]).save_pretrained(d)
    return d


def test_hf_same_logits_as_transformers(hf_dir):
    transformers = pytest.importorskip("transformers")
    lm = load_model(f"hf:{hf_dir}")
    assert lm.classes == ["blue", "red", "green"] and lm.files == [str(hf_dir / "model.safetensors")]
    assert lm.preprocess.size == (32, 32) and lm.preprocess.mean == (0.4, 0.5, 0.6)
    imgs = smooth_images(2, 32, 32)
    proc = transformers.AutoImageProcessor.from_pretrained(hf_dir)
    model = transformers.AutoModelForImageClassification.from_pretrained(hf_dir).eval()
    pv = proc(images=list(imgs), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(lm.preprocess(as_batch(imgs)), pv, atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(lm.logits(pv), model(pixel_values=pv).logits)


def test_hf_resize_matches_the_image_processor(hf_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    import shutil

    d = tmp_path / "vit24"
    shutil.copytree(hf_dir, d)
    transformers.ViTImageProcessor(size={"height": 24, "width": 24}).save_pretrained(d)
    lm = load_model(f"hf:{d}")
    imgs = smooth_images(2, 40, 56)
    pv = transformers.AutoImageProcessor.from_pretrained(d)(images=list(imgs), return_tensors="pt")["pixel_values"]
    mine = lm.preprocess(as_batch(imgs))
    assert mine.shape == pv.shape == (2, 3, 24, 24)
    assert (mine - pv).abs().max() <= 2.5 / 255 / 0.5            # at most about a grey level apart


def test_hf_is_offline_by_default():
    pytest.importorskip("transformers")
    with pytest.raises(ValueError, match="not in the local cache"):
        load_model("hf:someone/not-a-cached-model")


def test_hf_class_names_map_by_name():
    lm, note = resolve_label_map(None, ["red", "green", "blue"], ["blue", "red", "green"])
    assert lm.name == "by-name" and lm.table == (2, 0, 1)
    assert "blue(0)->blue" in note
    assert resolve_label_map(None, ["red", "green"], ["red", "green"])[0].name == "identity"
    assert resolve_label_map(None, [c for c in ("dog", "bird", "vehicle", "reptile", "carnivore", "insect",
                                                "instrument", "primate", "fish")], None, 1000)[0].name \
        == "imagenet-to-in9"
    with pytest.raises(ValueError, match="no class named 'cat'"):
        resolve_label_map("by-name", ["cat", "dog"], ["dog", "bird"])


# ---------------------------------------------------------------- CLIP zero-shot

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    d = tmp_path_factory.mktemp("clip")
    (d / "tiny-clip-test.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(d / "tiny-clip-test.json")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = open_clip.create_model("tiny-clip-test").eval()
    torch.save(model.state_dict(), d / "w.pt")
    (d / "prompts.txt").write_text("a photo of a {}.\n# comment\n\na drawing of the {}\n")
    return model, d


def test_zero_shot_on_hand_made_text_embeddings():
    """Three classes with text embeddings along the axes: the image feature's direction decides the class."""
    visual = torch.nn.Flatten()                                  # image "features" = the 3 pixel values
    text = torch.eye(3) * torch.tensor([2.0, 1.0, 5.0])           # un-normalised on purpose: only directions count
    clf = ZeroShotClassifier(visual, text, logit_scale=10.0)
    x = torch.tensor([[0.9, 0.1, 0.2], [0.0, 0.3, 0.1], [0.1, 0.1, 0.8], [-1.0, -1.0, -0.5]]).view(4, 3, 1, 1)
    logits = clf(x)
    feats = torch.nn.functional.normalize(x.view(4, 3), dim=-1)
    torch.testing.assert_close(logits, 10.0 * feats)             # cosine with each axis, times the scale
    assert logits.argmax(1).tolist() == [0, 1, 2, 2]


def test_clip_kind_equals_open_clip_zero_shot(tiny_clip):
    open_clip = pytest.importorskip("open_clip")
    model, d = tiny_clip
    classes = ["red", "green", "sea_turtle"]
    lm = load_model(f"clip:{d / 'tiny-clip-test.json'}", weights=str(d / "w.pt"), prompts=str(d / "prompts.txt"),
                    class_names=classes)
    assert lm.classes == classes and lm.files == [str(d / "w.pt"), str(d / "prompts.txt")]
    assert lm.preprocess.size == (32, 32) and lm.preprocess.interpolation == "bicubic"
    x = torch.rand(3, 3, 32, 32)
    tok = open_clip.get_tokenizer("tiny-clip-test")
    templates = ["a photo of a {}.", "a drawing of the {}"]
    with torch.no_grad():
        w = open_clip.build_zero_shot_classifier(model, tok, ["red", "green", "sea turtle"], templates)
        ref = model.logit_scale.exp() * model.encode_image(x, normalize=True) @ w
    torch.testing.assert_close(lm.logits(x), ref, atol=1e-5, rtol=1e-5)


def test_clip_preprocessing_follows_open_clip_transforms(tiny_clip):
    open_clip = pytest.importorskip("open_clip")
    from PIL import Image

    model, _ = tiny_clip
    pp = preprocess_from_clip_cfg(open_clip.get_model_preprocess_cfg(model))
    cfg = open_clip.get_model_preprocess_cfg(model)
    tf = open_clip.image_transform(32, is_train=False, mean=cfg["mean"], std=cfg["std"],
                                   interpolation=cfg["interpolation"], resize_mode=cfg["resize_mode"])
    imgs = smooth_images(2, 48, 64)
    ref = torch.stack([tf(Image.fromarray(i)) for i in imgs])
    mine = pp(as_batch(imgs))
    assert mine.shape == ref.shape and (mine - ref).abs().mean() < 0.01


def test_clip_bad_inputs(tiny_clip, tmp_path):
    _, d = tiny_clip
    spec = f"clip:{d / 'tiny-clip-test.json'}"
    with pytest.raises(ValueError, match="needs --weights FILE or a pretrained tag"):
        load_model(spec, class_names=["a", "b"])
    (tmp_path / "p.txt").write_text("a photo\n")
    with pytest.raises(ValueError, match="exactly one \\{\\} for the class name; line 'a photo' has 0"):
        read_prompts(tmp_path / "p.txt")
    with pytest.raises(ValueError, match="Unknown open_clip architecture 'ViT-Nope'"):
        load_model("clip:ViT-Nope", weights=str(d / "w.pt"), class_names=["a"])
    with pytest.raises(ValueError, match="not in the local cache"):
        load_model("clip:ViT-B-32:laion2b_s34b_b79k", class_names=["a"])


@pytest.mark.parametrize("spec,module,extra", [("timm:resnet18", "timm", "timm"), ("hf:some/model", "transformers", "hf"),
                                                ("clip:ViT-B-32", "open_clip", "clip")])
def test_a_missing_extra_is_one_sentence(spec, module, extra, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, module, None)          # import now raises ImportError
    with pytest.raises(ValueError, match=rf"needs the {module} package, which is not installed; install it with "
                                         rf"pip install 'bgbias\[{extra}\]'\."):
        load_model(spec, weights="w.pth", class_names=["a"])


def test_challenge_with_a_centre_crop_keeps_masks_aligned():
    """A timm-style resize-then-crop applies to the image and its mask alike, so composites stay exact."""
    from types import SimpleNamespace

    from bgbias.audit.challenge_search import prep_fg as _prep_fg
    from bgbias.models.load import Preprocess

    pp = Preprocess("crop", (6, 6), resize_to=8)             # keep 8 px, crop the central 6 x 6
    img = torch.arange(3 * 8 * 8, dtype=torch.float32).reshape(3, 8, 8) / 192
    mask = torch.zeros(8, 8)
    mask[1:4, 2:5] = 1.0
    x, m = _prep_fg(SimpleNamespace(preprocess=pp, device="cpu"), img, mask, (6, 6))
    torch.testing.assert_close(x, img[:, 1:7, 1:7])
    torch.testing.assert_close(m[0], mask[1:7, 1:7])
