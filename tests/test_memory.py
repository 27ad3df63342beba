"""The memory a cache may take: the machine's MemAvailable, bounded by a container's cgroup limit (v1 and v2, with
and without a cgroup namespace), from files laid out as the kernel lays them out."""
from utils.data.memory import available_memory, cgroup_room

GB = 1 << 30


def write(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def self_cgroup(tmp_path, text):
    path = tmp_path / "self-cgroup"
    path.write_text(text)
    return path


def test_v2_in_its_own_namespace_counts_page_cache_as_room(tmp_path):
    root = tmp_path / "cgroup"
    write(root, memory_max=f"{2 * GB}\n", memory_current=f"{GB}\n", memory_stat=f"anon 5\ninactive_file {GB // 4}\n")
    assert cgroup_room(root, self_cgroup(tmp_path, "0::/\n")) == GB + GB // 4


def test_v2_a_parent_limit_binds_where_the_own_cgroup_has_none(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "user.slice" / "job", memory_max="max\n", memory_current="7\n")
    write(root / "user.slice", memory_max=f"{3 * GB}\n", memory_current=f"{GB}\n")
    assert cgroup_room(root, self_cgroup(tmp_path, "0::/user.slice/job\n")) == 2 * GB


def test_v1_container_sees_its_own_cgroup_at_the_mount(tmp_path):
    root = tmp_path / "cgroup"  # /proc/self/cgroup names the host's path, which the container does not mount
    write(root / "memory", memory_limit_in_bytes=f"{GB}\n", memory_usage_in_bytes=f"{GB // 2}\n",
          memory_stat="cache 9\ntotal_inactive_file 1024\n")
    text = "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n"
    assert cgroup_room(root, self_cgroup(tmp_path, text)) == GB // 2 + 1024


def test_no_limit_garbage_and_no_cgroup_say_nothing(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "memory", memory_limit_in_bytes="9223372036854771712\n", memory_usage_in_bytes="5\n")
    assert cgroup_room(root, self_cgroup(tmp_path, "4:memory:/\n")) is None
    write(root, memory_max="lots\n", memory_current="1\n")
    assert cgroup_room(root, self_cgroup(tmp_path, "0::/\n")) is None
    assert cgroup_room(tmp_path / "absent", tmp_path / "absent-too") is None


def test_the_smaller_of_the_machine_and_the_container_is_available(tmp_path):
    root = tmp_path / "cgroup"
    write(root, memory_max=f"{GB}\n", memory_current="0\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: {64 * GB // 1024} kB\nMemAvailable: {32 * GB // 1024} kB\n")
    cgroup = self_cgroup(tmp_path, "0::/\n")
    assert available_memory(root, cgroup, meminfo) == GB  # the container's limit binds
    meminfo.write_text(f"MemAvailable: {GB // 2048} kB\n")
    assert available_memory(root, cgroup, meminfo) == GB // 2  # the machine is the tighter
    assert available_memory(tmp_path / "absent", cgroup, tmp_path / "absent") is None
    assert isinstance(available_memory(), int)  # this machine, read for real (Linux)
