"""Entry-point error handling: a user's mistake is one clear line, a bug keeps its traceback.

Every error class this package raises for bad input (bad config, checkpoint, module file, data,
composition request, busy workdir, diverged training...) is printed as `error: <message>` with exit
status 1; anything else propagates with its traceback. PEFT_JAX_TRACEBACK=1 shows tracebacks always.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

class UsageError(ValueError):
    """A setting an entry point needs is missing or malformed (printed as one line, like every user error)."""


_OS_USER_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_user_error(e: BaseException) -> bool:
    """Errors of this package's own classes, and file-system errors about the user's paths."""
    return any(c.__module__.startswith("peft_jax.") for c in type(e).__mro__) or isinstance(e, _OS_USER_ERRORS)


def run(main: Callable[[], object]) -> int:
    """Calls `main`; returns its exit status (0, or 1 after printing a user error)."""
    try:
        main()
    except Exception as e:  # pylint: disable=broad-except
        if not is_user_error(e) or os.environ.get("PEFT_JAX_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
