"""Self-verifying cache entries and atomic writes (docs/numerics.md#caches).

A cache entry is one file that holds its full key (everything that determines its numbers, including the
kerneleft version) and a sha256 checksum of its payload. A reader trusts an entry only if it parses, its checksum
matches and its key is exactly the requested one; anything else (truncated, empty, corrupt, a file copied over
another key, an older format, a partial batch) is recomputed after a one-line :class:`CacheWarning`.

Writes go to a temporary file unique to the process and thread, then ``os.replace`` it onto the entry: readers
see the old entry or the new one, never a mix. Concurrent runs into one directory are last-writer-wins; each entry
is self-contained and self-verifying, so no entry can mix two batches.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

__all__ = ["CacheWarning", "payload_checksum", "atomic_write", "reject"]


class CacheWarning(UserWarning):
    """A cache entry was not trusted and is recomputed (the message names the file and the reason)."""


def payload_checksum(entries: Mapping[str, np.ndarray]) -> str:
    """sha256 (hex) of named arrays: name, dtype, shape and bytes of each, in name order."""
    h = hashlib.sha256()
    for name in sorted(entries):
        a = np.ascontiguousarray(entries[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[object], None]) -> None:
    """Create ``path`` atomically: ``write(binary file)`` into a temporary file in the same directory (unique per
    process and thread), then ``os.replace``; the temporary file is removed if anything fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def reject(path: Path, reason: str) -> None:
    """Warn (one line, :class:`CacheWarning`) that the entry ``path`` is not trusted and will be recomputed."""
    warnings.warn(f"cache: {path}: {reason}; recomputing it", CacheWarning, stacklevel=3)
