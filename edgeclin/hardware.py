"""What the machine is: CPU features, device, precision, memory use.

The project's machines do not all have the same CPU: some have AMX (``amx_bf16``,
``amx_int8``), some only AVX-512 VNNI/BF16. Every decision that depends on the CPU (the int8
preset, whether bf16 is native, which backend a bundle runs on) reads ``cpu_features()``,
and ``EDGECLIN_CPU_FEATURES`` replaces what it reads, so one machine can test every kind:

    EDGECLIN_CPU_FEATURES=amx          # or avx512_bf16, avx2, arm64 (see SIMULATED_KINDS)
    EDGECLIN_CPU_FEATURES="x86_64:avx2,avx512f,avx512_vnni"
"""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import dataclass
from functools import cache

from edgeclin.errors import EdgeclinError

# the flags that decide speed and precision: recorded with every measurement
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "asimd", "sve")
INT8_PRESETS = ("avx2", "avx512", "avx512_vnni", "arm64")  # optimum's AutoQuantizationConfig presets
SIMULATED_KINDS = {
    "amx": ("x86_64", ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")),
    "avx512_bf16": ("x86_64", ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")),
    "avx2": ("x86_64", ("avx2",)),
    "arm64": ("aarch64", ("asimd",)),
}
SIMULATION_VARIABLE = "EDGECLIN_CPU_FEATURES"


@dataclass(frozen=True)
class CpuFeatures:
    model: str
    arch: str  # platform.machine(): x86_64, aarch64, ...
    flags: frozenset[str]
    simulated: bool = False

    @property
    def is_arm(self) -> bool:
        return self.arch.lower() in ("aarch64", "arm64")

    @property
    def int8_preset(self) -> str:
        """The quantisation preset that fits this CPU (onnxruntime #6695: the wrong one is slower)."""
        if self.is_arm:
            return "arm64"
        if "avx512_vnni" in self.flags:
            return "avx512_vnni"
        return "avx512" if "avx512f" in self.flags else "avx2"

    @property
    def has_amx(self) -> bool:
        return {"amx_bf16", "amx_int8"} <= self.flags

    @property
    def native_bf16(self) -> bool:
        """AMX or AVX512-BF16: bf16 matrix instructions (not always faster: measure)."""
        return bool({"amx_bf16", "avx512_bf16"} & self.flags)

    @property
    def isa(self) -> list[str]:
        return sorted(f for f in self.flags if f in ISA_FLAGS)

    def signature(self) -> dict:
        """What a speed measurement depends on: the CPU model and its vector/matrix extensions."""
        return {"model": self.model, "isa": self.isa}


def _proc_cpuinfo(prefixes: tuple[str, ...]) -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith(prefixes):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@cache
def _detected() -> CpuFeatures:
    flags = frozenset((_proc_cpuinfo(("flags", "Features")) or "").split())
    model = _proc_cpuinfo(("model name",)) or platform.processor() or platform.machine()
    return CpuFeatures(model=model, arch=platform.machine(), flags=flags)


def _simulated(spec: str) -> CpuFeatures:
    if spec in SIMULATED_KINDS:
        arch, flags = SIMULATED_KINDS[spec]
    elif ":" in spec:
        arch, _, listed = spec.partition(":")
        flags = tuple(f.strip() for f in listed.split(",") if f.strip())
    else:
        raise EdgeclinError(f"{SIMULATION_VARIABLE}={spec!r}: use one of {', '.join(SIMULATED_KINDS)} "
                            "or ARCH:flag,flag,...")
    return CpuFeatures(model=f"simulated {spec}", arch=arch, flags=frozenset(flags), simulated=True)


def cpu_features() -> CpuFeatures:
    """This CPU's features, or the simulated ones named by ``EDGECLIN_CPU_FEATURES``."""
    spec = os.environ.get(SIMULATION_VARIABLE, "").strip()
    return _simulated(spec) if spec else _detected()


def cpu_model() -> str:
    return cpu_features().model


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EdgeclinError("--device cuda was asked for, but no CUDA GPU is available")
    if device not in ("cpu", "cuda"):
        raise EdgeclinError(f"unknown device {device!r} (auto, cpu or cuda)")
    return device


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
    if precision not in PRECISIONS:
        raise EdgeclinError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
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
    """The machine, for run records and benchmark tables (torch is imported if it is installed)."""
    features = cpu_features()
    info = {"cpu": features.model, "isa": features.isa, "cores": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform()}
    if features.simulated:
        info["cpu_simulated"] = True
    try:
        import torch
    except ImportError:
        return {**info, "torch_threads": None, "gpu": None}
    return {**info, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
