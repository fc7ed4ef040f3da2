"""The one bad-input error: one line naming the file/key and the fix; the CLI maps it to exit code 2."""


class UserError(Exception):
    """Bad input from the user (file, key or value)."""

    exit_code = 2
