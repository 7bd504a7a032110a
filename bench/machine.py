"""What every benchmark prints first: when, how, and on what it ran.

Figures mean little without the machine they came from, and a busy machine makes every side of
a comparison slower; so each benchmark prints these lines and warns when the load average says
other jobs were running.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def total_memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def gpu_name() -> str:
    """The first CUDA device's name, or ``none`` (torch is imported only when installed)."""
    try:
        import torch
    except ImportError:
        return "none"
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def print_header(title: str) -> None:
    """Title, date, command, machine, software and the load average, one line each."""
    try:
        import torch

        software = f"torch {torch.__version__}, "
    except ImportError:
        software = ""
    print(title)
    print(f"date:     {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}")
    print(f"command:  {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"machine:  {os.cpu_count()} CPUs ({cpu_model()}), {total_memory()} RAM, GPU {gpu_name()}"
    )
    print(f"software: {software}Python {platform.python_version()}, {platform.platform()}")
    print(f"load:     {load_average()} (1, 5, 15 min) at the start")
    warn_if_busy()


def warn_if_busy() -> None:
    """A warning when the 1-minute load average says other jobs share the CPUs."""
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cpus:
        print(
            f"warning: the 1-minute load average is {load:.2f} on {cpus} CPUs: other jobs are "
            "taking CPU time, so every figure understates this machine"
        )
