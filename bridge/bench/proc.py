"""Reading a process's CPU time and memory, and the machine's load, from Linux's /proc."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

__all__ = ["ProcessSample", "SystemSample", "find_listener", "sample_process", "sample_system"]

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


def sample_process(pid: int) -> ProcessSample | None:
    """None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    user, system = int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS
    rss = hwm = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return ProcessSample(user + system, system, rss, hwm)


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
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(entry.name)
        except OSError:
            continue
    return None
