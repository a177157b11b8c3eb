"""The public Python API: ``import bgbias`` is light, every documented name resolves, audits take an nn.Module."""
from __future__ import annotations

import doctest
import json
import subprocess
import sys

import pytest
import torch

import bgbias
from bgbias.core.registry import Registry


def test_import_is_light_and_help_shows_the_whole_api():
    code = ("import sys, bgbias; assert 'torch' not in sys.modules, 'import bgbias loaded torch'; "
            "import pydoc; text = pydoc.render_doc(bgbias); "
            "missing = [n for n in bgbias.__all__ if n not in text]; assert not missing, missing; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("name", [n for n in bgbias.__all__ if n != "__version__"])
def test_every_public_name_resolves(name):
    assert getattr(bgbias, name) is not None


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        bgbias.no_such_thing  # noqa: B018


def test_evaluate_an_nn_module_on_a_tiny_build(tmp_path, digits_source):
    bgbias.build(digits_source, tmp_path / "b", variants="original,only_bg_t,mixed_same,mixed_rand")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(len(digits_source.classes)))
    r = bgbias.evaluate(net, data=tmp_path / "b")
    assert sorted(r["variants"]) == ["mixed_rand", "mixed_same", "only_bg_t", "original"]
    assert r["model"].startswith("python:torch.nn") and r["bg_gap"] is not None
    assert not list(tmp_path.glob("*.json"))                       # an audit writes nothing unless asked
    saved = r.save(tmp_path / "eval.json")
    assert json.loads(saved.read_text()) == json.loads(json.dumps(r.to_dict()))


def test_audit_verbs_name_a_wrong_option():
    with pytest.raises(TypeError, match="no option 'batchsize'.*batch_size"):
        bgbias.evaluate("checkpoint:x.pt", data=".", batchsize=3)


def test_registry_create_with_a_wrong_keyword_is_one_sentence():
    reg: Registry = Registry("widget")

    @reg.register("round")
    def _round(radius: int = 1, *, colour: str = "red"):
        return (radius, colour)

    assert reg.create("round", colour="blue") == (1, "blue")
    assert reg.create("Round".lower()) == (1, "red")
    with pytest.raises(TypeError, match=r"widget 'round' does not take 'color'; it takes: radius, colour\. "
                                        r"Did you mean 'colour'\?"):
        reg.create("round", color="blue")
    with pytest.raises(ValueError, match="has 2 ':' arguments"):
        reg.create("round:1:2")
    with pytest.raises(ValueError, match="Did you mean 'round'"):
        reg.create("rond")


def test_registry_names_accept_dash_and_underscore():
    reg: Registry = Registry("recipe")
    reg.register("bg-augment")(lambda: "ok")
    assert reg.names() == ["bg_augment"] and "bg-augment" in reg and reg.create("bg_augment") == "ok"
    assert reg.canonical("bg-augment") == "bg_augment"


def test_the_package_docstring_example_runs(tmp_path, monkeypatch):
    doc = bgbias.__doc__.replace("/tmp/bgbias-example", str(tmp_path / "example"))
    test = doctest.DocTestParser().get_doctest(doc, {}, "bgbias", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.failures == 0 and runner.tries >= 4
