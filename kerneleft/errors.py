"""The package's own exception types (docs/reference.md#errors).

Every failure a user can cause or must act on is one of these, with a one-line message that starts with the
config field or option it concerns (``branch[2].C_W: must be finite and >= 0``). The CLI maps them to exit codes;
any other exception is a bug and keeps its traceback (exit 1).

==========================  ==========  ====================================================================
exception                   CLI exit    meaning
==========================  ==========  ====================================================================
:class:`InputError`         2           bad input: a config field, option or file (a ValueError and a TypeError)
:class:`ConvergenceError`   3           a solver did not reach its tolerance within its budget; the message
                                        states the achieved error and the option to change
:class:`Interrupted`        130         Ctrl-C / SIGTERM; finished work was kept and is marked ``interrupted``
==========================  ==========  ====================================================================
"""
from __future__ import annotations

__all__ = ["KerneleftError", "InputError", "ConvergenceError", "Interrupted", "EXIT_CODES"]


class KerneleftError(Exception):
    """Base of the expected failures: one-line message, no traceback at the CLI."""


class InputError(KerneleftError, ValueError, TypeError):
    """Bad user input. Subclasses ValueError (and TypeError) so ``except ValueError`` keeps working."""


class ConvergenceError(KerneleftError, RuntimeError):
    """A solver stopped before reaching its tolerance; the message states the achieved error."""


class Interrupted(KerneleftError):
    """The run was interrupted (SIGINT/SIGTERM) after keeping its finished work (docs/numerics.md#interrupts).

    ``result``: the partial result, marked ``interrupted``, for the caller to write (None if there is none).
    """

    def __init__(self, message: str = "interrupted", result=None):
        super().__init__(message)
        self.result = result


EXIT_CODES = {InputError: 2, ConvergenceError: 3, Interrupted: 130}
