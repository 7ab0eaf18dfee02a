"""What many tests need, defined once: wait for a condition, expect an errno.

Waiting polls, because what is awaited is a side effect in another process or task (a file
appears, a session goes away); every wait is bounded and names what it waited for.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio

import siov

POLL_S = 0.01


def _deadline_passed(what: str) -> AssertionError:
    return AssertionError(f"did not settle: {what}")


def settle(check: Callable[[], bool], what: str = "condition", timeout: float = 10.0) -> None:
    """Block until ``check()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise _deadline_passed(what)
        time.sleep(POLL_S)


async def asettle(check: Callable[[], bool], what: str = "condition", limit_s: float = 5.0) -> None:
    """:func:`settle` for trio code: the other tasks run while it waits."""
    with trio.move_on_after(limit_s) as scope:
        while not check():  # noqa: ASYNC110  (a bounded poll of another task's side effect)
            await trio.sleep(POLL_S)
    if scope.cancelled_caught:
        raise _deadline_passed(what)


def check_errno(got: int, message: str, err: int, words: str, context: Any = None) -> None:
    """The one errno check: the errno is ``err`` and the message contains ``words``."""
    assert got == err, (errno.errorcode.get(got, got), message, context)
    assert words in message, (message, context)


def expect_error(reply: Any, err: int, words: str = "") -> None:
    """A raw error reply (``tests.rawclient.RawReply``) with ``err`` and ``words``."""
    assert reply.is_error, reply
    check_errno(reply.error, str(reply.body.get("message", "")), err, words, reply.body)


@contextmanager
def raises_errno(
    err: int | None, words: str = ""
) -> Iterator[pytest.ExceptionInfo[siov.SiovError]]:
    """The block must raise :class:`siov.SiovError` with ``err`` (any errno when None) and
    ``words``; the model's own errors are the same class."""
    with pytest.raises(siov.SiovError) as info:
        yield info
    if err is not None:
        check_errno(info.value.errno, info.value.message, err, words)


async def expect(err: int | None, call: Awaitable[Any], words: str = "") -> siov.SiovError:
    """An SDK call that must fail with ``err`` (any errno when None) and ``words``; returns
    the error."""
    with raises_errno(err, words) as info:
        await call
    return info.value
