"""User-facing errors: one line naming the file and the fix, no traceback."""
import functools
import sys


class InputError(Exception):
    """Bad input a user can fix; the message names the file and the fix."""


def exits_cleanly(entry):
    """Wrap a console-script entry: InputError -> one line on stderr and exit status 2."""
    @functools.wraps(entry)
    def wrapper(*args, **kwargs):
        try:
            return entry(*args, **kwargs)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    return wrapper
