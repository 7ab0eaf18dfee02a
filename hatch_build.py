"""Hatchling build hook: compiles the LD_PRELOAD portal library of ``siov_host``.

``pip install -e .`` and a wheel build both run it: the library is written next to the package
sources (``clients/siov_host/libsiov_portal.so``, ignored by git) and a wheel also carries it as
``siov_host/libsiov_portal.so``. Needs a C compiler (``cc``, or ``$CC``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
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


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        out = build_library(self.root)
        if self.target_name == "wheel" and version != "editable":
            build_data["force_include"][out] = "siov_host/libsiov_portal.so"
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
