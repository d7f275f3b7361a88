"""What the machine is: device, precision, CPU features, memory use."""

from __future__ import annotations

import os
import platform
import resource
from functools import cache

from edgeclin.errors import EdgeclinError


@cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: the CPU has native bf16 matrix instructions (not always faster: measure)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EdgeclinError("--device cuda was asked for, but no CUDA GPU is available")
    if device not in ("cpu", "cuda"):
        raise EdgeclinError(f"unknown device {device!r} (auto, cpu or cuda)")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: bf16 autocast on GPUs (fp16 on GPUs without bf16), fp32 on CPUs.

    bf16 gave the same accuracy as fp32, but on the project's CPU (AVX512-BF16, no AMX) with torch 2.13 it
    trained *slower* (0.67-0.85x; benchmarks/results/train_precision.md), so the CPU default is
    fp32. ``--precision bf16`` stays available for CPUs and builds where it measures faster.
    """
    import torch

    if precision == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device == "cpu":
        raise EdgeclinError("--precision fp16 needs a GPU; on CPU use bf16 or fp32")
    if precision not in ("fp32", "bf16", "fp16"):
        raise EdgeclinError(f"unknown precision {precision!r} (auto, fp32, bf16 or fp16)")
    return precision


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB.

    Linux's VmHWM first: ``ru_maxrss`` survives fork+exec, so a small process started by a
    big one would report its parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment() -> dict:
    import torch

    flags = cpu_flags()
    isa = sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                                           "amx_int8", "amx_tile", "asimd", "sve"})
    return {
        "cpu": cpu_model(),
        "isa": isa,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
