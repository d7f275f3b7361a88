"""``edgeclin bench``: latency, throughput, memory, size and accuracy of every variant.

Protocol (../shared/BENCHMARKING.md): speed claims are ratios measured side by side in one
run. Latency runs all variants in one process, interleaved (A B C A B C ...) after warm-up,
on synthetic inputs of exact lengths. End-to-end throughput, load time, peak memory and the
task metric come from a fresh process per variant on a real test split (tokenisation,
batching and padding included), so one variant's memory never inflates another's.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeclin import runs
from edgeclin.data import Columns
from edgeclin.errors import EdgeclinError
from edgeclin.tasks import DISPLAY_COLUMNS, SELECTION_METRIC, SINGLE_LABEL, TOKEN, scores_from_logits

NO_GPU = "not run: no GPU"


@dataclass
class Variant:
    name: str  # e.g. "lora-run: onnxruntime int8"
    source: str  # folder
    engine: str  # torch | onnxruntime | openvino
    precision: str  # fp32 | bf16 | int8 | fp16
    device: str = "cpu"
    status: str = "ok"  # or "not run: ..."
    baseline: bool = False
    model_file: str = "model.onnx"  # bundles: which graph (model.fp32.onnx for OpenVINO bf16)


def _is_bundle(path: Path) -> bool:
    return (path / "manifest.json").exists()


def plan_variants(sources: list[Path], baseline: Path | None, backends: list[str]) -> list[Variant]:
    """Every variant of every source, with the ones this machine cannot run marked as such."""
    import torch

    from edgeclin.hardware import cpu_has_fast_bf16
    from edgeclin.runtime import openvino_available

    variants: list[Variant] = []
    gpu = torch.cuda.is_available()
    baseline = baseline.resolve() if baseline else None
    all_sources = list(dict.fromkeys(([baseline] if baseline else []) + [s.resolve() for s in sources]))
    names = [s.name for s in all_sources]
    for source in all_sources:
        # two sources with the same folder name (runs/a/model, runs/b/model) keep apart
        label = source.name if names.count(source.name) == 1 else f"{source.parent.name}/{source.name}"
        if _is_bundle(source):
            manifest = runs.read_json(source / "manifest.json")
            precision = "int8" if manifest.get("quantization") else "fp32"
            if "onnxruntime" in backends:
                variants.append(Variant(f"{label}: onnxruntime {precision}", str(source), "onnxruntime", precision))
            if "openvino" in backends:
                status = "ok" if openvino_available() else "not run: openvino not installed"
                ov_precision = ("bf16" if cpu_has_fast_bf16() else "fp32") if precision == "fp32" else precision
                variants.append(Variant(f"{label}: openvino {ov_precision}", str(source), "openvino", ov_precision,
                                        status=status))
                if (source / "model.fp32.onnx").exists():  # carried for OpenVINO bf16 (--openvino-fp32)
                    ov_precision = "bf16" if cpu_has_fast_bf16() else "fp32"
                    variants.append(Variant(f"{label}: openvino {ov_precision} (fp32 graph)", str(source), "openvino",
                                            ov_precision, status=status, model_file="model.fp32.onnx"))
            variants.append(Variant(f"{label}: onnxruntime fp16 (cuda)", str(source), "onnxruntime", "fp16", "cuda",
                                    status="ok" if gpu else NO_GPU))
        else:
            is_baseline = baseline is not None and source == baseline
            variants.append(Variant(f"{label}: pytorch fp32", str(source), "torch", "fp32", baseline=is_baseline))
            if cpu_has_fast_bf16():
                variants.append(Variant(f"{label}: pytorch bf16", str(source), "torch", "bf16"))
            variants.append(Variant(f"{label}: pytorch bf16 (cuda)", str(source), "torch", "bf16", "cuda",
                                    status="ok" if gpu else NO_GPU))
    if not any(v.baseline for v in variants) and variants:
        first_torch = next((v for v in variants if v.engine == "torch" and v.device == "cpu"), variants[0])
        first_torch.baseline = True
    return variants


class Runner:
    """One loaded variant: ``logits(feed)`` on padded numpy arrays, and ``encode(texts)``."""

    def __init__(self, variant: Variant, threads: int | None) -> None:
        self.variant, self.threads = variant, threads
        path = Path(variant.source)
        if variant.engine == "torch":
            self._load_torch(path)
        else:
            from edgeclin.runtime import OnnxRuntimeEngine, load

            if variant.device == "cuda":
                bundle = load(path, threads=threads, backend="onnxruntime")  # its CUDA session replaces the CPU one
                bundle.engine = OnnxRuntimeEngine(path / "model.onnx", threads,
                                                  providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
                self.classifier = bundle
            else:
                from edgeclin.runtime import bundle_model, verify_bundle

                precision = variant.precision if variant.precision in ("bf16", "fp32") else "auto"
                self.classifier = bundle_model(path, verify_bundle(path), threads=threads, backend=variant.engine,
                                               model_file=variant.model_file,
                                               precision={"fp32": "f32"}.get(precision, precision))
            self.task = self.classifier.task
            self.threshold = getattr(self.classifier, "threshold", None)
            self.input_names = self.classifier.input_names
            self.vocab_size = self.classifier.tokenizer.get_vocab_size()
            self.max_length = self.classifier.max_length
            trained = self.classifier.manifest.get("columns", {})
            self.columns = Columns(trained.get("text", "text"), trained.get("label", "label"), trained.get("text_pair"))
            self.label_separator = trained.get("multi_label_separator") or ";"
        if self.task == TOKEN:
            raise EdgeclinError(f"{path}: edgeclin bench measures classifiers; NER models are not supported yet "
                                "(edgeclin predict gives their entity F1)")

    def _load_torch(self, path: Path) -> None:
        import torch

        from edgeclin.merge import load_torch_model, open_model_folder
        from edgeclin.models import load_tokenizer

        run = open_model_folder(path)
        self.task, self.threshold = run.task, run.threshold
        model = load_torch_model(run)
        if run.is_adapter:  # deployable PyTorch is the merged model: no adapter overhead per call
            model = model.merge_and_unload()
        self.model = model.to(self.variant.device).eval()
        self.tokenizer = load_tokenizer(str(path))
        self.labels = run.labels
        self.max_length = run.config.get("max_length", 256)
        self.truncation = run.config.get("truncation", "head")
        self.input_names = ["input_ids", "attention_mask"] + (
            ["token_type_ids"] if "token_type_ids" in self.tokenizer.model_input_names else [])
        self.vocab_size = self.model.config.vocab_size
        self.label_separator = run.config.get("label_sep", ";")
        self.columns = Columns(run.config.get("text_col", "text"), run.config.get("label_col", "label"),
                               run.config.get("text_pair_col"))
        self.torch = torch

    def logits(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        if self.variant.engine != "torch":
            return self.classifier.engine(feed)
        torch = self.torch
        if self.threads:
            torch.set_num_threads(self.threads)
        device = self.variant.device
        inputs = {k: torch.from_numpy(v).to(device) for k, v in feed.items()}
        with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.bfloat16,
                                                    enabled=self.variant.precision == "bf16"):
            return self.model(**inputs).logits.float().cpu().numpy()

    def predict_texts(self, texts, pairs, max_length: int, batch_size: int) -> np.ndarray:
        """End to end: tokenise, length-sorted batches, dynamic padding, run, softmax."""
        from edgeclin.encoding import encode_texts, pad_arrays

        tokenizer = self.tokenizer if self.variant.engine == "torch" else self.classifier.tokenizer
        truncation = self.truncation if self.variant.engine == "torch" else self.classifier.truncation
        pad_id = (self.tokenizer.pad_token_id or 0) if self.variant.engine == "torch" else \
            self.classifier.pad_token_id
        ids, types, _ = encode_texts(tokenizer, texts, pairs, max_length, truncation)
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = None
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            arrays = pad_arrays([ids[i] for i in rows], [types[i] for i in rows], pad_id)
            logits = self.logits({k: arrays[k] for k in self.input_names})
            if out is None:
                out = np.zeros((len(texts), logits.shape[1]), dtype=np.float32)
            out[rows] = logits
        return scores_from_logits(self.task, out)

    @property
    def labels_list(self) -> list[str]:
        return self.labels if self.variant.engine == "torch" else self.classifier.labels


def deploy_bytes(variant: Variant) -> int:
    """Bytes on disk of what must be deployed to run the variant."""
    path = Path(variant.source)
    if variant.engine != "torch":
        return (path / variant.model_file).stat().st_size
    total = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    if (path / "adapter_config.json").exists():
        from edgeclin.merge import base_model_path, open_model_folder

        base = Path(base_model_path(open_model_folder(path)))
        total += sum(p.stat().st_size for p in base.glob("*.safetensors"))
    return total


def synthetic_feed(batch: int, length: int, vocab_size: int, input_names: list[str], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000 if vocab_size > 2000 else 5, vocab_size, size=(batch, length), dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {k: feed[k] for k in input_names}


def time_interleaved(calls: dict, warmup: int, rounds: int, after_round=None) -> dict[str, list[float]]:
    """Milliseconds of each call per round, calls interleaved within each round (after ``warmup`` each).

    Interleaving spreads drifts of the machine (frequency, neighbours) over every candidate alike,
    so ratios measured in one run stay fair (../shared/BENCHMARKING.md).
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


def measure_latency(variants: list[Variant], thread_counts: list[int], batch_sizes: list[int], seq_lens: list[int],
                    warmup: int, repeats: int, progress: bool) -> list[dict]:
    """p50/p90/p99 per variant, all variants interleaved within each setting."""
    from tqdm.auto import tqdm

    runnable = [v for v in variants if v.status == "ok"]
    rows = []
    total = len(thread_counts) * len(batch_sizes) * len(seq_lens)
    bar = tqdm(total=total * repeats, desc="latency", disable=not progress, file=sys.stderr)
    for threads in thread_counts:
        runners = {v.name: Runner(v, threads) for v in runnable}
        for length in seq_lens:
            for batch in batch_sizes:
                calls = {name: functools.partial(runner.logits, synthetic_feed(batch, length, runner.vocab_size,
                                                                               runner.input_names))
                         for name, runner in runners.items()}
                times = time_interleaved(calls, warmup, repeats, after_round=lambda: bar.update(1))
                for name, samples in times.items():
                    ms = np.array(samples)
                    rows.append({"variant": name, "threads": threads, "batch": batch, "seq_len": length,
                                 "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
                                 "p99_ms": float(np.percentile(ms, 99)), "min_ms": float(ms.min()),
                                 "runs": len(samples)})
        del runners
    bar.close()
    for v in variants:
        if v.status != "ok":
            rows.append({"variant": v.name, "status": v.status})
    return rows


def measure_end_to_end(variant: Variant, data: str, max_length: int | None, batch_size: int, threads: int) -> dict:
    """Run in a fresh process: load time, throughput on the test split, metric, peak RSS."""
    spec = {"variant": asdict(variant), "data": data, "max_length": max_length, "batch_size": batch_size,
            "threads": threads}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    proc = subprocess.run([sys.executable, "-m", "edgeclin.bench", json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=7200)
    if proc.returncode != 0:
        return {"variant": variant.name, "status": f"failed: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _worker(spec: dict) -> dict:
    """The fresh-process side of ``measure_end_to_end``."""
    from edgeclin.data import load_dataset, read_split
    from edgeclin.hardware import peak_rss_mb
    from edgeclin.metrics import task_metrics
    from edgeclin.tasks import MULTI_LABEL

    variant = Variant(**spec["variant"])
    start = time.perf_counter()
    runner = Runner(variant, spec["threads"])
    load_s = time.perf_counter() - start
    data = Path(spec["data"])
    columns = runner.columns
    if data.is_dir():
        examples = load_dataset(data, columns=columns, check=False,
                                multi_label=runner.task == MULTI_LABEL,
                                label_separator=runner.label_separator).splits["test"].examples
    else:
        from edgeclin.data import LabelFormat

        examples = read_split(data, "test", columns,
                              label_format=LabelFormat(runner.task, runner.label_separator)).examples
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if columns.text_pair else None
    max_length = spec["max_length"] or runner.max_length
    runner.predict_texts(texts[:8], pairs[:8] if pairs else None, max_length, spec["batch_size"])  # warm-up
    start = time.perf_counter()
    probabilities = runner.predict_texts(texts, pairs, max_length, spec["batch_size"])
    seconds = time.perf_counter() - start
    known = [i for i, e in enumerate(examples) if runner.task == MULTI_LABEL or e.label in runner.labels_list]
    metrics = task_metrics(runner.task, [examples[i] for i in known], probabilities[known], runner.labels_list,
                           runner.threshold)
    return {"variant": variant.name, "task": runner.task, "texts": len(texts), "seconds": seconds,
            "texts_per_s": len(texts) / seconds,
            "load_s": load_s, "peak_rss_mb": peak_rss_mb(),
            "metrics": metrics, "max_length": max_length, "threads": spec["threads"],
            "bytes": deploy_bytes(variant)}


def bench(sources: list[str | Path], *, baseline: str | Path | None = None, data: str | Path | None = None,
          batch_sizes: tuple[int, ...] = (1, 8, 32), seq_lens: tuple[int, ...] = (128, 512),
          threads: tuple[int, ...] | None = None, warmup: int = 5, repeats: int = 50, max_length: int | None = None,
          e2e_batch_size: int = 32, backends: tuple[str, ...] = ("onnxruntime", "openvino"),
          out: str | Path | None = None, progress: bool = True) -> Path:
    """Benchmark every variant of ``sources`` and write results.json/csv, report.md and plots to ``out``."""
    from edgeclin.hardware import environment

    if warmup < 5 or repeats < 50:
        print(f"note: {warmup} warm-ups / {repeats} runs is below the protocol's 5 / 50", file=sys.stderr)
    paths = [Path(s) for s in sources]
    base = Path(baseline) if baseline else None
    for path in [*paths, *([base] if base else [])]:
        if not path.is_dir():
            raise EdgeclinError(f"no such run, model folder or bundle: {path}")
    variants = plan_variants(paths, base, list(backends))
    if not variants:
        raise EdgeclinError("nothing to benchmark: give run folders, merged folders or bundles")
    out = Path(out) if out else Path("bench") / time.strftime("%Y%m%d-%H%M%S")
    thread_counts = list(threads) if threads else sorted({1, os.cpu_count() or 1})
    latency = measure_latency(variants, thread_counts, list(batch_sizes), list(seq_lens), warmup, repeats, progress)
    end_to_end = []
    if data is not None:
        from tqdm.auto import tqdm

        for variant in tqdm(variants, desc="end to end", disable=not progress, file=sys.stderr):
            if variant.status != "ok":
                end_to_end.append({"variant": variant.name, "status": variant.status})
                continue
            end_to_end.append(measure_end_to_end(variant, str(data), max_length, e2e_batch_size,
                                                 max(thread_counts)))
    results = {"environment": {**environment(), "versions": _versions(), "git_commit": runs.git_commit(),
                               "threads_measured": thread_counts},
               "config": {"sources": [str(p) for p in paths], "baseline": str(base) if base else None,
                          "data": str(data) if data else None, "batch_sizes": list(batch_sizes),
                          "seq_lens": list(seq_lens), "warmup": warmup, "repeats": repeats},
               "variants": [asdict(v) for v in variants], "latency": latency, "end_to_end": end_to_end}
    write_outputs(results, out)
    return out


def _versions() -> dict:
    versions = runs.library_versions()
    from importlib import metadata

    try:
        versions["openvino"] = metadata.version("openvino")
    except metadata.PackageNotFoundError:
        versions["openvino"] = None
    return versions


def _baseline_name(results: dict) -> str | None:
    return next((v["name"] for v in results["variants"] if v.get("baseline")), None)


def write_outputs(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)  # never publish files of an earlier, broken run
    tmp.mkdir(parents=True)
    runs.write_json(tmp / "results.json", results)
    with (tmp / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kind", "variant", "threads", "batch", "seq_len", "p50_ms", "p90_ms", "p99_ms",
                         "texts_per_s", "metric", "metric_value", "peak_rss_mb", "load_s", "bytes", "status"])
        for r in results["latency"]:
            writer.writerow(["latency", r["variant"], r.get("threads"), r.get("batch"), r.get("seq_len"),
                             r.get("p50_ms"), r.get("p90_ms"), r.get("p99_ms"), "", "", "", "", "", "",
                             r.get("status", "ok")])
        for r in results["end_to_end"]:
            writer.writerow(["end_to_end", r["variant"], r.get("threads"), "", r.get("max_length"), "", "", "",
                             r.get("texts_per_s"), _main_metric(r), (r.get("metrics") or {}).get(_main_metric(r)),
                             r.get("peak_rss_mb"),
                             r.get("load_s"), r.get("bytes"), r.get("status", "ok")])
    (tmp / "report.md").write_text(report_markdown(results))
    plot(results, tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def _main_metric(row: dict) -> str:
    """The metric that stands for a variant's accuracy: macro-F1, or micro-F1 for multi-label."""
    return SELECTION_METRIC[row.get("task", SINGLE_LABEL)]


def report_markdown(results: dict) -> str:
    env = results["environment"]
    baseline = _baseline_name(results)
    lines = ["# edgeclin bench", "",
             f"CPU: {env['cpu']} ({env['cores']} cores; ISA: {', '.join(env['isa'])}); GPU: {env['gpu'] or 'none'}; "
             f"threads measured: {env['threads_measured']}; commit {env['git_commit']}.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v), "",
             f"Baseline (1.00x): **{baseline}**. Ratios are baseline time / variant time (higher is faster), "
             "measured side by side in this run.", "", "## Latency (p50 ms, interleaved)", "",
             "| variant | threads | batch | seq | p50 ms | p90 ms | p99 ms | speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base_p50 = {(r["threads"], r["batch"], r["seq_len"]): r["p50_ms"] for r in results["latency"]
                if r["variant"] == baseline and "p50_ms" in r}
    for r in results["latency"]:
        if "p50_ms" not in r:
            lines.append(f"| {r['variant']} | | | | {r['status']} | | | |")
            continue
        ref = base_p50.get((r["threads"], r["batch"], r["seq_len"]))
        ratio = f"{ref / r['p50_ms']:.2f}x" if ref else ""
        lines.append(f"| {r['variant']} | {r['threads']} | {r['batch']} | {r['seq_len']} | {r['p50_ms']:.2f} | "
                     f"{r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {ratio} |")
    if results["end_to_end"]:
        task = next((r["task"] for r in results["end_to_end"] if "task" in r), SINGLE_LABEL)
        shown = DISPLAY_COLUMNS[task][:2]
        lines += ["", "## End to end on the test split (fresh process per variant)", "",
                  f"| variant | texts/s | speed-up | {shown[0][1]} | {shown[1][1]} | peak RSS MiB | load s | size MB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        ref = next((r.get("texts_per_s") for r in results["end_to_end"] if r["variant"] == baseline), None)
        for r in results["end_to_end"]:
            if "texts_per_s" not in r:
                lines.append(f"| {r['variant']} | {r['status']} | | | | | | |")
                continue
            m = r["metrics"]
            ratio = f"{r['texts_per_s'] / ref:.2f}x" if ref else ""
            values = " | ".join("n/a" if m.get(key) is None else f"{100 * m[key]:.1f}" for key, _ in shown)
            lines.append(f"| {r['variant']} | {r['texts_per_s']:.1f} | {ratio} | {values} | "
                         f"{r['peak_rss_mb']:.0f} | {r['load_s']:.2f} | {r['bytes'] / 1e6:.1f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["latency"] if "p50_ms" in r]
    if not rows:
        return
    threads, length = min(r["threads"] for r in rows), min(r["seq_len"] for r in rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        points = sorted((r["batch"], r["p50_ms"]) for r in rows
                        if r["variant"] == variant and r["threads"] == threads and r["seq_len"] == length)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=variant)
    ax.set(xlabel="batch size", ylabel="p50 latency (ms)", xscale="log", yscale="log",
           title=f"latency vs batch size ({length} tokens, {threads} thread(s))")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "latency_vs_batch.png", dpi=120)
    plt.close(fig)
    e2e = {r["variant"]: r for r in results["end_to_end"] if "texts_per_s" in r}
    if e2e:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        metric = _main_metric(next(iter(e2e.values())))
        for name, r in e2e.items():
            value = r["metrics"].get(metric)
            if value is None:
                continue
            ax.scatter(1000 / r["texts_per_s"], 100 * value)
            ax.annotate(name, (1000 / r["texts_per_s"], 100 * value), fontsize=7)
        ax.set(xlabel="ms per text, end to end", ylabel=metric.replace("_", "-"), title="accuracy vs latency")
        fig.tight_layout()
        fig.savefig(folder / "accuracy_vs_latency.png", dpi=120)
        plt.close(fig)


def compare(first: str | Path, second: str | Path) -> str:
    """A table of second/first ratios for every measurement the two results files share."""
    def load(path) -> dict:
        try:
            results = runs.read_json(Path(path))
        except FileNotFoundError:
            raise EdgeclinError(f"no such results file: {path}") from None
        except json.JSONDecodeError as exc:
            raise EdgeclinError(f"{path}, line {exc.lineno}, column {exc.colno}: invalid JSON") from None
        if not isinstance(results, dict) or "latency" not in results:
            raise EdgeclinError(f"{path} is not an edgeclin bench results.json")
        return results

    a, b = load(first), load(second)
    lines = [f"# {second} vs {first} (ratio > 1: the second is faster)", "",
             "| variant | setting | first | second | ratio |", "|---|---|---:|---:|---:|"]

    def keyed(results, kind):
        if kind == "latency":
            return {(r["variant"], f"{r['threads']} thr, batch {r['batch']}, {r['seq_len']} tok"): r["p50_ms"]
                    for r in results["latency"] if "p50_ms" in r}
        return {(r["variant"], "end to end texts/s"): r["texts_per_s"]
                for r in results["end_to_end"] if "texts_per_s" in r}

    shared = 0
    for kind in ("latency", "end_to_end"):
        ka, kb = keyed(a, kind), keyed(b, kind)
        for key in ka.keys() & kb.keys():
            shared += 1
            ratio = ka[key] / kb[key] if kind == "latency" else kb[key] / ka[key]
            unit = "ms" if kind == "latency" else "texts/s"
            lines.append(f"| {key[0]} | {key[1]} | {ka[key]:.2f} {unit} | {kb[key]:.2f} {unit} | {ratio:.2f}x |")
    if not shared:
        raise EdgeclinError(f"{first} and {second} share no measurement (different variants or settings)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # the fresh process of measure_end_to_end
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
