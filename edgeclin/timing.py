"""Timing primitives shared by ``edgeclin bench``, export's backend measurement and the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def time_interleaved(calls: dict, warmup: int, rounds: int,
                     after_round: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Milliseconds of each call per round, calls interleaved within each round (after ``warmup`` each).

    Interleaving spreads drifts of the machine (frequency, neighbours) over every candidate alike,
    so ratios measured in one run stay fair (../shared/BENCHMARKING.md). For engines whose idle
    thread pools compete (PyTorch and onnxruntime), measure each in its own process instead.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(1000 * (time.perf_counter() - start))
        if after_round:
            after_round()
    return times


def latency_summary(samples_ms: list[float]) -> dict[str, float]:
    """p50/p90/p99 and min of a list of milliseconds."""
    ms = np.asarray(samples_ms, dtype=np.float64)
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "min_ms": float(ms.min()), "runs": len(samples_ms)}
