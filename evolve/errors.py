"""Bad input is reported as one line and exit code 2; the type lives in merge_core so both packages share it."""

from merge_core.errors import UserError

__all__ = ["RunFailed", "UserError"]


class RunFailed(UserError):
    """A run that stopped itself because trials kept failing: one line like bad input, but exit code 1."""

    exit_code = 1
