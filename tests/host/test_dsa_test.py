"""Intel's unmodified dsa_test (accel-config-test 3.5.3) through siov-run: descriptors go to
the WQ portal by MOVDIR64B/ENQCMD (trapped by libsiov_portal), carry the process's own
addresses (SVA), and complete in its memory. Then the char-device rules: one opener of a
dedicated WQ, several of a shared one, and nothing left behind by a SIGKILLed process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from siov import BlockingClient
from tests.daemonproc import settle
from tests.host.conftest import CONFIG1, DSA_TEST, HostDaemon

SETUP = f"accel-config disable-device dsa0 >/dev/null; accel-config load-config -c {CONFIG1} -e"
# 2g2q_user_1.conf: wq0.0 shared (size 16, threshold 15), wq0.1 dedicated (size 16)


@pytest.fixture(scope="module")
def configured(host_daemon: HostDaemon) -> HostDaemon:
    out = host_daemon.run(SETUP)
    assert out.returncode == 0, out.stderr
    return host_daemon


def _stats(host: HostDaemon) -> dict[str, Any]:
    with BlockingClient(host.path) as client:
        stats = client.stats()
        return dict(stats.sva or {})


def _wq_clients(host: HostDaemon) -> dict[str, int]:
    with BlockingClient(host.path) as client:
        devices = client.accel_list()
    out = {}
    for group in devices[0]["groups"]:
        for wq in group.get("grouped_workqueues", []):
            out[wq["dev"]] = int(wq["clients"])
    return out


def test_memmove_both_modes_and_64_back_to_back(configured: HostDaemon) -> None:
    script = (
        "set -e; "
        f"{DSA_TEST} -w 0 -o 3 -l 4096; {DSA_TEST} -w 1 -o 3 -l 4096; "
        f"{DSA_TEST} -w 0 -o 3 -l 4096 -n 64; {DSA_TEST} -w 1 -o 3 -l 4096 -n 64; echo done"
    )
    out = configured.run(script)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.splitlines()[-1] == "done"
    assert "memory result verify failed" not in out.stdout + out.stderr


def test_several_processes_share_the_shared_wq(configured: HostDaemon) -> None:
    opens_before = _stats(configured)["opens_total"]
    # four at once in one launcher and four in another: eight openers of wq0.0, each its
    # own PASID, none seeing another's buffers (each verifies its own results)
    script = (
        f'pids=; for i in 1 2 3 4; do {DSA_TEST} -w 1 -o 3 -l 65536 -n 32 & pids="$pids $!"; '
        "done; rc=0; for p in $pids; do wait $p || rc=1; done; exit $rc"
    )
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "siov_host.run",
                "--socket",
                configured.path,
                "--",
                "bash",
                "-c",
                script,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    stats = _stats(configured)
    assert stats["opens_total"] - opens_before == 8
    assert stats["opens"] == 0 and stats["bindings"] == 0


def test_dedicated_wq_has_one_opener(configured: HostDaemon) -> None:
    script = (
        "import errno, os\n"
        "a = os.open('/dev/dsa/wq0.1', os.O_RDWR)\n"
        "try:\n"
        "    os.open('/dev/dsa/wq0.1', os.O_RDWR)\n"
        "    print('opened twice')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"
        "b = os.open('/dev/dsa/wq0.0', os.O_RDWR)\n"
        "c = os.open('/dev/dsa/wq0.0', os.O_RDWR)\n"
        "print('shared', b != c)\n"
        "os.close(a)\n"
        "a = os.open('/dev/dsa/wq0.1', os.O_RDWR)\n"
        "print('reopened')\n"
    )
    out = configured.run(f'python3 -c "{script}"')
    assert out.stdout.splitlines() == ["EBUSY", "shared True", "reopened"], out.stderr


def test_sigkill_mid_work_leaves_nothing_behind(configured: HostDaemon) -> None:
    fds_before = configured.daemon.fds()
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "siov_host.run",
            "--socket",
            configured.path,
            "--",
            DSA_TEST,
            "-w",
            "0",
            "-o",
            "3",
            "-l",
            "2097152",
            "-n",
            "512",
            "-t",
            "60000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # wait until dsa_test has the dedicated WQ open (mid-work), then kill it
        settle(lambda: _wq_clients(configured)["wq0.1"] == 1, "dsa_test opened wq0.1", 60)
        children = subprocess.run(
            ["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 1
        os.kill(int(children[0]), signal.SIGKILL)
        assert launcher.wait(60) == -signal.SIGKILL
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    settle(lambda: _wq_clients(configured)["wq0.1"] == 0, "the WQ has no opener", 30)
    settle(lambda: _stats(configured)["bindings"] == 0, "no SVA binding", 30)
    settle(lambda: configured.daemon.fds() == fds_before, "the daemon's fds are back", 30)
    assert _stats(configured)["opens"] == 0
    # and the dedicated WQ opens again at once
    out = configured.run(f"{DSA_TEST} -w 0 -o 3 -l 4096")
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_intel_runner_passes(host_daemon: HostDaemon) -> None:
    """/usr/libexec/accel-config/test/dsa_user_test_runner.sh, unmodified: every opcode in
    both modes, 1 B to 2 MiB, BOF on and off, alone and in batches of 16, then DIF."""
    runner = "/usr/libexec/accel-config/test/dsa_user_test_runner.sh"
    out = subprocess.run(
        [sys.executable, "-m", "siov_host.run", "--socket", host_daemon.path, "--", runner],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert out.stdout.count("Testing 2097152 bytes") == 76


def test_a_process_never_reaches_another_ones_memory(
    configured: HostDaemon, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two openers of the shared WQ: the holder has a page of 0xa5 at an address the prober
    either leaves unmapped (its MEMMOVE from there is a page fault, status 0x03) or maps with
    its own 0x5a (it copies 0x5a): the holder's bytes never come back."""
    prog = str(tmp_path_factory.mktemp("probe") / "sva_probe")
    src = os.path.join(os.path.dirname(__file__), "sva_probe.c")
    subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", prog, src], check=True)
    # the runner (which may have run before) disables everything when it is done
    script = (
        f"{SETUP} >/dev/null; "
        f'coproc H {{ {prog} hold 0xa5 /dev/dsa/wq0.0; }}; read -r line <&"${{H[0]}}"; '
        f"echo $line; {prog} copy /dev/dsa/wq0.0 -; {prog} copy /dev/dsa/wq0.0 0x5a; "
        "exec {H[1]}>&-; wait"
    )
    out = configured.run(script)
    assert out.stdout.splitlines() == ["ready", "status 0x3 byte 0", "status 0x1 byte 0x5a"], (
        out.stdout + out.stderr
    )
