"""Where lmlab keeps caches and finds the shared data sets."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LmlabError


def cache_dir(*parts: str) -> Path:
    """User cache root (`$LMLAB_CACHE`, else `$XDG_CACHE_HOME/lmlab`, else `~/.cache/lmlab`), created on demand."""
    root = os.environ.get("LMLAB_CACHE")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lmlab"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def shared_data(*parts: str) -> Path:
    """A file under the shared data folder (`$LMLAB_DATA`, else `../shared/data` beside the checkout)."""
    env = os.environ.get("LMLAB_DATA")
    candidates = [Path(env)] if env else []
    candidates += [
        repo_root().parent / "shared" / "data",
        repo_root() / "shared" / "data",
        Path.cwd().parent / "shared" / "data",
    ]
    for base in candidates:
        path = base.joinpath(*parts)
        if path.exists():
            return path
    raise LmlabError(
        f"shared data file {'/'.join(parts)} not found under {', '.join(str(c) for c in candidates)}",
        hint="set LMLAB_DATA to the folder that holds the shared data sets, or pass the file explicitly",
    )


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces `path` in one rename, so readers
    never see a half-written checkpoint and a crash leaves the old one in place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
