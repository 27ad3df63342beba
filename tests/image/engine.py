"""A container engine for the image test: `docker` where its daemon answers, else `podman` with runc.

On machines without a registry the base image is made locally: Debian bookworm with its Python 3.11, the same
distribution and Python as the CPU image's default base (`python:3.11-slim-bookworm`), written by mmdebstrap
once and cached under .cache/image-base/. podman runs under a runtime wrapper that drops the resource limits a
sandbox may not raise (tests/image/runc-without-rlimits). The build is given this machine's pip configuration
(its settings, and the local folders and certificates they name, mounted read-only), as any build machine's
would be.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

from tests.helpers import REPO

HERE = Path(__file__).resolve().parent
BASE_TAR = REPO / ".cache" / "image-base" / "bookworm-python3.11.tar"
BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"


class Engine:
    def __init__(self):
        self.timings: Dict[str, float] = {}
        docker = shutil.which("docker")
        if docker and subprocess.run([docker, "info"], capture_output=True).returncode == 0:
            self.name, self.command = "docker", [docker]
        else:
            podman = shutil.which("podman")
            assert podman and shutil.which("runc"), "no container engine: tools/bootstrap.sh installs podman + runc"
            self.name = "podman"
            self.command = [podman, "--runtime", str(HERE / "runc-without-rlimits"), "--cgroup-manager", "cgroupfs",
                            "--events-backend", "file"]

    def __call__(self, *args, timeout: float = 1800, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.command, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                                **kwargs)
        if check:
            assert result.returncode == 0, f"{self.name} {' '.join(map(str, args[:3]))} failed:\n" \
                                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    def timed(self, step: str, *args, **kwargs) -> subprocess.CompletedProcess:
        started = time.monotonic()
        try:
            return self(*args, **kwargs)
        finally:
            self.timings[step] = time.monotonic() - started

    def local_base(self, tag: str) -> str:
        """Import (making it first if needed) the local bookworm + Python 3.11 base; returns its name."""
        started = time.monotonic()
        if not BASE_TAR.is_file():
            BASE_TAR.parent.mkdir(parents=True, exist_ok=True)
            partial = BASE_TAR.with_suffix(".partial")
            made = subprocess.run(["mmdebstrap", "--variant=apt", "--format=tar", f"--include={BASE_PACKAGES}",
                                   "bookworm", str(partial)], capture_output=True, text=True, timeout=1800)
            assert made.returncode == 0, made.stderr[-3000:]
            partial.replace(BASE_TAR)
        self("import", BASE_TAR, tag)
        self.timings["local base"] = time.monotonic() - started
        return tag

    def build_args(self, workdir: Path) -> List[str]:
        """What a build on this machine needs to reach the package registries the way this machine's pip does:
        its effective pip configuration as the build's pip.conf secret, and (podman) the local files and folders it
        names, mounted read-only where they are."""
        config, paths = effective_pip_configuration()
        (workdir / "pip.conf").write_text(config)
        secret = ["--secret", f"id=pip.conf,src={workdir / 'pip.conf'}"]
        if self.name == "docker":
            return ["--network", "host", *secret]
        mounts = []
        for path in paths:
            mounts += ["-v", f"{path}:{path}:ro"]
        # docker format: SHELL is honoured as docker does; no intermediate images left behind to clean up
        return ["--network", "host", "--format", "docker", "--layers=false", *secret, *mounts]

    def remove_images(self, *names: str) -> None:
        for name in names:
            self("rmi", "-f", name, check=False)


def effective_pip_configuration() -> Tuple[str, List[str]]:
    """(pip.conf text with every setting pip uses here, files or environment alike; the local paths it names)."""
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             check=True).stdout
    sections: Dict[str, Dict[str, str]] = {}
    paths = set()
    for key, value in re.findall(r"^(\S+?)='?(.*?)'?$", listing, re.M):
        section, _, name = key.rpartition(".")
        sections.setdefault("global" if section == ":env:" else section, {})[name] = value
        for token in value.split():
            token = token[len("file://"):] if token.startswith("file://") else token
            if token.startswith("/") and os.path.exists(token):  # a local index: its files sit beside simple/
                paths.add(str(Path(token).parent) if Path(token).name == "simple" else token.rstrip("/"))
    text = "".join(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
                   for section, values in sections.items())
    return text, sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths))
