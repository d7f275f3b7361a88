"""``edgeclin bench``: latency, throughput, memory, size and accuracy of every variant.

Protocol (../shared/BENCHMARKING.md): speed claims are ratios measured side by side in one
run, each variant in its own fresh process (PyTorch's and onnxruntime's idle thread pools
slow each other down in one process). Latency: synthetic inputs of exact lengths, the variants
alternated over rounds (A B C A B C ...) after warm-up, percentiles of all rounds' samples and
the spread of the rounds' medians. End-to-end throughput, load time, peak memory and the task
metric: a fresh process per variant on a real test split (tokenisation, batching and padding
included).

The variants of a bundle are the runtime's candidates (``edgeclin.engines``), so a new backend
is benchmarked without a change here; run folders are measured in PyTorch (fp32, and bf16
where the CPU has native bf16).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edgeclin.artifacts import MANIFEST, BundleManifest
from edgeclin.bench_report import compare, write_outputs
from edgeclin.encoding import length_sorted_batches, pad_arrays
from edgeclin.engines import BACKENDS, FP32_MODEL_FILE, Candidate, candidates, get_backend
from edgeclin.errors import EdgeclinError
from edgeclin.files import check_output_free, read_json
from edgeclin.hardware import cpu_features
from edgeclin.models import max_positions
from edgeclin.tasks import get_task
from edgeclin.timing import latency_summary, time_interleaved

NO_GPU = "not run: no GPU"
__all__ = ["BenchVariant", "bench", "compare", "plan_variants"]


@dataclass
class BenchVariant:
    name: str  # e.g. "lora-run: onnxruntime int8"
    source: str  # folder
    engine: str  # torch, or a runtime backend
    precision: str  # fp32 | bf16 | int8 | fp16
    device: str = "cpu"
    status: str = "ok"  # or "not run: ..."
    baseline: bool = False
    model_file: str = "model.onnx"  # bundles: which graph

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.engine, self.model_file, self.precision)


def _is_bundle(path: Path) -> bool:
    return (path / MANIFEST).exists()


def _gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _bundle_variants(source: Path, label: str, backends: list[str], gpu: bool) -> list[BenchVariant]:
    graphs = BundleManifest.read(source).graph_precisions()
    found = [c for c in candidates(graphs, installed_only=False) if c.backend in backends]
    variants = []
    for c in found:
        status = "ok" if get_backend(c.backend).available() else f"not run: {c.backend} not installed"
        suffix = " (fp32 graph)" if c.model == FP32_MODEL_FILE else ""
        variants.append(BenchVariant(f"{label}: {c.backend} {c.precision}{suffix}", str(source), c.backend,
                                     c.precision, status=status, model_file=c.model))
    gpu_graph = FP32_MODEL_FILE if FP32_MODEL_FILE in graphs else "model.onnx"  # int8 on GPU is slow (PITFALLS 5)
    variants.append(BenchVariant(f"{label}: onnxruntime {graphs[gpu_graph]} (cuda)", str(source), "onnxruntime",
                                 graphs[gpu_graph], "cuda", status="ok" if gpu else NO_GPU, model_file=gpu_graph))
    return variants


def _torch_variants(source: Path, label: str, is_baseline: bool, gpu: bool) -> list[BenchVariant]:
    variants = [BenchVariant(f"{label}: pytorch fp32", str(source), "torch", "fp32", baseline=is_baseline)]
    if cpu_features().native_bf16:
        variants.append(BenchVariant(f"{label}: pytorch bf16", str(source), "torch", "bf16"))
    variants.append(BenchVariant(f"{label}: pytorch bf16 (cuda)", str(source), "torch", "bf16", "cuda",
                                 status="ok" if gpu else NO_GPU))
    return variants


def plan_variants(sources: list[Path], baseline: Path | None, backends: list[str]) -> list[BenchVariant]:
    """Every variant of every source, with the ones this machine cannot run marked as such."""
    gpu = _gpu_available()
    baseline = baseline.resolve() if baseline else None
    all_sources = list(dict.fromkeys(([baseline] if baseline else []) + [s.resolve() for s in sources]))
    names = [s.name for s in all_sources]
    variants: list[BenchVariant] = []
    for source in all_sources:
        # two sources with the same folder name (runs/a/model, runs/b/model) keep apart
        label = source.name if names.count(source.name) == 1 else f"{source.parent.name}/{source.name}"
        if _is_bundle(source):
            variants += _bundle_variants(source, label, backends, gpu)
        else:
            variants += _torch_variants(source, label, baseline is not None and source == baseline, gpu)
    if not any(v.baseline for v in variants) and variants:
        first_torch = next((v for v in variants if v.engine == "torch" and v.device == "cpu"), variants[0])
        first_torch.baseline = True
    return variants


class Runner:
    """One loaded variant: ``logits(feed)`` on padded numpy arrays, and ``scores(examples)`` end to end."""

    def __init__(self, variant: BenchVariant, threads: int | None) -> None:
        self.variant, self.threads = variant, threads
        path = Path(variant.source)
        if variant.engine == "torch":
            self._load_torch(path)
        else:
            from edgeclin.runtime import bundle_model, verify_bundle

            self.predictor = bundle_model(path, verify_bundle(path), variant.candidate, threads=threads,
                                          device=variant.device)
            self.task, self.labels, self.threshold = self.predictor.task, self.predictor.labels, \
                self.predictor.spec.threshold
            self.input, self.columns = self.predictor.spec.input, self.predictor.manifest.columns
            self.input_names = self.predictor.input_names
            self.vocab_size = self.predictor.tokenizer.get_vocab_size()
            config = path / "config.json"
            self.positions = max_positions(read_json(config)) if config.exists() else None
            self.tokenizer, self.pad_id = self.predictor.tokenizer, self.predictor.pad_token_id
            self.rows_per_run = self.predictor.spec.rows_per_run  # as the runtime runs it

    def _load_torch(self, path: Path) -> None:
        import torch

        from edgeclin.artifacts import open_model_folder
        from edgeclin.models import load_tokenizer
        from edgeclin.torch_model import load_torch_model

        run = open_model_folder(path)
        model = load_torch_model(run)
        if run.is_adapter:  # deployable PyTorch is the merged model: no adapter overhead per call
            model = model.merge_and_unload()
        self.model, self.torch = model.to(self.variant.device).eval(), torch
        self.rows_per_run = None
        self.task, self.labels, self.threshold = run.task, run.labels, run.threshold
        self.input, self.columns = run.input_format, run.columns
        self.tokenizer = load_tokenizer(str(path))
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.input_names = ["input_ids", "attention_mask"] + (
            ["token_type_ids"] if "token_type_ids" in self.tokenizer.model_input_names else [])
        self.vocab_size = self.model.config.vocab_size
        self.positions = max_positions(self.model.config.to_dict())

    @property
    def max_length(self) -> int:
        return self.input.max_length

    def logits(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        if self.variant.engine != "torch":
            return self.predictor.engine(feed)
        torch, device = self.torch, self.variant.device
        if self.threads:
            torch.set_num_threads(self.threads)
        inputs = {k: torch.from_numpy(v).to(device) for k, v in feed.items()}
        with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.bfloat16,
                                                    enabled=self.variant.precision == "bf16"):
            return self.model(**inputs).logits.float().cpu().numpy()

    def scores(self, examples: list, max_length: int, batch_size: int) -> tuple[object, list[np.ndarray]]:
        """End to end: tokenise, length-sorted batches, dynamic padding, run, softmax/sigmoid."""
        strategy = get_task(self.task)
        encoded = strategy.encode(self.tokenizer, examples, None, replace(self.input, max_length=max_length))
        out: list = [None] * len(encoded)
        for rows in length_sorted_batches(encoded.lengths, min(batch_size, self.rows_per_run or batch_size)):
            arrays = pad_arrays([encoded.input_ids[i] for i in rows], [encoded.token_type_ids[i] for i in rows],
                                self.pad_id)
            logits = self.logits({k: arrays[k] for k in self.input_names})
            for row, values in zip(rows, logits, strict=True):
                out[row] = strategy.scores(values[:encoded.lengths[row]] if values.ndim == 2 else values)
        return encoded, out


def deploy_bytes(variant: BenchVariant) -> int:
    """Bytes on disk of what must be deployed to run the variant."""
    path = Path(variant.source)
    if variant.engine != "torch":
        graph = path / variant.model_file
        weights = graph.with_suffix(".bin") if graph.suffix == ".xml" else None  # an OpenVINO IR's weights
        return graph.stat().st_size + (weights.stat().st_size if weights and weights.exists() else 0)
    total = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    if (path / "adapter_config.json").exists():
        from edgeclin.artifacts import open_model_folder
        from edgeclin.torch_model import base_model_path

        total += sum(p.stat().st_size for p in Path(base_model_path(open_model_folder(path))).glob("*.safetensors"))
    return total


def synthetic_feed(batch: int, length: int, vocab_size: int, input_names: list[str], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000 if vocab_size > 2000 else 5, vocab_size, size=(batch, length), dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {k: feed[k] for k in input_names}


def _latency_in_process(spec: dict) -> list[dict]:
    """The fresh-process side of ``measure_latency``: one variant, every setting, its samples in milliseconds."""
    variant = BenchVariant(**spec["variant"])
    rows = []
    for threads in spec["threads"]:
        runner = Runner(variant, threads)
        _check_lengths({variant.name: runner}, spec["seq_lens"])
        for length in spec["seq_lens"]:
            for batch in spec["batch_sizes"]:
                call = functools.partial(runner.logits, synthetic_feed(batch, length, runner.vocab_size,
                                                                       runner.input_names))
                samples = time_interleaved({"call": call}, spec["warmup"], spec["repeats"])["call"]
                rows.append({"threads": threads, "batch": batch, "seq_len": length, "samples": samples})
    return rows


def _spawn(spec: dict, threads: int) -> dict | list:
    """Run ``spec`` in a fresh Python process (its own thread pools), return what it printed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    proc = subprocess.run([sys.executable, "-m", "edgeclin.bench", json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=7200)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if last.startswith("edgeclin.errors.EdgeclinError: "):
            raise EdgeclinError(last.removeprefix("edgeclin.errors.EdgeclinError: "))
        return {"status": f"failed: {last}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_latency(variants: list[BenchVariant], thread_counts: list[int], batch_sizes: list[int],
                    seq_lens: list[int], warmup: int, repeats: int, progress: bool, rounds: int = 3) -> list[dict]:
    """p50/p90/p99 per variant and setting: each variant in a fresh process, the variants alternated over
    ``rounds`` (A B C A B C ...; ../shared/BENCHMARKING.md); percentiles of all rounds' samples, and the spread of
    the rounds' medians."""
    from tqdm.auto import tqdm

    runnable = [v for v in variants if v.status == "ok"]
    pooled: dict[tuple, dict] = {}
    bar = tqdm(total=rounds * len(runnable), desc="latency", disable=not progress, file=sys.stderr)
    spec = {"mode": "latency", "threads": thread_counts, "batch_sizes": batch_sizes, "seq_lens": seq_lens,
            "warmup": warmup, "repeats": repeats}
    for _ in range(rounds):
        for variant in runnable:
            rows = _spawn({**spec, "variant": asdict(variant)}, max(thread_counts))
            for row in rows if isinstance(rows, list) else []:
                entry = pooled.setdefault((variant.name, row["threads"], row["batch"], row["seq_len"]),
                                          {"samples": [], "medians": [], "precision": variant.precision})
                entry["samples"] += row["samples"]
                entry["medians"].append(float(np.median(row["samples"])))
            bar.update(1)
    bar.close()
    out = [{"variant": name, "precision": e["precision"], "threads": t, "batch": b, "seq_len": n,
            **latency_summary(e["samples"]), "rounds": len(e["medians"]), "round_p50_min_ms": min(e["medians"]),
            "round_p50_max_ms": max(e["medians"])} for (name, t, b, n), e in pooled.items()]
    return out + [{"variant": v.name, "status": v.status} for v in variants if v.status != "ok"]


def _check_lengths(runners: dict, seq_lens: list[int]) -> None:
    for name, runner in runners.items():
        if runner.positions is not None and max(seq_lens) > runner.positions:
            raise EdgeclinError(f"--seq-lens {max(seq_lens)} is longer than {name} takes ({runner.positions} tokens)")


def measure_end_to_end(variant: BenchVariant, data: str, max_length: int | None, batch_size: int,
                       threads: int) -> dict:
    """Run in a fresh process: load time, throughput on the test split, metric, peak RSS."""
    spec = {"mode": "end_to_end", "variant": asdict(variant), "data": data, "max_length": max_length,
            "batch_size": batch_size, "threads": threads}
    result = _spawn(spec, threads)
    return {"variant": variant.name, **result} if "status" in result else result


def _test_examples(runner: Runner, data: Path) -> list:
    from edgeclin.data import load_dataset, read_split

    strategy = get_task(runner.task)
    if data.is_dir():
        examples = load_dataset(data, columns=runner.columns, check=False, task=runner.task).splits["test"].examples
    else:
        examples = read_split(data, "test", runner.columns, task=runner.task).examples
    return strategy.scorable(examples, runner.labels)


def _worker(spec: dict) -> dict:
    """The fresh-process side of ``measure_end_to_end``."""
    from edgeclin.hardware import peak_rss_mb

    variant = BenchVariant(**spec["variant"])
    start = time.perf_counter()
    runner = Runner(variant, spec["threads"])
    load_s = time.perf_counter() - start
    examples = _test_examples(runner, Path(spec["data"]))
    max_length = spec["max_length"] or runner.max_length
    runner.scores(examples[:8], max_length, spec["batch_size"])  # warm-up
    start = time.perf_counter()
    encoded, scores = runner.scores(examples, max_length, spec["batch_size"])
    seconds = time.perf_counter() - start
    metrics, _ = get_task(runner.task).evaluate(examples, encoded, scores, runner.labels, runner.threshold)
    return {"variant": variant.name, "task": runner.task, "precision": variant.precision, "texts": len(examples),
            "seconds": seconds, "texts_per_s": len(examples) / seconds, "load_s": load_s,
            "peak_rss_mb": peak_rss_mb(), "metrics": metrics, "max_length": max_length, "threads": spec["threads"],
            "bytes": deploy_bytes(variant)}


def _end_to_end(variants: list[BenchVariant], data, max_length, batch_size: int, threads: int,
                progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    rows = []
    for variant in tqdm(variants, desc="end to end", disable=not progress, file=sys.stderr):
        if variant.status != "ok":
            rows.append({"variant": variant.name, "status": variant.status})
        else:
            rows.append(measure_end_to_end(variant, str(data), max_length, batch_size, threads))
    return rows


def _check_settings(batch_sizes, seq_lens, threads, warmup: int, repeats: int) -> None:
    for name, values in (("--batch-sizes", batch_sizes), ("--seq-lens", seq_lens), ("--threads", threads or (1,))):
        if not values or any(v < 1 for v in values):
            raise EdgeclinError(f"{name} must be positive whole numbers")
    if warmup < 0 or repeats < 1:
        raise EdgeclinError("--warmup must be at least 0 and --runs at least 1")


def bench(sources: list[str | Path], *, baseline: str | Path | None = None, data: str | Path | None = None,
          batch_sizes: tuple[int, ...] = (1, 8, 32), seq_lens: tuple[int, ...] = (128, 512),
          threads: tuple[int, ...] | None = None, warmup: int = 5, repeats: int = 50, max_length: int | None = None,
          e2e_batch_size: int = 32, backends: tuple[str, ...] = tuple(BACKENDS),
          out: str | Path | None = None, overwrite: bool = False, progress: bool = True, rounds: int = 3) -> Path:
    """Benchmark every variant of ``sources`` and write results.json/csv, report.md and plots to ``out``."""
    from edgeclin.hardware import environment
    from edgeclin.logs import get_logger
    from edgeclin.provenance import git_commit, library_versions

    _check_settings(batch_sizes, seq_lens, threads, warmup, repeats)
    if warmup < 5 or repeats < 50:
        get_logger(__name__).info(f"note: {warmup} warm-ups / {repeats} runs is below the protocol's 5 / 50")
    paths, base = [Path(s) for s in sources], Path(baseline) if baseline else None
    for path in [*paths, *([base] if base else [])]:
        if not path.is_dir():
            raise EdgeclinError(f"no such run, model folder or bundle: {path}")
    variants = plan_variants(paths, base, list(backends))
    if not variants:
        raise EdgeclinError("nothing to benchmark: give run folders, merged folders or bundles")
    out = Path(out) if out else Path("bench") / time.strftime("%Y%m%d-%H%M%S")
    check_output_free(out, overwrite, "bench folder")  # before the measurements, not after
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        raise EdgeclinError(f"unknown backend {unknown[0]!r} in --backends (choose from {', '.join(BACKENDS)})")
    thread_counts = list(threads) if threads else sorted({1, os.cpu_count() or 1})
    latency = measure_latency(variants, thread_counts, list(batch_sizes), list(seq_lens), warmup, repeats, progress,
                              rounds)
    end_to_end = _end_to_end(variants, data, max_length, e2e_batch_size, max(thread_counts), progress) \
        if data is not None else []
    results = {"environment": {**environment(), "versions": library_versions(), "git_commit": git_commit(),
                               "threads_measured": thread_counts},
               "config": {"sources": [str(p) for p in paths], "baseline": str(base) if base else None,
                          "data": str(data) if data else None, "batch_sizes": list(batch_sizes),
                          "seq_lens": list(seq_lens), "warmup": warmup, "repeats": repeats, "rounds": rounds},
               "variants": [asdict(v) for v in variants], "latency": latency, "end_to_end": end_to_end}
    write_outputs(results, out, overwrite)
    return out


if __name__ == "__main__":  # the fresh process of measure_latency and measure_end_to_end
    _spec = json.loads(sys.argv[1])
    print(json.dumps(_latency_in_process(_spec) if _spec.get("mode") == "latency" else _worker(_spec)))
