"""How much more memory this process may use: the smaller of the machine's MemAvailable and what its control group
(a container's memory limit: cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`) leaves. Inside a container,
/proc/meminfo describes the whole host, so a `--cache ram` that trusted it alone could be killed by the container's
limit instead of falling back."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
MEMINFO = Path("/proc/meminfo")
NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63
# (limit file, usage file, memory.stat's key for reclaimable page cache)
V2 = ("memory.max", "memory.current", "inactive_file")
V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


def available_memory(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP,
                     meminfo: Path = MEMINFO) -> Optional[int]:
    """Bytes this process may still take, or None where neither the machine nor a cgroup says."""
    known = [room for room in (meminfo_available(meminfo), cgroup_room(root, self_cgroup)) if room is not None]
    return min(known) if known else None


def meminfo_available(meminfo: Path = MEMINFO) -> Optional[int]:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_room(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> Optional[int]:
    """The tightest room (limit less usage not counting reclaimable page cache) of the cgroups this process is in
    and their parents, where any sets a memory limit; else None."""
    rooms = [room for folder, files in _memory_folders(root, self_cgroup)
             for room in [_room(folder, *files)] if room is not None]
    return min(rooms) if rooms else None


def _memory_folders(root: Path, self_cgroup: Path) -> Iterator[Tuple[Path, Tuple[str, str, str]]]:
    """The folders that hold this process's memory accounting, from its own cgroup up to the mount's root (a
    container with its own cgroup namespace sees its cgroup as the root)."""
    paths = _cgroup_paths(self_cgroup)
    for mount, files, key in ((root, V2, ""), (root / "memory", V1, "memory")):
        relative = paths.get(key, "/").strip("/")
        folder = mount / relative if relative else mount
        while True:
            yield folder, files
            if folder == mount:
                break
            folder = folder.parent


def _cgroup_paths(self_cgroup: Path) -> Dict[str, str]:
    """/proc/self/cgroup as {controller: path}: "" for the v2 unified line, "memory" for v1's."""
    paths: Dict[str, str] = {}
    try:
        for line in self_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    except (OSError, ValueError):
        pass
    return paths


def _room(folder: Path, limit_file: str, usage_file: str, inactive_key: str) -> Optional[int]:
    try:
        limit_text = (folder / limit_file).read_text().strip()
        if limit_text == "max":
            return None
        limit, usage = int(limit_text), int((folder / usage_file).read_text())
    except (OSError, ValueError):
        return None
    if limit >= NO_LIMIT:
        return None
    return max(limit - usage + _stat(folder / "memory.stat", inactive_key), 0)


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0
