"""Registry: registration, wildcard listing with natural sort, spec parsing, clear errors."""
import pytest

from bgbias.core.registry import Registry, natural_key, parse_spec


def make_registry() -> Registry:
    reg: Registry = Registry("widget")

    @reg.register("texture", tags=["t"])
    def texture(name="plain", param="1"):
        """A texture widget."""
        return ("texture", name, param)

    @reg.register("folder", path_arg=True)
    def folder(path, **kw):
        return ("folder", path, kw)

    return reg


def test_create_passes_spec_args_and_prunes_none_kwargs():
    reg = make_registry()
    assert reg.create("texture:stripes:8") == ("texture", "stripes", "8")
    assert reg.create("texture") == ("texture", "plain", "1")
    assert reg.create("folder:C:/data/x", masks=None) == ("folder", "C:/data/x", {})


def test_unknown_name_lists_valid_choices():
    reg = make_registry()
    with pytest.raises(ValueError, match=r"Unknown widget 'textur'; valid: folder, texture\."):
        reg.create("textur:x")


def test_duplicate_registration_raises():
    reg = make_registry()
    with pytest.raises(ValueError, match="already registered"):
        reg.register("texture")(lambda: None)


def test_names_wildcard_tag_and_help():
    reg = make_registry()
    assert reg.names("t*") == ["texture"]
    assert reg.names(tag="t") == ["texture"]
    assert reg.entry("texture").help == "A texture widget."


def test_natural_sort_and_parse_spec():
    assert sorted(["n10", "n2", "n1"], key=natural_key) == ["n1", "n2", "n10"]
    assert parse_spec("texture:noise:0.1").args == ("noise", "0.1")
    assert parse_spec("mnist:/a:b", path_arg=True).args == ("/a:b",)
    with pytest.raises(ValueError):
        parse_spec("  ")
