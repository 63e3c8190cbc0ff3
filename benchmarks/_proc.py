"""CPU time of another process: what the benchmarks charge a server (or a proxy) per request.

from _proc import cpu_seconds
before = cpu_seconds(server_pid); ...; cost = cpu_seconds(server_pid) - before
"""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and all its threads so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
