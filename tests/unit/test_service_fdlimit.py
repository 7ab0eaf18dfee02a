"""The daemon's fd budget: computed from the limits, checked against RLIMIT_NOFILE at start."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from siovd.host.config import ConfigError, from_dict
from siovd.host.fdlimit import BASE_FDS, ONE_RECVMSG, check_nofile, fd_need


def test_need_grows_with_clients_and_pending_fds() -> None:
    cfg = from_dict({"server": {"max_clients": 10}, "limits": {"pending_fds": 8}})
    need, fixed, per_client = fd_need(cfg, mdev_bound=5)
    assert fixed == BASE_FDS + ONE_RECVMSG + 2 * 5
    assert per_client == 2 + 8
    assert need == fixed + 10 * per_client


def test_pending_fds_must_hold_one_whole_message() -> None:
    with pytest.raises(ConfigError, match=r"limits\.pending_fds: 4 is below protocol\.max_fds 8"):
        from_dict({"limits": {"pending_fds": 4}})
    with pytest.raises(ConfigError, match=r"limits\.uid_pending_fds"):
        from_dict({"limits": {"pending_fds": 64, "uid_pending_fds": 32}})


def _in_child(code: str) -> str:
    """Run ``code`` in a child (rlimits are per process; the test's own stay as they are)."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout.strip()


def test_soft_limit_is_raised_to_the_need() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"the hard RLIMIT_NOFILE here is {hard}")
    got = _in_child(
        "import resource\n"
        "from siovd.host.config import from_dict\n"
        "from siovd.host.fdlimit import check_nofile\n"
        "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "cfg = from_dict({'server': {'max_clients': 16}})\n"
        "b = check_nofile(cfg, 10)\n"
        "print(b.raised_from, b.soft == b.need, b.enough, "
        "resource.getrlimit(resource.RLIMIT_NOFILE)[0] == b.need)\n"
    )
    assert got == "256 True True True"


def test_a_short_hard_limit_is_reported_with_what_it_allows() -> None:
    got = _in_child(
        "import resource\n"
        "from siovd.host.config import from_dict\n"
        "from siovd.host.fdlimit import check_nofile\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1000, 1000))\n"
        "cfg = from_dict({})\n"
        "b = check_nofile(cfg, 136)\n"
        "print(b.enough, b.clients_allowed)\n"
        "print(b.message(cfg))\n"
    )
    first, message = got.split("\n", 1)
    assert first == f"False {(1000 - (BASE_FDS + ONE_RECVMSG + 272)) // 34}"
    assert "RLIMIT_NOFILE 1000 (hard 1000); the limits need up to 35405 fds" in message
    assert "allows 12 clients at their worst" in message
    assert check_nofile(from_dict({"server": {"max_clients": 1}}), 0).enough
