"""Where systems plug into core. Core never imports a system by name.

A system declares itself in `pyproject.toml` under `[project.entry-points."lmlab.systems"]` (name = the system,
value = its package). `load_systems()` imports each declared package once, and importing a system registers what it
offers core: model aliases (`loader.ALIASES[name] = locate`) and speculative decoding methods
(`register_speculative`). Third-party packages can plug in the same way, with an entry point of their own.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any

from .errors import LmlabError

GROUP = "lmlab.systems"
SPECULATIVE: dict[str, Callable[..., Iterator[Any]]] = {}
"""method name -> fn(lm: LoadedModel, prompt_ids: list[int], params: SamplingParams) -> Iterator[StreamEvent]."""
_loaded: set[str] = set()


def register_speculative(name: str, stream: Callable[..., Iterator[Any]]) -> None:
    """Offer a speculative decoding method to `LocalBackend(speculative=name)` and `lmlab generate --speculative`."""
    SPECULATIVE[name] = stream


def load_systems() -> bool:
    """Import every declared system not imported yet; True if any was (so registries may have grown)."""
    new = False
    for ep in entry_points(group=GROUP):
        if ep.name in _loaded:
            continue
        _loaded.add(ep.name)
        try:
            importlib.import_module(ep.value)
            new = True
        except ImportError as e:  # a system whose optional dependencies are absent: the others still load
            logging.getLogger("lmlab").warning("system %s not loaded: %s", ep.name, e)
    return new


def speculative(name: str) -> Callable[..., Iterator[Any]]:
    """The registered speculative method `name` (loading systems on first use)."""
    if name not in SPECULATIVE:
        load_systems()
    if name not in SPECULATIVE:
        known = ", ".join(sorted(SPECULATIVE)) or "none installed"
        raise LmlabError(f"--speculative {name!r}: unknown method", hint=f"choose from {known}")
    return SPECULATIVE[name]
