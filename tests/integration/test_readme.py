"""Every command line in the README's ```sh blocks runs, in order, and succeeds.

The daemon is a real ``siovd`` process; ``$SIOV_SOCKET`` and ``$XDG_RUNTIME_DIR`` point the
README's lines at it, placeholders (``UUID``) are replaced by the object the line before
created, and host paths (``/run/siovd``, ``/var/lib``) are moved into a temporary directory.
Lines that install onto a host (``sudo ...``) are not run: the files they install must exist,
and the setup lines are what ``.ci/run`` itself runs. A line of none of these kinds fails here,
so a new README line cannot go untested.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from siov_protocol import Command
from tests.daemonproc import spawn_siovd
from tests.rawclient import RawClient

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SETUP = {  # run by .ci/run (the second is its first line), not again here
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/siovd",
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest",
}


# Not run here: the vfio-user server serves until interrupted and the rest needs QEMU and a
# guest kernel (tests/integration of the vfio-user work drive the same endpoint instead).
GUEST = ("siovctl vfio-user ", "qemu-system-", "-object ", "-device ", "cd /sys/", "echo ")


def sh_lines() -> list[str]:
    text = README.read_text()
    out: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.M | re.S):
        out += [ln.strip() for ln in block.splitlines() if ln.strip()]
    return out


def without_comment(line: str) -> str:
    return re.sub(r"\s+#.*$", "", line)


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    with tempfile.TemporaryDirectory(prefix="siov-readme-", dir="/tmp") as tmp:
        path = os.path.join(tmp, "siovd.sock")
        proc = spawn_siovd(path, "--state-dir", os.path.join(tmp, "state"))
        bin_dir = os.path.dirname(sys.executable)
        environ = dict(os.environ)
        environ |= {"SIOV_SOCKET": path, "XDG_RUNTIME_DIR": tmp, "TMP_ROOT": tmp}
        environ["PATH"] = bin_dir + os.pathsep + environ.get("PATH", "")
        try:
            yield environ
        finally:
            proc.terminate()
            proc.wait(10)


def run(line: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cwd = str(ROOT) if line.startswith(".venv/") else environ["TMP_ROOT"]
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", line],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_every_readme_command_line_runs(env: dict[str, str]) -> None:
    tmp = env["TMP_ROOT"]
    # a device for `siovctl translate UUID ...`: admin (auth "none") may translate any device
    owner = RawClient(env["SIOV_SOCKET"])
    owner.negotiate()
    made = owner.request(Command.MDEV_CREATE, {"parent": "siov_test", "type_id": "siov_test-1"})
    uuid = made.body["uuid"]
    ran, host = [], []
    try:
        for line in sh_lines():
            if line in SETUP:
                host.append(line)
                continue
            if line.startswith(GUEST):  # a QEMU guest's lines, and the server it talks to
                host.append(line)
                continue
            if without_comment(line) == "siovd &":  # the daemon this test already runs
                host.append(line)
                continue
            if line.startswith("sudo "):
                for word in shlex.split(without_comment(line)):
                    if word.startswith("systemd/"):
                        assert (ROOT / word).is_file(), (line, word)
                host.append(line)
                continue
            command = line.replace("UUID", uuid)
            command = command.replace("/run/siovd/", f"{tmp}/run-").replace("/var/lib/", f"{tmp}/")
            if command.startswith("siovd "):  # a second daemon: it must start, then stop
                command = f"timeout -s INT 3 {without_comment(command)} || [ $? -eq 124 ]"
            done = run(command, env)
            assert done.returncode == 0, (line, done.stdout, done.stderr)
            ran.append(line)
            if line.startswith("siovctl define -p"):
                found = re.search(r"([0-9a-f]{8}-[0-9a-f-]{27})", done.stdout)
                assert found, done.stdout
                uuid = found.group(1)
    finally:
        owner.close()
    assert len(ran) + len(host) == len(sh_lines())
    assert any(ln.startswith("siovctl list --defined") for ln in ran)
    assert any(ln.startswith("siovd --socket") for ln in ran)


def test_a_second_daemon_on_a_used_state_dir_is_refused(env: dict[str, str]) -> None:
    """What the README says happens without --state-dir: the directory's lock refuses it."""
    state = os.path.join(env["TMP_ROOT"], "state")
    sock = os.path.join(env["TMP_ROOT"], "second.sock")
    done = subprocess.run(
        [sys.executable, "-m", "siovd", "--socket", sock, "--state-dir", state],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert f"state directory {state} is in use by another siovd" in done.stdout + done.stderr
