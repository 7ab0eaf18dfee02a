"""Hatchling build hook: compiles the LD_PRELOAD portal library of ``siov_host`` and the
executor's native core ``siovd.model.accel._fastpath``.

``pip install -e .`` and a wheel build both run it: each library is written next to the package
sources (ignored by git) and a wheel also carries it. Needs a C compiler (``cc``, or ``$CC``);
the native core also needs the Python headers, and when it cannot be built the install goes on
without it (the daemon then runs the Python executor and logs that it does).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = "clients/siov_host/native/siov_portal.c"
OUTPUT = "clients/siov_host/libsiov_portal.so"


def build_library(root: str) -> str:
    src = os.path.join(root, SOURCE)
    out = os.path.join(root, OUTPUT)
    cc = shlex.split(os.environ.get("CC", "cc"))
    flags = ["-O2", "-g", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared"]
    subprocess.run([*cc, *flags, "-o", out, src, "-ldl"], check=True)
    return out


FASTPATH_SOURCE = "daemon/siovd/model/accel/native/fastpath.c"
FASTPATH_PACKAGE_DIR = "daemon/siovd/model/accel"


def fastpath_name() -> str:
    return "_fastpath" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")


def build_fastpath(root: str) -> str | None:
    """Compile the native executor core as a CPython extension; None if that fails."""
    src = os.path.join(root, FASTPATH_SOURCE)
    out = os.path.join(root, FASTPATH_PACKAGE_DIR, fastpath_name())
    cc = shlex.split(os.environ.get("CC", "cc"))
    include = sysconfig.get_paths()["include"]
    flags = ["-O2", "-g", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-fno-strict-aliasing"]
    try:
        subprocess.run([*cc, *flags, f"-I{include}", "-o", out, src], check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        print(  # noqa: T201 (the build's own output; the daemon logs the fallback)
            f"siov: native executor core not built ({error}); the daemon will run the "
            "Python executor",
            file=sys.stderr,
        )
        return None
    return out


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        out = build_library(self.root)
        fastpath = build_fastpath(self.root)
        if self.target_name == "wheel" and version != "editable":
            build_data["force_include"][out] = "siov_host/libsiov_portal.so"
            if fastpath is not None:
                build_data["force_include"][fastpath] = f"siovd/model/accel/{fastpath_name()}"
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
