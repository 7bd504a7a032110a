"""A cache of a frozen image encoder's features, so sweep trials never run the encoder.

With the encoder frozen (the paper's preset), its output for a painting is the same in every
epoch of every trial. It is computed once (:mod:`sevlm.feature_encoding` with Ray Data, or
:mod:`sevlm.frozen_encoder` in one process) and stored here: one folder per key, the key
naming everything the features depend on (encoder, its weights, image size, resampling (with
Pillow's version) and statistics, the images themselves, the storage dtype;
:func:`sevlm.frozen_encoder.cache_key`).

Layout of ``<root>/<digest>/``:

- ``features.npy``: fp16 ``[N, M, C]``, the encoder's tokens *before* its projection (which
  trains); read through a memory map, never loaded whole.
- ``keys.json``: the painting key of each row.
- ``meta.json``: the key, the shape, and the paintings whose image could not be read, by
  reason. Written last.

A folder is filled under a temporary name in ``<root>``, synced, and renamed into place, so a
folder named by its digest is complete; a half-written one (a crash, a kill) is never opened.
One that is damaged all the same (it does not load) is written again and replaced.
No Ray and no torch here: the Ray Data tasks that read a cache import this module in fresh
worker processes, and torch alone would take seconds there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
"""Bumped whenever what a cache holds, or how, changes: older caches then miss."""
FEATURES_FILE, KEYS_FILE, META_FILE = "features.npy", "keys.json", "meta.json"
DTYPE = np.float16
Dropped = dict[str, list[str]]


# ---- the key ----


def data_fingerprint(images: Mapping[str, str]) -> str:
    """SHA-256 of ``painting key -> image path`` with each file's size and modification time:
    another dataset, or an image replaced on disk, gives another key."""
    digest = hashlib.sha256()
    for key in sorted(images):
        path = Path(images[key]).absolute()
        try:
            stat = path.stat()
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        digest.update(f"{key}\0{path}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


def key_digest(key: dict[str, Any]) -> str:
    """The folder name of a key: a short hash of its canonical JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


# ---- reading ----


@dataclass
class FeatureCache:
    """A complete cache folder, memory-mapped: rows are read from disk as they are looked up."""

    path: Path
    key: dict[str, Any]
    features: np.ndarray
    """``[N, M, C]`` fp16, a read-only memory map."""
    index: dict[str, int]
    """Painting key -> row."""
    dropped: Dropped = field(default_factory=dict)
    """Paintings left out when caching (their image could not be read), by reason."""

    @classmethod
    def open(cls, root: Path | str, key: dict[str, Any]) -> FeatureCache | None:
        """The cache for ``key`` under ``root``; None when there is none, or only part of one."""
        folder = Path(root) / key_digest(key)
        try:
            cache = cls.load(folder)
        except (OSError, ValueError, KeyError, TypeError):  # TypeError: JSON of another shape
            return None
        return cache if cache.key == key else None

    @classmethod
    def load(cls, folder: Path | str) -> FeatureCache:
        """The cache in ``folder``, whatever its key; raises if it is absent or incomplete."""
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())  # written last: absent -> partial
        keys = json.loads((folder / KEYS_FILE).read_text())
        rows = int(meta["rows"])
        features = np.load(folder / FEATURES_FILE, mmap_mode="r")
        if len(keys) != rows or features.shape[0] < rows or features.dtype != DTYPE:
            raise ValueError(
                f"feature cache {folder} is inconsistent: {rows} rows in {META_FILE}, "
                f"{len(keys)} keys, features {features.shape} {features.dtype}"
            )
        index = {k: i for i, k in enumerate(keys)}
        dropped = {r: list(v) for r, v in meta.get("dropped", {}).items()}
        return cls(folder, meta["key"], features[:rows], index, dropped)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def reason(self, key: str) -> str | None:
        """Why ``key`` was left out when caching, if it was."""
        return next((r for r, keys in self.dropped.items() if key in keys), None)

    def lookup(self, keys: Iterable[str]) -> np.ndarray:
        """fp16 features ``[len(keys), M, C]`` of paintings, in the order given."""
        keys = [str(k) for k in keys]
        missing = [k for k in keys if k not in self.index]
        if missing:
            why = self.reason(missing[0])
            detail = f"left out when caching ({why})" if why else "never cached"
            raise KeyError(
                f"{len(missing)} painting(s) not in the feature cache {self.path}, e.g. "
                f"{missing[0]!r}: {detail}. The cache holds {len(self)} paintings."
            )
        rows = [self.index[k] for k in keys]
        return np.asarray(self.features[rows]) if rows else self.features[:0].copy()


def load_cached(folder: str) -> FeatureCache:
    """:meth:`FeatureCache.load`, once per process and folder (pipeline tasks call this per
    batch; parsing ``keys.json`` each time would dominate). Keyed by the folder's inode too:
    a folder replaced since (a damaged cache written again) is loaded afresh."""
    return _load_once(folder, os.stat(folder).st_ino)


@lru_cache(maxsize=4)
def _load_once(folder: str, inode: int) -> FeatureCache:
    return FeatureCache.load(folder)


def attach_features(batch: dict, cache: FeatureCache) -> tuple[dict, Dropped]:
    """Add ``image_features`` to a batch of painting records, in place of decoding pixels.

    Rows the cache lacks are dropped, returned by the reason the cache recorded for them
    (``missing_features`` when it recorded none), as :func:`sevlm.examples.decode_batch`
    drops unreadable images.
    """
    keys = [str(k) for k in batch["key"]]
    keep = [i for i, k in enumerate(keys) if k in cache]
    dropped: Dropped = {}
    for k in keys:
        if k not in cache:
            dropped.setdefault(cache.reason(k) or "missing_features", []).append(k)
    out = {k: take_rows(v, keep) for k, v in batch.items()}
    out["image_features"] = cache.lookup(keys[i] for i in keep)
    return out, dropped


def take_rows(values: np.ndarray | list, index: list[int]) -> np.ndarray | list:
    """The rows at ``index`` of a batch's column, an array or a list (Ray Data gives both)."""
    if isinstance(values, np.ndarray):
        return values[index]
    return [values[i] for i in index]


# ---- writing ----


def cached_or_written(
    root: Path | str,
    key: dict[str, Any],
    total: int,
    encode: Callable[[], tuple[Iterable[tuple[list[str], np.ndarray]], Callable[[], Dropped]]],
    printer: Callable[[str], None],
    what: str = "paintings",
) -> Path:
    """The cache folder of ``key``: the complete one under ``root``, else written from
    ``encode()``: ``(keys, features)`` batches of ``total`` rows at most (``what`` says which)
    and a function giving the paintings left out, by reason, once the batches are done."""
    hit = FeatureCache.open(root, key)
    if hit is not None:
        printer(f"feature cache hit: {hit.path} ({len(hit)} paintings)")
        return hit.path
    damaged = Path(root) / key_digest(key)
    if damaged.exists():
        printer(f"feature cache {damaged} is damaged (it does not load): writing it again")
    printer(f"feature cache: encoding {total} {what} into {root}")
    batches, dropped = encode()
    path = write_cache(root, key, _progress(batches, total, printer), total, dropped=dropped)
    printer(f"feature cache written: {path}")
    return path


def _progress(
    batches: Iterable[tuple[list[str], np.ndarray]], total: int, printer: Callable[[str], None]
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Pass batches through, printing how many images are done every 30 s (and at the end)."""
    done, last = 0, time.monotonic()
    for keys, features in batches:
        done += len(keys)
        if time.monotonic() - last >= 30:
            printer(f"feature cache: {done}/{total} images")
            last = time.monotonic()
        yield keys, features
    printer(f"feature cache: {done}/{total} images encoded")


def write_cache(
    root: Path | str,
    key: dict[str, Any],
    batches: Iterable[tuple[list[str], np.ndarray]],
    total: int,
    dropped: Callable[[], Dropped] | Dropped | None = None,
) -> Path:
    """Write ``(keys, features)`` batches (at most ``total`` rows) as the cache of ``key``.

    Atomic: the folder is filled under a temporary name and renamed into place after
    ``meta.json``. When another process got there first, its cache is kept and ours dropped;
    a damaged folder in the way is replaced.
    ``dropped`` (or a function giving it, called after the last batch) records the paintings
    that could not be cached.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / key_digest(key)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        rows, keys = _write_rows(staging / FEATURES_FILE, batches, total)
        shape = [rows, *_row_shape(staging / FEATURES_FILE)]
        lost = dropped() if callable(dropped) else dropped or {}
        _write_synced(staging / KEYS_FILE, json.dumps(keys))
        meta = {"key": key, "rows": rows, "shape": shape,
                "dropped": {r: sorted(v) for r, v in sorted(lost.items())}}  # fmt: skip
        _write_synced(staging / META_FILE, json.dumps(meta, indent=1, sort_keys=True))
        staging.chmod(0o755)  # mkdtemp makes it private; other users' runs may read it
        _fsync(staging)  # its entries on disk before its name is
        _move_into_place(staging, target, key)
        _fsync(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _move_into_place(staging: Path, target: Path, key: dict[str, Any]) -> None:
    """Rename ``staging`` to ``target``. A ``target`` that loads with our key is another
    process's cache (it won the race): ours is dropped. Any other ``target`` is damaged (a
    crash before its files reached the disk, a hand): moved aside, then replaced."""
    try:
        staging.rename(target)
        return
    except OSError:
        if not target.exists():
            raise  # not a race: a real failure
    if _damaged(target, key):
        _replace(staging, target, key)


def _damaged(target: Path, key: dict[str, Any]) -> bool:
    """Whether ``target`` cannot be the cache of ``key``: a file missing, a file that does not
    parse, another key. An I/O error of another kind (a stale NFS handle, too many open files)
    proves nothing, and a good cache that others read must not be thrown away for it."""
    try:
        return FeatureCache.load(target).key != key
    except FileNotFoundError:
        return True
    except OSError:
        return False
    except (ValueError, KeyError, TypeError):
        return True


def _replace(staging: Path, target: Path, key: dict[str, Any]) -> None:
    """Put ``staging`` in the place of the damaged ``target``. Another process replacing it
    at the same time may get there first: its complete cache is then kept."""
    if not _damaged(target, key):
        return  # another process has just put a complete cache there
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}-broken-", dir=target.parent))
    try:
        target.rename(aside / "old")
    except FileNotFoundError:
        pass  # moved aside by that other process
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:
        if FeatureCache.open(target.parent, key) is None:
            raise


def _write_rows(
    path: Path, batches: Iterable[tuple[list[str], np.ndarray]], total: int
) -> tuple[int, list[str]]:
    """Fill an fp16 memmap of ``total`` rows, allocated at the first batch (its shape is the
    features'); rows past the last written are never read (``meta.json`` says how many)."""
    array, keys = None, []
    for batch_keys, features in batches:
        if len(batch_keys) != len(features):
            raise ValueError(f"{len(batch_keys)} keys for {len(features)} feature rows")
        if array is None:
            shape = (total, *features.shape[1:])
            array = np.lib.format.open_memmap(path, mode="w+", dtype=DTYPE, shape=shape)
        if len(keys) + len(features) > total:
            raise ValueError(f"more than the {total} rows announced")
        array[len(keys) : len(keys) + len(features)] = features
        keys.extend(str(k) for k in batch_keys)
    if array is None:  # nothing to cache: an empty array still says what was asked
        np.save(path, np.zeros((0, 0, 0), DTYPE))
    else:
        array.flush()
        del array
    _fsync(path)
    return len(keys), keys


def _row_shape(path: Path) -> list[int]:
    return list(np.load(path, mmap_mode="r").shape[1:])


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk. For a folder it is best effort:
    some network and FUSE file systems refuse to sync one (EINVAL), and the files in it are
    synced already."""
    folder = path.is_dir()
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if not folder:
            raise
