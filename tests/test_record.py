"""The reproducibility record: weights' sha256, parameter count, versions, command; compare_records' warnings."""
from __future__ import annotations

import hashlib
import json
import shlex
import sys

import _layouts as L
import pytest
import torch

from bgbias.cli import main
from bgbias.core.record import build_record, command_line, compare_records, sha256_file
from bgbias.models.checkpoint import save_checkpoint
from bgbias.models.nets import SmallCNN

torch.set_num_threads(1)


def test_sha256_is_the_files(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights" * 1000)
    assert sha256_file(f) == hashlib.sha256(b"weights" * 1000).hexdigest()
    f.write_bytes(b"other")                                   # a changed file is hashed again
    assert sha256_file(f) == hashlib.sha256(b"other").hexdigest()


def test_record_fields(tmp_path):
    net = SmallCNN(num_classes=3, width=4)
    torch.save(net.state_dict(), tmp_path / "w.pth")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    r = build_record([tmp_path / "w.pth", tmp_path / "w.pth"], net, "cpu", 7, tmp_path / "data", {"size": None},
                     argv=["/x/bgbias/__main__.py", "eval", "--model", "torchvision:small-cnn"])
    assert r["weights"] == [{"path": str((tmp_path / "w.pth").resolve()), "bytes": (tmp_path / "w.pth").stat().st_size,
                             "sha256": hashlib.sha256((tmp_path / "w.pth").read_bytes()).hexdigest()}]
    assert r["parameters"] == sum(p.numel() for p in net.parameters()) and r["dtype"] == "float32"
    assert r["seed"] == 7 and r["device"] == "cpu" and r["command"] == "bgbias eval --model torchvision:small-cnn"
    assert r["libraries"]["torch"] == torch.__version__.split("+")[0] or r["libraries"]["torch"] == torch.__version__
    assert {"torchvision", "timm", "transformers", "open_clip_torch", "bgbias"} <= set(r["libraries"])
    assert r["data"]["manifest_sha256"] == hashlib.sha256(b"{}").hexdigest()
    assert r["bgbias_git"] is None or len(r["bgbias_git"]["commit"]) == 40
    assert command_line(["a b", "c"]) == "'a b' c"


def test_every_result_carries_the_record(tmp_path, monkeypatch):
    root = L.colour_layout(tmp_path / "d")
    net = SmallCNN(num_classes=3, width=4)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, net.state_dict(), {"arch": "small-cnn", "arch_kwargs": {"width": 4},
                                             "classes": ["red", "green", "blue"]})
    want = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    common = ["--model", f"checkpoint:{ckpt}", "--data", str(root), "--device", "cpu", "--no-progress"]
    for cmd in (["eval"], ["challenge", "--fool-subset", "3"], ["saliency", "--max-images", "2"]):
        out = tmp_path / f"{cmd[0]}.json"
        argv = [cmd[0], *common, *cmd[1:], "--out", str(out)]
        monkeypatch.setattr(sys, "argv", ["/site/bgbias/__main__.py", *argv])     # as python -m bgbias runs it
        assert main(argv) == 0
        rec = json.loads(out.read_text())["record"]
        assert [w["sha256"] for w in rec["weights"]] == [want], cmd
        assert rec["parameters"] == sum(p.numel() for p in net.parameters())
        assert rec["command"] == "bgbias " + shlex.join(argv) and rec["preprocess"] is not None


def test_timm_record_hashes_the_weights_file(tmp_path):
    timm = pytest.importorskip("timm")
    root = L.random_layout(tmp_path / "d", n_per_class=1, size=32)
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), tmp_path / "r.pth")
    out = tmp_path / "e.json"
    assert main(["eval", "--model", "timm:test_resnet", "--weights", str(tmp_path / "r.pth"), "--data", str(root),
                 "--device", "cpu", "--no-progress", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["record"]["weights"][0]["sha256"] == hashlib.sha256((tmp_path / "r.pth").read_bytes()).hexdigest()
    assert r["preprocess"]["name"] == "timm:test_resnet" and r["preprocess"]["resize_to"] == 168


def test_compare_records_warns_on_different_data_or_preprocessing():
    def doc(manifest, size, record=True):
        pp = {"name": "x", "size": size, "mean": [0.5] * 3, "std": [0.5] * 3}
        return {"kind": "bgbias-eval/1", "model": "m", "preprocess": pp,
                **({"record": {"data": {"path": "/d", "manifest_sha256": manifest}, "preprocess": pp}} if record else {})}

    a, b = "a" * 64, "b" * 64
    assert compare_records({"one": doc(a, [224, 224]), "two": doc(a, [224, 224])}) == []
    w = compare_records({"one": doc(a, [224, 224]), "two": doc(b, [224, 224])})
    assert len(w) == 1 and "differ in data" in w[0] and "one: manifest sha256 aaaaaaaaaaaa" in w[0]
    w = compare_records([doc(a, [224, 224]), doc(a, [160, 160])])
    assert len(w) == 1 and "differ in preprocessing" in w[0] and "160x160" in w[0]
    w = compare_records({"one": doc(a, None), "old": doc(a, None, record=False)})
    assert w == ["old carry no reproducibility record; their weights, data and preprocessing cannot be checked."]
