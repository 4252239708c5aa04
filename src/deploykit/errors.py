"""Errors a user sees. Each names what went wrong and what to change; each maps to an exit code."""

from __future__ import annotations

# Exit codes that mean something to scripts (see ../README.md, "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class DeploykitError(Exception):
    """A failure deploykit explains to the user; ``exit_code`` is what the CLI returns."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"


class BadInput(DeploykitError):
    """The user's input (inventory, variables, options) is wrong; nothing was touched."""

    exit_code = EXIT_BAD_INPUT


class LabError(DeploykitError):
    """The lab could not be created, inspected or removed."""


class BuildError(DeploykitError):
    """A release artifact could not be built (a tool failed); the application was not touched."""
