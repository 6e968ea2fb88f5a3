"""The one base class of the errors a user must act on.

A :class:`StudioError` carries one sentence that says what went wrong and what to do. The CLI
prints it as ``error: <sentence>`` and exits with code 2; the UI shows it in the tab's message
box; the HTTP API answers it with a JSON error. Anything else that escapes is a bug (exit 1).

Feature modules subclass it (ConfigError, DatasetError, JobError, ...) and may also subclass a
builtin (ValueError, RuntimeError) where callers catch that.
"""

from __future__ import annotations


class StudioError(Exception):
    """A user-facing error; ``str(err)`` is one sentence."""


def first_line(exc: BaseException, limit: int = 400) -> str:
    """The first non-empty line of an exception's message (its class name when it has none)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]
