"""Errors a user can fix: one clear line and a hint, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; `tasks.py` prints it as `error: ...` + `hint: ...`."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\nhint: {self.hint}" if self.hint else self.message
