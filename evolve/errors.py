"""Bad input is reported as one line and exit code 2; the type lives in merge_core so both packages share it."""

from merge_core.errors import UserError

__all__ = ["UserError"]
