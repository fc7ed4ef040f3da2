"""Per-search trims: each tensor and source's TIES cut and DARE codes for every density of a grid, computed once.

Task vectors never change between the trials of a search, so what a trial's trim needs is computed the first time a
tensor is merged, for every density of GRID at once (methods/cuts.py), kept in memory and, with a folder, on disk
keyed by the sources' content hashes; later trials look their trim up and merge in one fused pass. A density off
the grid (a hand-written recipe) is simply not found and takes the exact path; a found one gives the same keep set
and the same DARE bits as the exact path, so a trial's model equals `evolve merge` of its exported recipe.

Call order: `attach(sources, folder)` once (the search does), then every `merge_into(..., sources)` runs inside
`active(sources)`, where the fused kernels ask `current()` for the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import weakref
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
import torch

from merge_core.methods import cuts, l1

CODE_BYTES = torch.finfo(cuts.CODE_DTYPE).bits // 8  # per entry and source
GRID_STEP = 0.01  # the genome's Optuna step for densities
GRID = tuple(j / 100 for j in range(1, 100))  # densities 0 and 1 need no table
VERSION = "trims-v2"  # part of every key: a change of the grid or of the rules makes old files unused

_STORES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Sources -> TrimStore
_CURRENT: ContextVar[TrimStore | None] = ContextVar("merge_core_trims", default=None)


class TrimStore:
    """Grid trims of one search's sources, in memory and (with `folder`) on disk; `stats` says what they cost."""

    def __init__(self, sources: Any, folder: str | Path | None = None, grid: tuple[float, ...] = GRID,
                 code_budget: int | None = None) -> None:
        self.sources = sources
        self.folder = Path(folder) if folder is not None else None
        self.grid = tuple(sorted(grid))
        self.ks_grid = cuts.near(list(self.grid))
        self.thresholds = sorted(set(cuts.thresholds(cuts.near(list(self.grid)))))
        self._tables: dict[str, dict[str, Any]] = {}
        self._dare: dict[str, torch.Tensor] = {}
        self.code_budget = memory_budget(sources) if code_budget is None else code_budget
        self._labels: dict[int, tuple[str, weakref.ref]] = {}
        self._labelled = -1
        self.stats = {"seconds": 0.0, "bytes_disk": 0, "bytes_memory": 0, "hits": 0, "misses": 0, "computed": 0,
                      "over_budget": 0}

    def _label(self, t: torch.Tensor) -> str | None:
        """'<checkpoint sha256>:<tensor name>' of a cached source tensor (None: not one of the sources' tensors)."""
        cache = self.sources.device_cache
        if len(cache) != self._labelled:
            by_key = {ck.cache_key: ck for ck in self.sources.models.values()}
            self._labels = {}
            for key, tensor in cache.items():
                if isinstance(key, tuple) and len(key) == 3 and key[0] in by_key and isinstance(tensor, torch.Tensor):
                    self._labels[id(tensor)] = (f"{by_key[key[0]].sha256()}:{key[1]}", weakref.ref(tensor))
            self._labelled = len(cache)
        label = self._labels.get(id(t))
        return label[0] if label is not None and label[1]() is t else None

    def _path(self, key: str, suffix: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}{suffix}"

    def magnitude_cut(self, x: torch.Tensor, b: torch.Tensor, density: float) -> tuple[float, int] | None:
        """(kth, cut) of fused._magnitude_cut for this density, from the grid table; None when off the grid."""
        n = x.numel()
        k = max(1, int(density * n))

        def compute() -> dict[str, Any]:
            ks = cuts.ks_for(n, self.ks_grid)
            kth, cut = cuts.magnitude_cuts(x, b, ks)
            # repr of a float round-trips exactly through JSON
            return {"k": ks, "kth": kth, "cut": cut}

        table = self._table("mag", x, b, str(n), compute)
        at = table["at"].get(k) if table is not None else None
        if at is None:
            self.stats["misses"] += 1
            return None
        self.stats["hits"] += 1
        return table["kth"][at], table["cut"][at]

    def _table(self, kind: str, x: torch.Tensor, b: torch.Tensor, extra: str, compute: Any) -> dict[str, Any] | None:
        """The JSON table `kind` of source x against base b (memory, else disk, else compute() once and write it);
        None when x or b is not one of the sources' own tensors."""
        lx, lb = self._label(x), self._label(b)
        if lx is None or lb is None:
            return None
        key = f"{VERSION}|{kind}|{lx}|{lb}|{extra}"
        table = self._tables.get(key)
        if table is None:
            path = self._path(key, ".json")
            data = json.loads(path.read_text()) if path is not None and path.is_file() else {}
            if data.get("key") != key:
                t = time.perf_counter()
                data = {"key": key, **compute()}
                self.stats["seconds"] += time.perf_counter() - t
                self.stats["computed"] += 1
                if path is not None:
                    _write(path, json.dumps(data).encode())
                    self.stats["bytes_disk"] += path.stat().st_size
            table = self._tables[key] = {**data, "at": {k: i for i, k in enumerate(data.get("k", []))}}
        return table

    def dare_codes(self, x: torch.Tensor, b: torch.Tensor, seed: int, density: float,
                   rescale: bool) -> tuple[torch.Tensor, float, tuple[float, float] | None] | None:
        """(codes, lim, norms): the DARE keep mask of this density and seed is `codes < lim`, and with `rescale`
        norms = the exact L1 norms (l1.py) of the whole delta and of its kept entries; None when off the grid or
        when the codes would not fit in the memory budget."""
        n, dev = x.numel(), x.device
        threshold = cuts.thresholds([density])[0]
        try:
            lim = self.thresholds.index(threshold) + 1
        except ValueError:
            self.stats["misses"] += 1
            return None
        key = f"{VERSION}|dare|{n}|{seed}|{dev}"
        codes = self._dare.get(key)
        if codes is None:
            nbytes = n * CODE_BYTES
            if self.stats["bytes_memory"] + nbytes > self.code_budget:
                self.stats["over_budget"] += 1
                return None
            codes = self._dare[key] = self._load_or_compute_codes(key, n, seed).to(dev)
            self.stats["bytes_memory"] += nbytes
        norms = None
        if rescale:
            # [L1 of the whole delta, then of the entries kept at lim = 1, 2, ...]: exact sums per code, added up
            def compute() -> dict[str, Any]:
                below = l1.sums(x, b, code=codes, groups=len(self.thresholds) + 1).cumsum(0)
                return {"norms": [l1.value(below[-1])] + [l1.value(row) for row in below[:-1]]}

            table = self._table("norms", x, b, f"{n}|{seed}", compute)
            if table is None:
                return None
            norms = (table["norms"][0], table["norms"][lim])
        self.stats["hits"] += 1
        return codes, float(lim), norms

    def _load_or_compute_codes(self, key: str, n: int, seed: int) -> torch.Tensor:
        path = self._path(key.rsplit("|", 1)[0], ".codes")
        if path is not None and path.is_file() and path.stat().st_size == n * CODE_BYTES:
            return _mapped(path, n)
        t = time.perf_counter()
        codes = torch.from_numpy(cuts.dare_codes(n, seed, self.thresholds)).to(cuts.CODE_DTYPE)
        self.stats["seconds"] += time.perf_counter() - t
        self.stats["computed"] += 1
        if path is None:
            return codes
        _write(path, codes.view(torch.int16).numpy().tobytes())
        self.stats["bytes_disk"] += n * CODE_BYTES
        return _mapped(path, n)  # file-backed pages: the kernel may drop and reread them under memory pressure


def _mapped(path: Path, n: int) -> torch.Tensor:
    return torch.from_numpy(np.memmap(path, dtype=np.int16, mode="c", shape=(n,))).view(cuts.CODE_DTYPE)


def memory_budget(sources: Any) -> int:
    """Bytes of DARE codes a store may hold: what the machine has available beyond the sources' own files (which a
    search keeps in the page cache), halved to leave room for everything else; unlimited where unknown."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        available = info["MemAvailable"]
    except (OSError, KeyError, ValueError, IndexError):
        return 1 << 62
    files = sum(p.stat().st_size for ck in sources.models.values() for p in ck.files)
    return max(0, (available - files) // 2)


def _write(path: Path, data: bytes) -> None:
    # write then rename: a killed search never leaves a half-written table that a resume would trust
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def attach(sources: Any, folder: str | Path | None = None) -> TrimStore:
    """Give `sources` a grid trim store (once per search): merges into them look their trims up from then on."""
    store = _STORES.get(sources)
    if store is None or (folder is not None and store.folder != Path(folder)):
        store = _STORES[sources] = TrimStore(sources, folder)
    return store


def store_of(sources: Any) -> TrimStore | None:
    """The store attached to `sources`, if any."""
    return _STORES.get(sources)


@contextlib.contextmanager
def active(sources: Any) -> Iterator[TrimStore | None]:
    """Make the store attached to `sources` (if any) the one the fused kernels consult inside the block."""
    token = _CURRENT.set(_STORES.get(sources))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def current() -> TrimStore | None:
    """The store of the merge in progress (None outside `active`, or when its sources have none)."""
    return _CURRENT.get()
