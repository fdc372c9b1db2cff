"""Reading a process's CPU time, memory and open files, and the machine's load, from /proc."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

__all__ = [
    "ProcessSample",
    "SystemSample",
    "find_listener",
    "open_fds",
    "open_fds_tree",
    "sample_process",
    "sample_system",
    "sample_tree",
]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True, slots=True)
class ProcessSample:
    cpu_s: float  # user + system CPU seconds so far
    system_s: float  # of which in the kernel (socket calls, mostly)
    rss: int  # resident set size, bytes
    hwm: int  # peak resident set size, bytes


@dataclasses.dataclass(frozen=True, slots=True)
class SystemSample:
    busy_s: float  # CPU seconds all cores spent not idle
    total_s: float


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(")") + 2 :].split()


def sample_process(pid: int, *, with_reaped_children: bool = False) -> ProcessSample | None:
    """None once the process is gone. `with_reaped_children` adds the CPU of children it has
    waited for (a worker that exited still counts)."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    user, system = int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS
    if with_reaped_children:
        user += int(fields[13]) / CLOCK_TICKS
        system += int(fields[14]) / CLOCK_TICKS
    rss = hwm = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return ProcessSample(user + system, system, rss, hwm)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (a supervisor's workers, and theirs)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def sample_tree(pid: int) -> ProcessSample | None:
    """`pid` and its descendants summed (`bridge serve --workers N` is N + 1 processes): CPU
    including reaped children, RSS, and the sum of each process's peak RSS. None once `pid`
    is gone."""
    root = sample_process(pid, with_reaped_children=True)
    if root is None:
        return None
    samples = [root] + [s for s in map(sample_process, descendants(pid)) if s is not None]
    return ProcessSample(
        cpu_s=sum(s.cpu_s for s in samples),
        system_s=sum(s.system_s for s in samples),
        rss=sum(s.rss for s in samples),
        hwm=sum(s.hwm for s in samples),
    )


def open_fds(pid: int) -> int | None:
    """How many file descriptors `pid` has open; None once it is gone (or not ours to read)."""
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None


def open_fds_tree(pid: int) -> int | None:
    """`pid`'s open file descriptors and its descendants' (workers), summed."""
    root = open_fds(pid)
    if root is None:
        return None
    return root + sum(n for n in map(open_fds, descendants(pid)) if n is not None)


def sample_system() -> SystemSample:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return SystemSample((total - idle) / CLOCK_TICKS, total / CLOCK_TICKS)


def find_listener(port: int) -> int | None:
    """The pid of the process listening on TCP `port` (needs permission to read its fds)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    holders: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                holders.add(int(entry.name))
        except OSError:
            continue
    # Workers share their supervisor's socket: the holder whose parent does not hold it.
    for pid in sorted(holders):
        fields = _stat_fields(pid)
        if fields is not None and int(fields[1]) not in holders:
            return pid
    return min(holders, default=None)
