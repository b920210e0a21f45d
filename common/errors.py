"""User-facing errors: one sentence naming the file or key, a non-zero exit, no traceback.

Bundle configs are evaluated by MONAI's ConfigParser, which wraps every exception in ``RuntimeError("Failed to
evaluate ...")``. A user who passed a wrong path should not have to dig through that chain, so bundles call
:func:`install_excepthook` in their ``initialize`` section: an uncaught :class:`InputError` anywhere in the cause chain
is printed as a single ``error: ...`` line and the process exits with status 2.
"""

from __future__ import annotations

import errno
import sys
from types import TracebackType

__all__ = [
    "InputError",
    "OutputError",
    "WRITE_ERRNOS",
    "find_input_error",
    "first_line",
    "install_excepthook",
    "as_flag",
    "EXIT_INPUT_ERROR",
]

EXIT_INPUT_ERROR = 2


class InputError(ValueError):
    """Bad user input (path, file content or config value). ``str(err)`` is one sentence naming the culprit."""


class OutputError(InputError):
    """An output could not be written (read-only folder, full disk); nothing partial was left under its name."""


# errno values that mean "this output cannot be written here": reported like bad input, in one sentence
WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-sentence errors."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__).rstrip(".")


def as_flag(value: object, key: str) -> bool:
    """A boolean config value; also the strings "true"/"false" a command line passes (``--key true``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InputError(f"'{key}' must be true or false, got {value!r}.")


def find_input_error(exc: BaseException | None) -> InputError | None:
    """Return the first :class:`InputError` in ``exc``'s cause/context chain, if any; an ``OSError`` that refuses a
    write (permission, read-only file system, no space, file too large) becomes an :class:`OutputError` naming the
    file."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, InputError):
            return exc
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            where = f"'{exc.filename}'" if exc.filename else "an output file"
            return OutputError(f"could not write {where} ({exc.strerror}); choose a writable folder with free space.")
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    user_error = find_input_error(exc)
    if user_error is None:
        sys.__excepthook__(exc_type, exc, tb)
        return
    sys.stderr.write(f"error: {user_error}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    # excepthook cannot choose the exit status; leave now with the documented one.
    import os

    os._exit(EXIT_INPUT_ERROR)


def install_excepthook() -> bool:
    """Make uncaught :class:`InputError` s print one line and exit with status 2. Returns True (usable in configs)."""
    sys.excepthook = _hook
    return True
