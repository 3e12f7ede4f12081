"""Export formats: one writer per file in this package, found automatically.

Adding a format is adding one module here; ``AttributionGraph.save``, ``FeatureAutomaton.save``,
the command line's ``--out`` and ``sae-circuits serve`` all read this registry. A writer module
declares (and imports anything heavy, such as torch, inside its functions, so that listing the
writers stays cheap for the CLI and the file server):

    NAME = "dot"                        # a short name
    SUFFIXES = (".dot",)                # the suffixes it writes, lower case
    WRITES = ("graph", "automaton")     # what it writes: see KINDS
    ORDER = 30                          # its place in listings and messages
    def write(obj, path) -> Path        # write ``obj`` atomically (sae_circuits._files)

and optionally ``read(path, kind)`` (the format loads back), ``MEDIA_TYPE`` (what ``serve`` sends)
and ``SIGNATURE`` (the text every file it writes starts with: ``serve`` serves a file of a suffix
that other programs also write, such as ``.csv``, only when it starts so).

>>> [w.name for w in writers("graph")]
['json', 'graphml', 'dot', 'html', 'csv']
>>> suffix_list("automaton")
'.json, .graphml, .dot, .html or .csv'
>>> writer_for("graph.DOT").name
'dot'
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

KINDS = {
    "graph": ("sae_circuits.graph.attribution_graph", "AttributionGraph", "attribution graphs"),
    "automaton": ("sae_circuits.fsa.automaton", "FeatureAutomaton", "automata"),
}
"""What writers write: kind -> (module, class, plural noun for messages)."""

FORMAT_MODULES = ("sae_circuits.graph.export", "sae_circuits.fsa.export")
"""Where the text of each format lives, for graphs and for automata (see :func:`formatted`)."""


@dataclass(frozen=True)
class Writer:
    """One export format, as its module declares it (see the package docstring)."""

    name: str
    suffixes: tuple[str, ...]
    writes: tuple[str, ...]
    order: int
    module: ModuleType
    media_type: str | None = None
    signature: str | None = None

    @property
    def loads_back(self) -> bool:
        """Whether files of this format load back (the module has ``read``)."""
        return callable(getattr(self.module, "read", None))

    def write(self, obj: Any, path: str | os.PathLike[str]) -> Path:
        """Write ``obj`` to ``path`` atomically."""
        return Path(self.module.write(obj, Path(path)))

    def read(self, path: str | os.PathLike[str], kind: str) -> Any:
        """Load the ``kind`` of object a file of this format holds."""
        return self.module.read(Path(path), kind)


def _declared(module: ModuleType) -> Writer:
    missing = [a for a in ("NAME", "SUFFIXES", "WRITES", "ORDER", "write") if not hasattr(module, a)]
    if missing:
        raise TypeError(f"writer module {module.__name__} does not declare {', '.join(missing)}")
    suffixes, writes = tuple(module.SUFFIXES), tuple(module.WRITES)
    bad = [s for s in suffixes if not (s.startswith(".") and s == s.lower())] + [
        k for k in writes if k not in KINDS
    ]
    if bad or not suffixes or not writes:
        raise TypeError(f"writer module {module.__name__}: bad SUFFIXES {suffixes} or WRITES {writes}")
    return Writer(module.NAME, suffixes, writes, int(module.ORDER), module,
                  getattr(module, "MEDIA_TYPE", None), getattr(module, "SIGNATURE", None))  # fmt: skip


@functools.cache
def _registry() -> tuple[Writer, ...]:
    found = [
        _declared(importlib.import_module(f"{__name__}.{info.name}"))
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    ]
    found.sort(key=lambda w: (w.order, w.name))
    seen: dict[tuple[str, str], str] = {}
    for w in found:
        for key in ((s, k) for s in w.suffixes for k in w.writes):
            if key in seen:
                raise TypeError(f"writers {seen[key]!r} and {w.name!r} both write {key[1]}s as {key[0]!r}")
            seen[key] = w.name
    return tuple(found)


def writers(kind: str | None = None) -> list[Writer]:
    """Every writer (of one kind of object: ``"graph"`` or ``"automaton"``), in ``ORDER``."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {list(KINDS)}")
    return [w for w in _registry() if kind is None or kind in w.writes]


def suffixes(kind: str | None = None) -> list[str]:
    """The suffixes written (for one kind of object), in ``ORDER``, each once: ``['.json', ...]``."""
    return list(dict.fromkeys(s for w in writers(kind) for s in w.suffixes))


def suffix_list(kind: str | None = None, last: str = "or") -> str:
    """``".json, .graphml, .dot, .html or .csv"``, for messages and ``--help``."""
    names = suffixes(kind)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


def kind_of(obj: Any) -> str:
    """``"graph"`` or ``"automaton"``: what ``obj`` is (subclasses count; nothing is imported)."""
    for cls in type(obj).__mro__:
        for kind, (module, name, _) in KINDS.items():
            if (cls.__module__, cls.__qualname__) == (module, name):
                return kind
    raise TypeError(f"cannot save a {type(obj).__name__}: writers write {', '.join(KINDS)} objects")


def formatted(obj: Any, function: str, modules: tuple[str, str] = FORMAT_MODULES) -> str:
    """The text of ``obj`` made by ``function`` of the module for its kind (``modules`` = graph,
    automaton): how a writer reuses the format code of :mod:`sae_circuits.graph.export` and
    :mod:`sae_circuits.fsa.export`, imported only when a file is written."""
    module = modules[0] if kind_of(obj) == "graph" else modules[1]
    return str(getattr(importlib.import_module(module), function)(obj))


def writer_for(path: str | os.PathLike[str], kind: str | None = None) -> Writer:
    """The writer of ``path``'s suffix (case-insensitive), or a ValueError naming the suffix and the
    known ones."""
    path = Path(path)
    suffix = path.suffix.lower()
    for w in writers(kind):
        if suffix in w.suffixes:
            return w
    raise ValueError(
        f"cannot save {path}: unsupported suffix {path.suffix!r}; supported: {', '.join(suffixes(kind))}"
    )


def save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` (an attribution graph or an automaton) atomically, in the format its suffix names."""
    return writer_for(path, kind_of(obj)).write(obj, path)


def load(path: str | os.PathLike[str], kind: str) -> Any:
    """Read a ``kind`` object back from a file of a format that loads back (``.json``)."""
    path = Path(path)
    readers = [w for w in writers(kind) if w.loads_back]
    for w in readers:
        if path.suffix.lower() in w.suffixes:
            return w.read(path, kind)
    known = " or ".join(repr(s) for w in readers for s in w.suffixes)
    what = "is a view" if path.suffix.lower() in suffixes(kind) else "is not a format of sae_circuits"
    raise ValueError(f"cannot load {path}: suffix {path.suffix!r} {what}; only {known} loads back")


def media_type(suffix: str) -> str | None:
    """The media type a writer declares for ``suffix`` (None if none does)."""
    return next((w.media_type for w in _registry() if suffix.lower() in w.suffixes and w.media_type), None)


def signatures() -> dict[str, tuple[str, ...]]:
    """``suffix -> the texts its files start with``, for the suffixes whose writers declare one."""
    found: dict[str, tuple[str, ...]] = {}
    for w in _registry():
        for s in w.suffixes if w.signature else ():
            found[s] = (*found.get(s, ()), w.signature)  # type: ignore[arg-type]
    return found
