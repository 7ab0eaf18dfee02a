"""The one exception the domain model raises when it refuses something.

The server turns it into an error reply with the same errno and message, so the message is
written for the client: it names the object and the rule, never an internal detail.
"""

from __future__ import annotations

import errno as _errno


class SiovError(Exception):
    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno
        self.message = message

    def __str__(self) -> str:
        return f"[{_errno.errorcode.get(self.errno, self.errno)}] {self.message}"
