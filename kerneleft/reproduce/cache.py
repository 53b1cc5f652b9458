"""Self-verifying cache entries, atomic writes and the result cache of ``reproduce`` (docs/numerics.md#caches).

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
import json
import os
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .._version import __version__
from ..result import KernelResult, to_jsonable

__all__ = ["CacheWarning", "payload_checksum", "atomic_write", "reject", "ResultCache"]


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


class ResultCache:
    """KernelResults on disk, one self-verifying ``<kind>-<hash>.npz`` per result (docs/numerics.md#caches).

    The file name hashes the entry's *key*: ``kind``, the kerneleft version and the defining ``fields`` (for an
    ensemble batch: config, method, width, samples, seed, chunk size). The file stores that key and a sha256 of its
    whole payload; :meth:`get` trusts it only if both match, and otherwise (truncated, empty, corrupt, copied
    from another key, older format) warns once (:class:`CacheWarning`) and recomputes. A result
    marked ``interrupted`` is never stored. Writes are atomic (unique temporary file + ``os.replace``); concurrent
    runs into one directory are last-writer-wins over complete, self-contained entries.
    """

    FORMAT = "kerneleft-cache/2"

    def __init__(self, root: str | Path, enabled: bool = True):
        self.root = Path(root)
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        self.rejected = 0

    @staticmethod
    def key(kind: str, fields: Mapping) -> str:
        """The entry's key as canonical JSON: kind, kerneleft version and ``fields``."""
        return json.dumps(to_jsonable({"kind": kind, "kerneleft": __version__, **fields}), sort_keys=True)

    def path(self, kind: str, fields: Mapping) -> Path:
        return self.root / f"{kind}-{hashlib.sha256(self.key(kind, fields).encode()).hexdigest()[:20]}.npz"

    def get(self, kind: str, fields: Mapping, compute: Callable[[], KernelResult]) -> tuple[KernelResult, bool]:
        """The verified cached result for (kind, fields), else ``compute()``, stored unless it is marked
        ``interrupted``; returns (result, was_cached)."""
        key, path = self.key(kind, fields), self.path(kind, fields)
        if self.enabled and path.exists():
            res = self.load(path, key)
            if res is not None:
                self.hits += 1
                return res, True
            self.rejected += 1
        self.misses += 1
        res = compute()
        res = KernelResult(res.t, res.arrays, res.se, json.loads(json.dumps(to_jsonable(res.meta))))
        if self.enabled and not res.meta.get("interrupted"):
            self.store(path, key, res)
        return res, False

    @classmethod
    def store(cls, path: Path, key: str, res: KernelResult) -> None:
        """Write ``res`` as ``key``'s entry at ``path`` (checksummed, atomic: readers see the old or the new entry)."""
        data = {"format": np.array(cls.FORMAT), "key": np.array(key), "t": np.asarray(res.t),
                "meta": np.array(json.dumps(to_jsonable(res.meta)))}
        data.update({f"a:{k}": np.asarray(v) for k, v in res.arrays.items()})
        data.update({f"s:{k}": np.asarray(v) for k, v in res.se.items()})
        data["checksum"] = np.array(payload_checksum(data))
        atomic_write(path, lambda fh: np.savez(fh, **data))

    @classmethod
    def load(cls, path: Path, key: str) -> KernelResult | None:
        """The entry at ``path`` if it is intact and is exactly ``key``'s, else None (after a CacheWarning)."""
        try:
            with open(path, "rb") as fh, np.load(fh) as z:
                data = {k: z[k] for k in z.files}
            checksum = str(data.pop("checksum", ""))
            if str(data.get("format", "")) != cls.FORMAT:
                reason = f"not a {cls.FORMAT} entry (older kerneleft or another file)"
            elif checksum != payload_checksum(data):
                reason = "checksum mismatch (corrupt or edited)"
            elif str(data["key"]) != key:
                reason = "belongs to another key (copied or stale entry)"
            else:
                return KernelResult(data["t"], {k[2:]: v for k, v in data.items() if k.startswith("a:")},
                                    {k[2:]: v for k, v in data.items() if k.startswith("s:")},
                                    json.loads(str(data["meta"])))
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as err:
            reason = f"unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'empty'})"
        reject(path, reason)
        return None
