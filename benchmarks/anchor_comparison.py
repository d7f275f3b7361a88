"""edgeclin's bundle against what a user would otherwise run, in one run, on the same model and texts.

(a) the `transformers` pipeline in PyTorch fp32 — what most users run today;
(b) optimum's default: ``ORTModelForSequenceClassification.from_pretrained(export=True)`` then
    ``ORTQuantizer`` with ``AutoQuantizationConfig.<isa>(is_static=False)``, run through a pipeline;
(c) edgeclin's bundle through ``edgeclin predict``'s runtime (``--backend``, default ``auto``).

Latency: batch 1, ``--latency-tokens`` tokens, 1 thread, p50 over ``--runs`` interleaved runs after
warm-up. Throughput: the whole test split end to end at ``--max-length`` tokens with all threads,
each variant once in turn, tokenisation included; the macro-F1 of each variant on the same texts.

    .venv/bin/python benchmarks/anchor_comparison.py RUN_OR_MERGED BUNDLE --data ../shared/data/mtsamples

The model folder must be a plain (merged) model for (a) and (b): pass ``edgeclin merge``'s output.
Writes benchmarks/results/anchor_comparison.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgeclin import runtime  # noqa: E402
from edgeclin.bench import synthetic_feed  # noqa: E402
from edgeclin.data import Columns, load_dataset  # noqa: E402
from edgeclin.hardware import cpu_features, environment  # noqa: E402
from edgeclin.metrics import classification_metrics  # noqa: E402
from edgeclin.provenance import git_commit, library_versions  # noqa: E402
from edgeclin.timing import time_interleaved  # noqa: E402


def optimum_default(model_dir: Path, work: Path, isa: str):
    """optimum's documented path: export=True, then the ISA preset's dynamic quantisation."""
    from optimum.onnxruntime import ORTModelForSequenceClassification, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    exported = ORTModelForSequenceClassification.from_pretrained(model_dir, export=True)
    exported.save_pretrained(work / "fp32")
    quantizer = ORTQuantizer.from_pretrained(work / "fp32")
    quantizer.quantize(save_dir=work / "int8", quantization_config=getattr(AutoQuantizationConfig, isa)(
        is_static=False))
    return ORTModelForSequenceClassification.from_pretrained(work / "int8", file_name="model_quantized.onnx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="merged model folder (or a full fine-tune run)")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--latency-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--backend", default="auto", choices=("auto", *runtime.BACKENDS),
                        help="auto: what export measured fastest at equal accuracy on this kind of CPU")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    examples = load_dataset(args.data, columns=Columns(), check=False).splits["test"].examples
    texts = [e.text for e in examples]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    torch_model = AutoModelForSequenceClassification.from_pretrained(args.model).eval()
    labels = [torch_model.config.id2label[i] for i in range(torch_model.config.num_labels)]
    work = Path(tempfile.mkdtemp(prefix="anchor-"))
    isa = cpu_features().int8_preset
    ort_model = optimum_default(args.model, work, isa)
    bundle_1 = runtime.load(args.bundle, threads=1, backend=args.backend)
    bundle_all = runtime.load(args.bundle, threads=os.cpu_count(), backend=args.backend)
    # the label says what "auto" resolved to on this machine
    args.backend = f"{args.backend}: {bundle_1.backend} {bundle_1.model_path.name}" if args.backend == "auto" \
        else args.backend

    # --- latency, batch 1, interleaved, 1 thread
    feed = synthetic_feed(1, args.latency_tokens, tokenizer.vocab_size, ["input_ids", "attention_mask",
                                                                       "token_type_ids"])
    torch_feed = {k: torch.from_numpy(v) for k, v in feed.items()}
    bundle_feed = {k: feed[k] for k in bundle_1.input_names}
    torch.set_num_threads(1)
    ort_model_1 = optimum_session_threads(ort_model, work, 1)

    def run_torch():
        with torch.inference_mode():
            torch_model(**torch_feed)

    def run_optimum():
        ort_model_1(**torch_feed)

    def run_bundle():
        bundle_1.engine(bundle_feed)

    candidates = {"transformers pytorch fp32": run_torch, f"optimum int8 ({isa} dynamic)": run_optimum,
                  f"edgeclin bundle ({args.backend})": run_bundle}
    times = time_interleaved(candidates, args.warmup, args.runs)
    latency = {name: float(np.median(t)) for name, t in times.items()}

    # --- end to end throughput and accuracy, all threads
    torch.set_num_threads(os.cpu_count())
    label2id = {label: i for i, label in enumerate(labels)}
    gold = [label2id[e.label] for e in examples]
    results = {}
    pipe_kwargs = {"truncation": True, "max_length": args.max_length, "batch_size": args.batch_size, "top_k": None}
    for name, model in (("transformers pytorch fp32", torch_model), (f"optimum int8 ({isa} dynamic)", ort_model)):
        classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
        classify(texts[:4], **pipe_kwargs)
        start = time.perf_counter()
        outputs = classify(texts, **pipe_kwargs)
        seconds = time.perf_counter() - start
        probs = np.array([[next(o["score"] for o in out if o["label"] == label) for label in labels]
                          for out in outputs])
        results[name] = {"texts_per_s": len(texts) / seconds, **classification_metrics(gold, probs)}
    bundle_all.max_length = args.max_length
    bundle_all.predict(texts[:4])
    start = time.perf_counter()
    probs = bundle_all.predict(texts, batch_size=args.batch_size).probabilities
    seconds = time.perf_counter() - start
    results[f"edgeclin bundle ({args.backend})"] = {"texts_per_s": len(texts) / seconds,
                                                    **classification_metrics(gold, probs)}
    shutil.rmtree(work, ignore_errors=True)

    base_latency, base_tput = latency["transformers pytorch fp32"], results["transformers pytorch fp32"]["texts_per_s"]
    rows = [{"variant": name, "p50_ms": latency[name], "latency_speedup": base_latency / latency[name],
             "texts_per_s": results[name]["texts_per_s"],
             "throughput_speedup": results[name]["texts_per_s"] / base_tput,
             "macro_f1": results[name]["macro_f1"], "accuracy": results[name]["accuracy"]} for name in candidates]
    env = {**environment(), "versions": library_versions(), "git_commit": git_commit()}
    command = "python benchmarks/anchor_comparison.py " + " ".join(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "anchor_comparison.json").write_text(json.dumps({"rows": rows, "environment": env,
                                                                 "command": command}, indent=2) + "\n")
    lines = [f"| variant | p50 ms, batch 1, {args.latency_tokens} tokens, 1 thread | speed-up | "
             f"texts/s, test split, {args.max_length} tokens, {os.cpu_count()} threads | speed-up | macro-F1 |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['p50_ms']:.1f} | {r['latency_speedup']:.2f}x | "
                     f"{r['texts_per_s']:.1f} | {r['throughput_speedup']:.2f}x | {100 * r['macro_f1']:.1f} |")
    table = "\n".join(lines)
    (args.out / "anchor_comparison.md").write_text(f"{table}\n\nCommand: `{command}`\n\nEnvironment: {env['cpu']}, "
                                                   f"ISA {', '.join(env['isa'])}, {env['cores']} cores\n")
    print(table)


def optimum_session_threads(model, work: Path, threads: int):
    """The same optimum int8 model with a 1-thread session, for the latency column."""
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForSequenceClassification

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ORTModelForSequenceClassification.from_pretrained(work / "int8", file_name="model_quantized.onnx",
                                                             session_options=options)


if __name__ == "__main__":
    main()
