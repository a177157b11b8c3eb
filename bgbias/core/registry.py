"""Named-component registries: register by name, list with wildcards, create from a spec string.

One mechanism for every extensible thing in bgbias (sources, mask methods,
background families, variants, architectures), in the style of timm's model
registry. A spec string is ``family[:arg[:param...]]``, e.g. ``texture:stripes:8``
or ``mnist:/data/mnist``; :func:`parse_spec` splits it once, for everyone.
"""
from __future__ import annotations

import fnmatch
import importlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


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
    """

    kind: str
    plugins: tuple[str, ...] = ()
    _entries: dict[str, Entry[T]] = field(default_factory=dict)
    _loaded: bool = False

    def register(self, name: str | None = None, *, tags: Iterable[str] = (), help: str = "",
                 path_arg: bool = False) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: ``@REG.register("stripes", tags=["texture"])``. A duplicate name raises."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
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
        if family not in self._entries:
            valid = ", ".join(self.names())
            raise ValueError(f"Unknown {self.kind} {family!r}; valid: {valid}.")
        return self._entries[family]

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
        return entry.factory(*spec.args, **kwargs)

    def __contains__(self, family: str) -> bool:
        self._load_plugins()
        return family in self._entries
