"""Cheap fingerprints of a model repository, to notice what changed between two polls.

A model's fingerprint is the sorted list of every entry under its directory (config.pbtxt,
version directories, model files, recursively) with each file's size, modification time and inode:
``stat`` calls only, never reading a model file, so polling a repository of large models every
few seconds costs next to nothing. Two fingerprints differ when a file is added, removed,
rewritten or touched, or a version directory appears or goes. Hidden entries (``.git``, editor
swap files) are ignored, as the repository ignores hidden model directories.

Symbolic links are followed (repositories often link version directories to shared storage);
each real directory is visited once, so a link cycle cannot loop.

As with Triton's poll mode, a model copied in slowly may be seen half-written: the load then
fails (the previous version keeps serving) and the next poll retries it once the copy changes
the fingerprint again. Move finished models into place (``mv``) to avoid the failed attempt.

Example::

    before = repository_fingerprints(Path("model_repository"))
    ...  # edit a config.pbtxt
    after = repository_fingerprints(Path("model_repository"))
    changed = {m for m in before.keys() & after.keys() if before[m] != after[m]}
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["Fingerprint", "model_fingerprint", "repository_fingerprints"]

#: ``(relative path, size, mtime_ns, inode)`` per file; ``(relative path/, -1, 0, 0)`` per
#: directory. The inode catches a file atomically replaced (``os.replace``) by one of the same
#: size within the file system's timestamp granularity.
Fingerprint = tuple[tuple[str, int, int, int], ...]


def repository_fingerprints(root: Path) -> dict[str, Fingerprint]:
    """Fingerprint of every model directory in ``root`` (the names a repository lists)."""
    out: dict[str, Fingerprint] = {}
    try:
        children = list(os.scandir(root))
    except OSError:
        return out
    for child in children:
        if child.name.startswith("."):
            continue
        try:
            if child.is_dir():
                out[child.name] = model_fingerprint(Path(child.path))
        except OSError:
            continue  # removed while scanning: absent this time
    return out


def model_fingerprint(model_dir: Path) -> Fingerprint:
    """The sorted entries under ``model_dir`` with sizes and modification times."""
    entries: list[tuple[str, int, int, int]] = []
    seen: set[tuple[int, int]] = set()
    _walk(Path(model_dir), "", entries, seen)
    entries.sort()
    return tuple(entries)


def _walk(
    directory: Path,
    prefix: str,
    entries: list[tuple[str, int, int, int]],
    seen: set[tuple[int, int]],
) -> None:
    try:
        info = directory.stat()
        if (info.st_dev, info.st_ino) in seen:
            return
        seen.add((info.st_dev, info.st_ino))
        children = list(os.scandir(directory))
    except OSError:
        return
    for child in children:
        if child.name.startswith("."):
            continue
        rel = prefix + child.name
        try:
            st = child.stat()  # follows links
        except OSError:
            continue  # a dangling link or an entry removed meanwhile
        if child.is_dir():
            entries.append((rel + "/", -1, 0, 0))
            _walk(Path(child.path), rel + "/", entries, seen)
        else:
            entries.append((rel, st.st_size, st.st_mtime_ns, st.st_ino))
