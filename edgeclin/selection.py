"""Which engine runs a bundle: every candidate measured at export, the fastest that passes the gate followed at load.

``measure_candidates`` (export) times each (backend, graph, precision) of ``engines.candidates``
on this CPU at batch 1, one thread, and scores each on the gate's examples; the manifest keeps
the table and the preferred candidate with the CPU's signature. ``resolve_backend`` (load)
follows it only on the same kind of CPU with that backend installed: a lower-precision engine
is chosen only where the gate measured it.
"""

from __future__ import annotations

import functools

import numpy as np

from edgeclin.artifacts import BundleManifest
from edgeclin.engines import BACKENDS, MODEL_FILE, Candidate, candidates, get_backend
from edgeclin.hardware import cpu_features
from edgeclin.timing import time_interleaved

SPEEDUP_TO_SWITCH = 1.1  # a candidate must beat onnxruntime by this much to be preferred (not by noise)
KNOWN_PRECISIONS = ("fp32", "bf16", "int8")


def resolve_backend(manifest: BundleManifest, backend: str = "auto") -> Candidate:
    """The (backend, graph, precision) to run a bundle with.

    ``auto`` takes what export measured fastest at equal accuracy (``manifest.runtime``) when this
    is the same kind of CPU and that backend is installed; otherwise onnxruntime on the main
    graph, which runs everywhere. A named backend runs the main graph.
    """
    graphs = manifest.graph_precisions()
    if backend != "auto":
        chosen = get_backend(backend)
        chosen.require()
        return next(c for c in chosen.candidates(graphs, cpu_features()) if c.model == MODEL_FILE)
    measured = manifest.runtime or {}
    preferred = measured.get("preferred") or {}
    if preferred.get("backend") in BACKENDS and get_backend(preferred["backend"]).available() \
            and measured.get("cpu") == cpu_features().signature() and preferred.get("model") in graphs:
        precision = preferred.get("precision")
        return Candidate(preferred["backend"], preferred["model"],
                         precision if precision in KNOWN_PRECISIONS else graphs[preferred["model"]])
    return Candidate("onnxruntime", MODEL_FILE, graphs[MODEL_FILE])


def _call(model, example) -> None:
    """One prediction, tokenisation included."""
    encoded = model.strategy.encode(model.tokenizer, [example], None, model.spec.input)
    model.run_encoded(encoded.input_ids, encoded.token_type_ids, 1)


def measure_candidates(folder, manifest: BundleManifest, examples: list, reference: float, gate_metric: str,
                       max_drop: float, main_metric: float, rounds: int = 20) -> dict:
    """Time and score every candidate that can run the bundle here; prefer the fastest that passes the gate.

    Latency is batch 1, one thread, on the median-length test input, candidates interleaved. A
    candidate passes if its ``gate_metric`` is within ``max_drop`` points of the fp32 ONNX model's
    ``reference``; onnxruntime on the main graph is the variant the gate already scored (``main_metric``).
    """
    from edgeclin.runtime import bundle_model

    found = candidates(manifest.graph_precisions())
    models = [bundle_model(folder, manifest, c, threads=1) for c in found]
    sample = sorted(examples, key=lambda e: len(e.text))[len(examples) // 2]
    times = time_interleaved({i: functools.partial(_call, m, sample) for i, m in enumerate(models)}, 3, rounds)
    results = []
    for i, (candidate, model) in enumerate(zip(found, models, strict=True)):
        metric = main_metric if i == 0 else model.evaluate(examples)[0][gate_metric]
        results.append({**candidate.as_dict(), "p50_ms": float(np.median(times[i])), gate_metric: metric,
                        "passed": 100 * (reference - metric) <= max_drop})
    baseline = results[0]
    preferred = min((r for r in results if r["passed"]), key=lambda r: r["p50_ms"], default=baseline)
    if preferred is not baseline and baseline["p50_ms"] / preferred["p50_ms"] < SPEEDUP_TO_SWITCH:
        preferred = baseline
    return {"cpu": cpu_features().signature(), "threads": 1, "batch_size": 1, "rounds": rounds,
            "candidates": results, "preferred": {k: preferred[k] for k in ("backend", "model", "precision")}}
