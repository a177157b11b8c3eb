"""One interface style: every option documented with its default, names '-'/'_' alike, HxW sizes, --quiet
everywhere, and 'did you mean' for a mistyped source, variant, recipe or model spec."""
from __future__ import annotations

import argparse

import pytest

from bgbias.cli import build_parser, main

LONG_RUNNING = ("build", "train", "eval", "challenge", "saliency", "masks", "demo")


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_option_has_help(name):
    p = _commands()[name]
    undocumented = [a.option_strings or [a.dest] for a in p._actions
                    if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS and not a.help]
    assert not undocumented, f"bgbias {name}: options without help: {undocumented}"
    assert "``" not in p.format_help() and ":func:" not in p.format_help()


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_commands_take_quiet(name):
    assert "--quiet" in _commands()[name].format_help()


def test_defaults_are_shown():
    text = _commands()["train"].format_help()
    assert "(default: 5)" in text.replace("\n", " ").replace("  ", " ") or "default: 5" in text


@pytest.mark.parametrize("spelling", ["mixed-rand", "mixed_rand"])
def test_recipe_accepts_dash_and_underscore(spelling):
    args = build_parser("train").parse_args(["train", "--recipe", spelling, "--data", "digits", "--out", "x"])
    assert args.recipe == "mixed_rand"


def test_sizes_are_hxw_everywhere():
    t = build_parser("train").parse_args(["train", "--recipe", "baseline", "--data", "d", "--out", "o",
                                          "--size", "64x48"])
    e = build_parser("eval").parse_args(["eval", "--model", "m", "--data", "d", "--size", "64x48"])
    assert t.size == (64, 48) and tuple(e.size) == (64, 48)


@pytest.mark.parametrize("argv,hint", [
    (["train", "--recipe", "mixd-rand", "--data", "digits", "--out", "x"], "Did you mean 'mixed_rand'"),
    (["build", "fodler:some/dir", "--out", "x"], "Did you mean 'folder'"),
])
def test_did_you_mean(argv, hint, tmp_path, capsys):
    argv = [a if a != "x" else str(tmp_path / "x") for a in argv]
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    assert rc != 0
    assert hint in capsys.readouterr().err


def test_a_bare_folder_suggests_folder_spec(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert main(["build", str(tmp_path / "photos"), "--out", str(tmp_path / "o")]) != 0
    assert f"folder:{tmp_path / 'photos'}" in capsys.readouterr().err


def test_a_bare_checkpoint_suggests_checkpoint_spec(tmp_path):
    from bgbias.models.load import load_model

    f = tmp_path / "model.pt"
    f.write_bytes(b"")
    with pytest.raises(ValueError, match=f"Did you mean 'checkpoint:{f}'"):
        load_model(str(f))
    with pytest.raises(ValueError, match="Did you mean 'checkpoint'"):
        load_model("checkpont:x.pt")


def test_executors_are_a_registry_listed_and_offered(capsys):
    from bgbias.core.executors import EXECUTORS, LocalExecutor, create_executor, map_ordered

    assert EXECUTORS.names() == ["local", "ray"]
    assert isinstance(create_executor("local"), LocalExecutor)
    with pytest.raises(ValueError, match="Unknown executor 'loc'; valid: local, ray. Did you mean 'local'"):
        create_executor("loc")
    assert list(map_ordered(abs, [-3, 1, -2], initializer=lambda: None)) == [3, 1, 2]
    assert main(["list", "executors"]) == 0
    assert capsys.readouterr().out.split() == ["local", "ray"]
    for name in ("build", "challenge"):
        (action,) = [a for a in _commands()[name]._actions if "--executor" in a.option_strings]
        assert list(action.choices) == EXECUTORS.names()
