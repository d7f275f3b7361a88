"""edgeclin's default bundle against what a user would otherwise run: same model, same notes, same CPU.

(a) PyTorch fp32: the merged model through a ``transformers`` pipeline (batch 8);
(b) optimum's default: ``ORTModelForSequenceClassification.from_pretrained(export=True)``, then
    ``ORTQuantizer`` with ``AutoQuantizationConfig.<isa>(is_static=False)``, through a pipeline (batch 8);
(c) edgeclin's bundle through ``edgeclin predict``'s runtime and default backend (``auto``).

Protocol (../shared/BENCHMARKING.md): every measurement of every variant runs in a fresh process,
the variants alternated over ``--rounds``; medians with min-max. Latency: batch 1, one thread, a real
test note of about ``--latency-tokens`` tokens, tokenisation included, p50 of ``--runs`` calls after
warm-up. End to end: the whole test split at the bundle's max length on all cores, tokenisation,
batching and padding included; the macro-F1 of the same run.

    .venv/bin/python benchmarks/anchor_comparison.py MERGED_MODEL BUNDLE --data ../shared/data/mtsamples

Writes benchmarks/results/anchor_comparison.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VARIANTS = ("pytorch fp32", "optimum int8", "edgeclin bundle")


# ----------------------------------------------------------------- the fresh-process side


def _examples(data: Path):
    from edgeclin.data import load_dataset
    from edgeclin.schema import Columns

    return load_dataset(data, columns=Columns(), check=False).splits["test"].examples


def _latency_note(texts: list[str], tokenizer, tokens: int) -> str:
    """The test note whose length is nearest ``tokens`` (cut to it if every note is longer)."""
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    best = min(range(len(texts)), key=lambda i: abs(lengths[i] - tokens))
    ids = tokenizer(texts[best], truncation=True, max_length=tokens)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True)


def _time(call, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append(1000 * (time.perf_counter() - start))
    return float(np.median(samples))


def _hf_model(spec: dict, threads: int | None):
    """The model of variant (a) or (b) and its tokenizer, with ``threads`` (None: all cores)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    if spec["variant"] == "pytorch fp32":
        torch.set_num_threads(threads or os.cpu_count())
        return AutoModelForSequenceClassification.from_pretrained(spec["model"]).eval(), tokenizer
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForSequenceClassification

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ORTModelForSequenceClassification.from_pretrained(spec["optimum"], file_name="model_quantized.onnx",
                                                             session_options=options), tokenizer


def _hf_run(spec: dict, texts: list[str], labels_of) -> dict:
    import torch
    from transformers import pipeline

    threads = 1 if spec["measure"] == "latency" else None
    model, tokenizer = _hf_model(spec, threads)
    if spec["measure"] == "latency":
        note = _latency_note(texts, tokenizer, spec["latency_tokens"])

        def call():
            with torch.inference_mode():
                model(**tokenizer([note], return_tensors="pt"))

        return {"p50_ms": _time(call, spec["warmup"], spec["runs"])}
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
    options = {"truncation": True, "max_length": spec["max_length"], "batch_size": 8, "top_k": None}
    classify(texts[:8], **options)
    start = time.perf_counter()
    outputs = classify(texts, **options)
    seconds = time.perf_counter() - start
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    probs = np.array([[next(o["score"] for o in out if o["label"] == label) for label in labels] for out in outputs])
    return {"texts_per_s": len(texts) / seconds, **labels_of(labels, probs)}


def _bundle_run(spec: dict, texts: list[str], labels_of) -> dict:
    from edgeclin import runtime

    threads = 1 if spec["measure"] == "latency" else None
    model = runtime.load(spec["bundle"], threads=threads)
    out = {"engine": model.describe(), "choice": model.choice}
    if spec["measure"] == "latency":
        from transformers import AutoTokenizer

        note = _latency_note(texts, AutoTokenizer.from_pretrained(spec["model"]), spec["latency_tokens"])
        return {**out, "p50_ms": _time(lambda: model.predict([note]), spec["warmup"], spec["runs"])}
    model.predict(texts[:8])
    start = time.perf_counter()
    probs = model.predict(texts).probabilities
    seconds = time.perf_counter() - start
    return {**out, "texts_per_s": len(texts) / seconds, **labels_of(model.labels, probs)}


def worker(spec: dict) -> dict:
    from edgeclin.hardware import peak_rss_mb
    from edgeclin.metrics import classification_metrics

    examples = _examples(Path(spec["data"]))
    texts = [e.text for e in examples]

    def labels_of(labels: list[str], probs) -> dict:
        m = classification_metrics(np.array([labels.index(e.label) for e in examples]), probs)
        return {"macro_f1": m["macro_f1"], "accuracy": m["accuracy"]}

    run = _bundle_run if spec["variant"] == "edgeclin bundle" else _hf_run
    return {**run(spec, texts, labels_of), "peak_rss_mb": peak_rss_mb()}


# ----------------------------------------------------------------- the orchestrating side


def optimum_default(model_dir: Path, work: Path, isa: str) -> Path:
    """optimum's documented path: export=True, then the ISA preset's dynamic quantisation."""
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    ORTModelForSequenceClassification.from_pretrained(model_dir, export=True).save_pretrained(work / "fp32")
    quantizer = ORTQuantizer.from_pretrained(work / "fp32")
    quantizer.quantize(save_dir=work / "int8", quantization_config=getattr(AutoQuantizationConfig, isa)(
        is_static=False))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (model_dir / name).exists():
            shutil.copy(model_dir / name, work / "int8" / name)
    return work / "int8"


def measure(spec: dict) -> dict:
    threads = "1" if spec["measure"] == "latency" else str(os.cpu_count())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{spec['variant']} {spec['measure']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(samples: list[dict], key: str) -> dict:
    values = [s[key] for s in samples]
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}


def sizes(bundle: Path, model: Path) -> dict:
    """Bytes the chosen engine loads, the whole bundle, and the fp32 weights they come from."""
    from edgeclin import runtime
    from edgeclin.artifacts import BundleManifest

    loaded = runtime.load(bundle, threads=1)
    manifest = BundleManifest.read(bundle)
    graph = manifest.graphs.get(loaded.model_path.name, {}).get("files", [loaded.model_path.name])
    fp32 = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    engine = sum((bundle / f).stat().st_size for f in graph)
    whole = sum(entry["bytes"] for entry in manifest.files.values())
    return {"engine_files": graph, "engine_bytes": engine, "bundle_bytes": whole, "fp32_weights_bytes": fp32,
            "engine_vs_fp32": engine / fp32, "bundle_vs_fp32": whole / fp32}


def table(results: dict, args, env: dict) -> str:
    base, anchor = results["pytorch fp32"], results["optimum int8"]
    lines = [f"CPU: {env['cpu']}; ISA: {', '.join(env['isa'])}; {env['cores']} cores. Each measurement a fresh "
             f"process, variants alternated over {args.rounds} rounds; medians [min-max].", "",
             f"| variant | batch 1 p50 ms ({args.latency_tokens}-token note, 1 thread) | vs PyTorch | vs optimum | "
             "end to end texts/s (all cores) | vs PyTorch | vs optimum | macro-F1 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in VARIANTS:
        r = results[name]
        lat, tput = r["latency"], r["end_to_end"]
        label = name + (f" ({r['engine']})" if r.get("engine") else "")
        lines.append(f"| {label} | {lat['median']:.1f} [{lat['min']:.1f}-{lat['max']:.1f}] | "
                     f"{base['latency']['median'] / lat['median']:.2f}x | "
                     f"{anchor['latency']['median'] / lat['median']:.2f}x | "
                     f"{tput['median']:.1f} [{tput['min']:.1f}-{tput['max']:.1f}] | "
                     f"{tput['median'] / base['end_to_end']['median']:.2f}x | "
                     f"{tput['median'] / anchor['end_to_end']['median']:.2f}x | {100 * r['macro_f1']:.1f} |")
    s = results["sizes"]
    lines += ["", f"Files the chosen engine loads ({', '.join(s['engine_files'])}): {s['engine_bytes'] / 1e6:.1f} MB = "
              f"{s['engine_vs_fp32']:.2f}x the fp32 weights; the whole bundle {s['bundle_bytes'] / 1e6:.1f} MB = "
              f"{s['bundle_vs_fp32']:.2f}x.", "", f"Engine choice: {results['edgeclin bundle'].get('choice')}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, nargs="?", help="merged model folder (or a full fine-tune run)")
    parser.add_argument("bundle", type=Path, nargs="?")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    run(args)


def run(args) -> None:
    from edgeclin.artifacts import BundleManifest
    from edgeclin.hardware import cpu_features, environment
    from edgeclin.provenance import git_commit, library_versions

    work = Path(tempfile.mkdtemp(prefix="anchor-"))
    try:
        optimum = optimum_default(args.model, work, cpu_features().int8_preset)
        common = {"model": str(args.model), "bundle": str(args.bundle), "optimum": str(optimum), "data": str(args.data),
                  "max_length": BundleManifest.read(args.bundle).input.max_length,
                  "latency_tokens": args.latency_tokens, "runs": args.runs, "warmup": args.warmup}
        samples = {name: {"latency": [], "end_to_end": []} for name in VARIANTS}
        for round_ in range(args.rounds):
            for measure_name in ("latency", "end_to_end"):
                for name in VARIANTS:  # alternated: A B C A B C ...
                    samples[name][measure_name].append(measure({**common, "variant": name, "measure": measure_name}))
                    print(f"round {round_ + 1}: {name} {measure_name} done", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {name: {"latency": summarise(s["latency"], "p50_ms"),
                      "end_to_end": summarise(s["end_to_end"], "texts_per_s"),
                      "macro_f1": s["end_to_end"][0]["macro_f1"], "engine": s["latency"][0].get("engine"),
                      "choice": s["latency"][0].get("choice"), "samples": s} for name, s in samples.items()}
    results["sizes"] = sizes(args.bundle, args.model)
    env = {**environment(), "versions": library_versions(), "git_commit": git_commit()}
    command = "python benchmarks/anchor_comparison.py " + " ".join(sys.argv[1:])
    text = table(results, args, env)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "anchor_comparison.json").write_text(json.dumps({"results": results, "environment": env,
                                                                 "command": command}, indent=2) + "\n")
    (args.out / "anchor_comparison.md").write_text(f"# edgeclin against its anchors\n\n{text}\n\nCommand: "
                                                   f"`{command}`\n")
    print(text)


if __name__ == "__main__":
    main()
