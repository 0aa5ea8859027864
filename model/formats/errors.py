"""The two exception families every layer shares.

``UserError``: the input is at fault (a bad configuration, checkpoint, dataset or image, a
training run that diverged, a request a worker refuses).  Its message is written for the user
and shown as is: the CLI prints it and exits 2, a worker fails the job with it.  Any other
exception is a bug: the CLI shows the traceback, a worker logs it and fails the job as an
internal error.  ``user_message`` is the one place that makes this decision.

``Cancelled``: a long loop (MCMC sampling, training, scoring) stopped between steps because
``should_cancel()`` answered True.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix; see the module docstring."""


class Cancelled(Exception):
    """``should_cancel()`` answered True between steps."""


def user_message(exc: BaseException) -> str | None:
    """The first line of a user error's message (a ``MemoryError`` counts: the input was too
    large for this machine), or None when ``exc`` is a bug."""
    if not isinstance(exc, (UserError, MemoryError)):
        return None
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
