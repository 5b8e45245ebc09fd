"""What the benchmark scripts record about the machine they ran on (imported by name: each
script runs as `python benchmarks/NAME.py`, so this folder is on `sys.path`)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (e.g. "Intel(R) Xeon(R) Processor"), or what
    `platform` knows where that file is missing."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
