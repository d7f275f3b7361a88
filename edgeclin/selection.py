"""Which engine runs a bundle: every candidate measured at export, the fastest that passes the gate followed at load.

``measure_candidates`` (export) times each (backend, graph, precision) of ``engines.candidates``
on this CPU at batch 1, one thread, and scores each on the gate's examples; the manifest keeps
the table and the preferred candidate with the CPU's signature. ``resolve_backend`` (load)
follows it only on the same kind of CPU with that backend installed: a lower-precision engine
is chosen only where the gate measured it.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclin.artifacts import BundleManifest, canonical_json
from edgeclin.engines import BACKENDS, MODEL_FILE, Candidate, candidates, get_backend
from edgeclin.errors import EdgeclinError
from edgeclin.files import cache_dir, read_json, write_json
from edgeclin.hardware import cpu_features
from edgeclin.timing import time_interleaved

SPEEDUP_TO_SWITCH = 1.1  # a candidate must beat onnxruntime by this much to be preferred (not by noise)


@dataclass(frozen=True)
class Choice:
    """The engine a bundle runs on here, and why."""

    candidate: Candidate
    reason: str


def _main(manifest: BundleManifest, reason: str) -> Choice:
    graphs = manifest.graph_precisions()
    return Choice(Candidate("onnxruntime", MODEL_FILE, graphs[MODEL_FILE]), reason)


def resolve_backend(manifest: BundleManifest, backend: str = "auto", bundle: Path | None = None,
                    threads: int | None = None) -> Choice:
    """The (backend, graph, precision) to run a bundle with, and why.

    A named backend runs the main graph. ``auto``: on the kind of CPU export measured on, what it
    measured fastest among the engines that passed the gate; on another, what a brief timing of
    those engines here found fastest (done once per CPU kind, cached outside the bundle); where
    nothing else is installed, onnxruntime on the main graph, which runs everywhere.
    """
    graphs = manifest.graph_precisions()
    if backend != "auto":
        chosen = get_backend(backend)
        chosen.require()
        return Choice(next(c for c in chosen.candidates(graphs, cpu_features()) if c.model == MODEL_FILE),
                      f"--backend {backend}")
    measured = manifest.runtime or {}
    if measured.get("cpu") == cpu_features().signature():
        preferred = _installed(measured.get("preferred") or {}, graphs)
        if preferred:
            return Choice(preferred, "fastest at equal accuracy when export measured this kind of CPU")
        return _main(manifest, "the measured engine is not installed here")
    gated = [c for c in (_installed(c, graphs) for c in measured.get("candidates", []) if c.get("passed")) if c]
    if len(gated) < 2 or bundle is None:
        return _main(manifest, "the portable graph (no other gated engine installed here)")
    return _timed_choice(manifest, bundle, gated, threads)


def _installed(entry: dict, graphs: dict[str, str]) -> Candidate | None:
    """The measured candidate ``entry`` as it runs here, if its backend is installed and its graph carried."""
    if entry.get("backend") not in BACKENDS or not get_backend(entry["backend"]).available() \
            or entry.get("model") not in graphs:
        return None
    here = [c for c in get_backend(entry["backend"]).candidates(graphs, cpu_features()) if c.model == entry["model"]]
    return here[0] if here else None


def _cache_file(manifest: BundleManifest) -> Path:
    cpu = hashlib.sha256(canonical_json(cpu_features().signature()).encode()).hexdigest()[:12]
    return cache_dir() / "engine-choice" / f"{manifest.manifest_sha256[:16]}-{cpu}.json"


def _timed_choice(manifest: BundleManifest, bundle: Path, gated: list[Candidate], threads: int | None) -> Choice:
    """Time the gated engines briefly on this CPU (batch 1, synthetic 128 tokens); the choice is cached."""
    cached = _cache_file(manifest)
    if cached.is_file():
        record = read_json(cached)
        return Choice(Candidate(**record["candidate"]), f"timed on this CPU on first use ({record['why']})")
    times = time_candidates(bundle, manifest, gated, threads)
    fastest = min(times, key=times.get)
    base = next(c for c in gated if c.backend == "onnxruntime") if any(c.backend == "onnxruntime" for c in gated) \
        else fastest
    if times[base] / times[fastest] < SPEEDUP_TO_SWITCH:
        fastest = base
    why = ", ".join(f"{c.backend} {c.precision} {c.model} {ms:.1f} ms" for c, ms in sorted(times.items(),
                                                                                           key=lambda kv: kv[1]))
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_json(cached, {"candidate": fastest.as_dict(), "why": why, "cpu": cpu_features().signature()})
    return Choice(fastest, f"timed on this CPU on first use ({why})")


def time_candidates(bundle: Path, manifest: BundleManifest, candidates_: list[Candidate], threads: int | None,
                    rounds: int = 10) -> dict[Candidate, float]:
    """Median milliseconds of each candidate on one synthetic input, the candidates interleaved."""
    from edgeclin.runtime import bundle_model

    models = {c: bundle_model(bundle, manifest, c, threads=threads) for c in candidates_}
    rng = np.random.default_rng(0)
    length = min(128, manifest.input.max_length)
    feed = {"input_ids": rng.integers(1000 if (manifest.vocab_size or 0) > 2000 else 5, manifest.vocab_size or 100,
                                      size=(1, length), dtype=np.int64)}
    feed.update(attention_mask=np.ones_like(feed["input_ids"]), token_type_ids=np.zeros_like(feed["input_ids"]))
    calls = {c: functools.partial(m.engine, {k: feed[k] for k in m.input_names}) for c, m in models.items()}
    return {c: float(np.median(t)) for c, t in time_interleaved(calls, 3, rounds).items()}


def _call(model, example) -> None:
    """One prediction, tokenisation included."""
    encoded = model.strategy.encode(model.tokenizer, [example], None, model.spec.input)
    model.run_encoded(encoded.input_ids, encoded.token_type_ids, 1)


def measure_candidates(folder, manifest: BundleManifest, examples: list, reference: float, gate_metric: str,
                       max_drop: float, main_metric: float, known: dict | None = None, rounds: int = 20) -> dict:
    """Time and score every candidate that can run the bundle here; prefer the fastest that passes the gate.

    Latency is batch 1, one thread, on the median-length test input, candidates interleaved. A
    candidate passes if its ``gate_metric`` is within ``max_drop`` points of the fp32 ONNX model's
    ``reference``; onnxruntime on the main graph is the variant the gate already scored (``main_metric``), and
    ``known`` holds the metrics of other (backend, graph) pairs the gate scored.
    """
    known = known or {}
    from edgeclin.runtime import bundle_model

    found, models, unloadable = [], [], []
    for candidate in candidates(manifest.graph_precisions()):
        try:
            models.append(bundle_model(folder, manifest, candidate, threads=1))
            found.append(candidate)
        except EdgeclinError as exc:  # e.g. OpenVINO and a graph of onnxruntime's fused ops (--optimize)
            unloadable.append({**candidate.as_dict(), "passed": False, "loads": False,
                               "error": str(exc).removeprefix(f"{folder / candidate.model}: ")[:300]})
    sample = sorted(examples, key=lambda e: len(e.text))[len(examples) // 2]
    times = time_interleaved({i: functools.partial(_call, m, sample) for i, m in enumerate(models)}, 3, rounds)
    results = []
    for i, (candidate, model) in enumerate(zip(found, models, strict=True)):
        metric = main_metric if i == 0 else known.get((candidate.backend, candidate.model)) or \
            model.evaluate(examples)[0][gate_metric]
        results.append({**candidate.as_dict(), "p50_ms": float(np.median(times[i])), gate_metric: metric,
                        "passed": 100 * (reference - metric) <= max_drop})
    baseline = results[0]
    preferred = min((r for r in results if r["passed"]), key=lambda r: r["p50_ms"], default=baseline)
    if preferred is not baseline and baseline["p50_ms"] / preferred["p50_ms"] < SPEEDUP_TO_SWITCH:
        preferred = baseline
    return {"cpu": cpu_features().signature(), "threads": 1, "batch_size": 1, "rounds": rounds,
            "candidates": results + unloadable,
            "preferred": {k: preferred[k] for k in ("backend", "model", "precision")}}
