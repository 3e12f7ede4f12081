"""Writing files so that a reader never sees half of one: every file the library writes (SAE
folders, graphs, automata, pages, cards) goes through a temporary beside it and a rename.

- :func:`atomic_write_text`: one text file.
- ``_atomic_files``: several files staged together and renamed into place only if every write worked.
- :func:`remove_stale_temporaries`: the hidden temporaries that killed writes left behind.

Stdlib only, so that writing a file never loads torch.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_STAGING, _RETIRED = ".saetmp", ".saeold"
_STALE_AFTER_S = 60.0  # a temporary of a dead process younger than this is left alone (shared folders)


def _temporary_of(name: str, entry: str) -> tuple[int | None, str] | None:
    """``(pid or None, kind)`` when ``entry`` is a hidden temporary this library made for ``name``."""
    match = re.fullmatch(
        rf"\.{re.escape(name)}\.(?:(\d+)\.)?([a-z0-9_]+)(\.tmp|{_STAGING}|{_RETIRED})", entry
    )
    if match is None:
        return None
    return (int(match[1]) if match[1] else None), match[3]


def _alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no safe liveness probe: os.kill would terminate the process on Windows
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Delete the hidden temporaries that killed saves of ``target`` left beside it; returns them.

    A temporary is stale when the process that made it is gone (or it predates process tagging)
    and it is older than a minute. If ``target`` itself is missing because a save was killed between
    its two renames, the old copy is put back instead of deleted.
    """
    target = Path(target)
    parent = target.parent
    try:
        entries = os.listdir(parent)
    except OSError:
        return []
    removed = []
    now = time.time()
    for entry in sorted(entries):
        found = _temporary_of(target.name, entry)
        if found is None:
            continue
        pid, kind = found
        path = parent / entry
        try:
            old_enough = now - path.lstat().st_mtime > _STALE_AFTER_S
        except OSError:
            continue
        if not old_enough or (pid is not None and _alive(pid)):
            continue
        if kind == _RETIRED and not target.exists() and not path.is_symlink():
            os.rename(path, target)
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextmanager
def _atomic_files(
    folder: Path, commit_last: str | None = None, obsolete: Sequence[str] = ()
) -> Iterator[Callable[[str, Callable[[str], Any]], None]]:
    """Stage files as temporaries in ``folder``; rename them all into place only if every write worked.

    ``commit_last``: that file is deleted before the others are renamed and renamed in last, so an
    interrupted commit leaves it missing rather than paired with the wrong files; ``obsolete``
    files are deleted just before it.
    """
    staged: list[tuple[str, Path]] = []

    def write(name: str, writer: Callable[[str], Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=folder)
        os.close(fd)
        staged.append((tmp, folder / name))
        writer(tmp)

    try:
        yield write
        # mkstemp makes 0600 files: give a new file the usual permissions, a rewritten one its own
        for tmp, final in staged:
            os.chmod(tmp, _mode_of(final, 0o666 & ~_umask()))
        staged.sort(key=lambda item: item[1].name == commit_last)
        if commit_last is not None:
            (folder / commit_last).unlink(missing_ok=True)
        for tmp, final in staged:
            if final.name == commit_last:
                for name in obsolete:
                    (folder / name).unlink(missing_ok=True)
            try:
                os.replace(tmp, final)
            except OSError as err:  # name the file the caller asked for, not the staging file
                raise type(err)(err.errno, err.strerror, str(final)) from None
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _mode_of(path: Path, default: int) -> int:
    """The permission bits of ``path``, or ``default`` when there is no such file."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return default


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux): setting it
    to read it would, for that moment, give files other threads create every permission."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # elsewhere: the briefest change, and never a more permissive one
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename (stale temporaries of
    earlier killed writes of ``path`` are removed first)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    with _atomic_files(target.parent) as write:
        write(target.name, lambda p: Path(p).write_text(text, encoding="utf-8"))
    return target
