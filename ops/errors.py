"""The operator CLI's own error: one line on stderr and a specific exit code."""

from __future__ import annotations

from shared.contract.errors import TerminatorError


class CliError(TerminatorError):
    """An operator CLI failure, reported as one line on stderr with a specific exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
