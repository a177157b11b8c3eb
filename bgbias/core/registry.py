"""Named-component registries: register by name, list with wildcards, create from a spec string.

One mechanism for every extensible thing in bgbias (sources, mask methods,
background families, variants, architectures), in the style of timm's model
registry. A spec string is ``family[:arg[:param...]]``, e.g. ``texture:stripes:8``
or ``mnist:/data/mnist``; :func:`parse_spec` splits it once, for everyone.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


def canonical(name: str) -> str:
    """Names accept ``-`` and ``_`` alike; ``_`` is canonical, as in the IN-9 release (``mixed_rand``)."""
    return name.strip().replace("-", "_")


def did_you_mean(word: str, valid: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for a close match, else ``""``: appended to unknown-name errors."""
    close = difflib.get_close_matches(word, list(valid), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def natural_key(name: str) -> list:
    """Sort key that orders ``texture:noise:2`` before ``texture:noise:10``."""
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class Spec:
    """A parsed ``family:arg:param`` name. ``args`` keeps everything after the family."""

    family: str
    args: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return ":".join((self.family, *self.args))


def parse_spec(text: str, *, path_arg: bool = False) -> Spec:
    """Split ``family:arg[:param]``.

    With ``path_arg=True`` everything after the first colon is one argument,
    so paths containing colons (``folder:C:/data``) survive.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"Expected a non-empty name, got {text!r}.")
    text = text.strip()
    family, sep, rest = text.partition(":")
    if not sep:
        return Spec(family)
    if path_arg:
        return Spec(family, (rest,))
    return Spec(family, tuple(rest.split(":")))


@dataclass
class Entry(Generic[T]):
    name: str
    factory: Callable[..., T]
    tags: frozenset[str] = frozenset()
    help: str = ""
    path_arg: bool = False


@dataclass
class Registry(Generic[T]):
    """A name -> factory table.

    ``plugins`` are modules imported on first use so that optional families
    (e.g. annotation sources) register themselves without import cycles.
    Names are stored canonically (``bg-augment`` -> ``bg_augment``) and looked
    up either way.
    """

    kind: str
    plugins: tuple[str, ...] = ()
    _entries: dict[str, Entry[T]] = field(default_factory=dict)
    _loaded: bool = False

    def register(self, name: str | None = None, *, tags: Iterable[str] = (), help: str = "",
                 path_arg: bool = False) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REG.register("stripes", tags=["texture"])``. A duplicate name raises."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = canonical(name or fn.__name__)
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered.")
            doc = help or next(iter((fn.__doc__ or "").strip().splitlines()), "")
            self._entries[key] = Entry(key, fn, frozenset(tags), doc, path_arg)
            return fn

        return deco

    def _load_plugins(self) -> None:
        if not self._loaded:
            self._loaded = True
            for mod in self.plugins:
                importlib.import_module(mod)

    def names(self, pattern: str = "*", tag: str | None = None) -> list[str]:
        """Registered family names matching a wildcard ``pattern`` (and ``tag``), naturally sorted."""
        self._load_plugins()
        names = [n for n, e in self._entries.items() if tag is None or tag in e.tags]
        return sorted(fnmatch.filter(names, pattern), key=natural_key)

    def entry(self, family: str) -> Entry[T]:
        self._load_plugins()
        key = canonical(family)
        if key not in self._entries:
            valid = self.names()
            raise ValueError(f"Unknown {self.kind} {family!r}; valid: {', '.join(valid)}.{did_you_mean(key, valid)}")
        return self._entries[key]

    def canonical(self, text: str) -> str:
        """The spec with its family in canonical spelling (``mixed-rand`` -> ``mixed_rand``); checks it exists."""
        spec = self.parse(text)
        return Spec(self.entry(spec.family).name, spec.args).text

    def parse(self, text: str) -> Spec:
        """Parse a spec string, knowing whether its family takes a path argument."""
        head = text.strip().partition(":")[0] if isinstance(text, str) else text
        entry = self.entry(head) if isinstance(head, str) and head else None
        return parse_spec(text, path_arg=bool(entry and entry.path_arg))

    def create(self, text: str, **kwargs: Any) -> T:
        """Create from a spec: ``factory(*spec.args, **kwargs)``; ``None`` kwargs are dropped."""
        spec = self.parse(text)
        entry = self.entry(spec.family)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        self._check_arguments(entry, spec, kwargs)
        return entry.factory(*spec.args, **kwargs)

    def _check_arguments(self, entry: Entry[T], spec: Spec, kwargs: dict[str, Any]) -> None:
        """One sentence for a wrong keyword or too many ``:args``, instead of Python's raw TypeError."""
        try:
            sig = inspect.signature(entry.factory)
        except (TypeError, ValueError):
            return
        params = list(sig.parameters.values())
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return
        names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(f"{self.kind} {entry.name!r} does not take {', '.join(map(repr, unknown))}; it takes: "
                            f"{', '.join(names) or 'no keyword arguments'}.{did_you_mean(unknown[0], names)}")
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if not any(p.kind is p.VAR_POSITIONAL for p in params) and len(spec.args) > len(positional):
            raise ValueError(f"{self.kind} {spec.text!r} has {len(spec.args)} ':' arguments; {entry.name!r} takes at "
                             f"most {len(positional)} ({', '.join(p.name for p in positional) or 'none'}).")

    def __contains__(self, family: str) -> bool:
        self._load_plugins()
        return canonical(family) in self._entries
