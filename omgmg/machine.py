"""Where a run trains: the device (``--device auto|cpu|cuda[:i]``) and whether other work keeps the CPU busy.

device = resolve_device("auto")      # a CUDA device when there is one, else the CPU
note = busy_cpu_note(torch_threads)  # a warning, or None
"""

from __future__ import annotations

import os
import time

import torch

from omgmg.datakit.errors import ConfigError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` (or None): the first CUDA device when there is one, else the CPU; otherwise as given. A CUDA
    device on a machine without one is refused in a line."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device {device!r} is not a device: use auto, cpu or cuda[:INDEX]") from e
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(
            f"--device {device}: a {dev.type} device cannot train or evaluate a run; use auto, cpu or cuda"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: this machine (or this torch build) has no MPS device; use cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this machine has no CUDA device that torch can use; use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices")
    return dev


def busy_cpu_note(torch_threads: int) -> str | None:
    """A warning when other work already keeps the cores a multi-threaded CPU run needs busy. PyTorch's OpenMP
    threads spin-wait for each other at every operator; with a thread descheduled the others spin, and a step
    gets many times slower (Hopper-3x1 OMGMG beside a niced sweep on 2 cores: 300 steps took 208 s with 2
    threads, 12 s with 1). Judged by what other processes use now (:func:`other_cpu_load`), not by the load
    average, which still counts this command's own work of the last minutes (collecting, loading)."""
    if torch_threads < 2:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = other_cpu_load()
    if load is None or load <= cores - torch_threads + 0.5:
        return None
    return (
        f"the CPU is busy (other processes keep {load:.1f} of {cores} cores busy) and training uses {torch_threads} "
        "threads, which wait on each other when one is descheduled (steps can get 10x slower): pass "
        "--torch-threads 1 while other work runs"
    )


def other_cpu_load(window: float = 0.25) -> float | None:
    """How many cores' worth of CPU time the other processes of the machine used over the next ``window``
    seconds (``/proc/stat``'s busy time less this process's and its children's); None where there is no
    ``/proc/stat``."""

    def sample() -> tuple[float, float]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        own = sum(os.times()[:4])  # seconds: user, system, children's user and system
        return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK"), own

    try:
        busy0, own0 = sample()
        t0 = time.monotonic()
        time.sleep(window)
        busy1, own1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / (time.monotonic() - t0)
