"""`python -m tests.helpers.fake_cli COMMAND k=v ...`: evolve's CLI with the fast FakeEvaluator injected in code.

The user's config never names an evaluator; tests that need the fake world's scores run this entry instead of
`python -m evolve` (same commands, exit codes and outputs; search/export/report score with FakeEvaluator).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from evolve.cli import main as evolve_main
from tests.helpers.fake_eval import FakeEvaluator


def main(argv: Sequence[str] | None = None, evaluator_factory: type = FakeEvaluator) -> int:
    """evolve.cli.main with `evaluator_factory` (FakeEvaluator unless given) for search, export and report."""
    return evolve_main(argv, evaluator_factory=evaluator_factory)


if __name__ == "__main__":
    sys.exit(main())
