"""The project's dev/test partition of a task's evaluation documents (tasks that are not an eval_tasks pair).

Rule (same on every machine, run and worker, independent of Python's or numpy's RNG): document i of task T is
ranked by sha256(f"{seed}:{T}:{i}"); the `n_dev` lowest ranks are dev, every other document is test, with
n_dev = min(dev_size, floor(dev_fraction * n)), at least 1, and at least one document left for test.
Doc ids are lm-eval's indices into the task's evaluation documents (`task.eval_docs`), as `lm_eval --samples` reads them.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from evolve.errors import UserError

DEFAULT_DEV_SIZE = 500
DEFAULT_DEV_FRACTION = 0.5
DEFAULT_SEED = 0


@dataclass(frozen=True)
class SplitRule:
    """Sizes and seed of the partition (tasks.split in a config)."""

    dev_size: int = DEFAULT_DEV_SIZE
    dev_fraction: float = DEFAULT_DEV_FRACTION
    seed: int = DEFAULT_SEED

    @classmethod
    def from_conf(cls, conf: object | None) -> SplitRule:
        """From a config node / mapping with dev_size, dev_fraction, seed (missing keys keep the defaults)."""
        if conf is None:
            return cls()
        get = conf.get if hasattr(conf, "get") else lambda k, d=None: getattr(conf, k, d)
        rule = cls(int(get("dev_size", DEFAULT_DEV_SIZE)), float(get("dev_fraction", DEFAULT_DEV_FRACTION)),
                   int(get("seed", DEFAULT_SEED)))
        rule.check()
        return rule

    def check(self, where: str = "tasks.split") -> None:
        """UserError on sizes that cannot give both splits a document."""
        if self.dev_size < 1:
            raise UserError(f"{where}.dev_size: {self.dev_size} must be >= 1; e.g. tasks.split.dev_size=500")
        if not 0.0 < self.dev_fraction < 1.0:
            raise UserError(f"{where}.dev_fraction: {self.dev_fraction} must be in (0, 1); e.g. tasks.split.dev_fraction=0.5")

    def n_dev(self, n_docs: int) -> int:
        """How many of `n_docs` documents go to dev."""
        return max(1, min(self.dev_size, math.floor(self.dev_fraction * n_docs)))

    def partition(self, task: str, n_docs: int) -> tuple[list[int], list[int]]:
        """(dev ids, test ids) of a task with `n_docs` evaluation documents, each sorted, disjoint, covering all."""
        if n_docs < 2:
            raise UserError(f"tasks: {task} has {n_docs} evaluation document(s); a dev/test split needs at least 2")
        ranked = sorted(range(n_docs), key=lambda i: hashlib.sha256(f"{self.seed}:{task}:{i}".encode()).digest())
        k = self.n_dev(n_docs)
        return sorted(ranked[:k]), sorted(ranked[k:])
