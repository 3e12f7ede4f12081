"""Files of a Hugging Face model repository, found in the local hub cache only (never the network).

The cache layout is huggingface_hub's: ``<cache>/models--<org>--<name>/refs/<branch>`` holds a
commit hash and ``<cache>/models--<org>--<name>/snapshots/<commit>/<path>`` the files (symlinks to
``blobs/``). The cache directory is ``cache_dir``, else ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``,
else ``$XDG_CACHE_HOME/huggingface/hub`` or ``~/.cache/huggingface/hub`` — huggingface_hub's own
order, so files fetched with ``huggingface-cli download`` (or by SAELens/circuit-tracer) are found.
This behaves as ``HF_HUB_OFFLINE=1``: a file that is not in the cache is an error naming it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from sae_circuits.io import SAEFormatError

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The hub cache directory (see the module docstring for the order)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def snapshot(repo_id: str, revision: str = "main", cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached snapshot directory of ``repo_id`` at ``revision`` (a branch, tag or commit)."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise ValueError(f"repo_id={repo_id!r} is not a Hugging Face repository id ('org/name')")
    repo_dir = cache_root(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    if not repo_dir.is_dir():
        raise SAEFormatError(
            f"{repo_dir}: {repo_id!r} is not in the local Hugging Face cache (offline: nothing is "
            "downloaded; fetch it first, e.g. `huggingface-cli download " + repo_id + "`)"
        )
    commit = revision
    if not _COMMIT.match(revision):
        ref = repo_dir / "refs" / revision
        if ".." in PurePosixPath(revision).parts or not ref.is_file():
            raise SAEFormatError(f"{ref}: no cached revision {revision!r} of {repo_id!r}")
        commit = ref.read_text(encoding="utf-8").strip()
    folder = repo_dir / "snapshots" / commit
    if not _COMMIT.match(commit) or not folder.is_dir():
        raise SAEFormatError(f"{folder}: the cached snapshot of {repo_id!r} at {revision!r} is missing")
    return folder


def relative(path: str) -> PurePosixPath:
    """``path`` as a path inside a repository (no absolute path, no ``..``)."""
    inside = PurePosixPath(path.strip("/"))
    if not path or path.startswith("/") or ".." in inside.parts:
        raise ValueError(f"{path!r} is not a path inside a repository")
    return inside


def cached_file(
    repo_id: str, path: str, revision: str = "main", cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The cached file ``path`` of ``repo_id`` at ``revision``; an error naming it if absent."""
    target = snapshot(repo_id, revision, cache_dir) / relative(path)
    if not target.is_file():  # a dangling symlink (its blob deleted) is missing too
        raise SAEFormatError(f"{target}: {path!r} of {repo_id!r} is not in the local Hugging Face cache")
    return target


def parse_hf_uri(uri: str) -> tuple[str, str, str]:
    """``hf://org/name/path/in/repo[?revision=r]`` -> ``(repo_id, path, revision)``."""
    rest = uri.removeprefix("hf://")
    revision = "main"
    if "?" in rest:
        rest, query = rest.split("?", 1)
        for item in query.split("&"):
            key, _, value = item.partition("=")
            if key == "revision" and value:
                revision = value
    parts = rest.split("/")
    if not uri.startswith("hf://") or len(parts) < 3:
        raise ValueError(f"{uri!r} is not an hf://org/name/path URI")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision
