"""Which ONNX variant and runtime is fastest on this CPU? Every candidate the bench issue names.

Candidates (one merged fine-tuned model, the same synthetic batch-1 input, one thread, all
interleaved; median of ``--runs`` after ``--warmup``):

- onnxruntime: fp32; dynamic int8 (the bundle's default, per-channel); onnxruntime's transformer
  fusions + dynamic int8; calibrated static int8 (QDQ, MatMul only);
- OpenVINO: the fp32 graph in f32 and in bf16 (the issue's AMX path); the dynamic-int8 graph; the
  static QDQ graph (OpenVINO runs QDQ with its own int8 kernels).

Accuracy is not measured here (``edgeclin export`` gates each variant it writes); this script
answers only "could anything beat the bundle's default on this CPU?".

    .venv/bin/python benchmarks/backend_candidates.py runs/mtsamples-lora-merged --data ../shared/data/mtsamples
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeclin.data import Columns, load_dataset  # noqa: E402
from edgeclin.encoding import encode_texts, pad_arrays  # noqa: E402
from edgeclin.export import export_onnx, optimize_onnx  # noqa: E402
from edgeclin.hardware import cpu_features  # noqa: E402
from edgeclin.provenance import library_versions  # noqa: E402
from edgeclin.quantization import DynamicInt8, StaticQdqInt8  # noqa: E402
from edgeclin.timing import time_interleaved  # noqa: E402


def quantize_fused(optimized: Path, out: Path) -> Path:
    """Dynamic int8 of a fused graph (optimum's quantizer cannot type the fused Attention outputs)."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    ort_quantize_dynamic(str(optimized), str(out), per_channel=True, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="merged (plain) fine-tuned model folder")
    parser.add_argument("--data", type=Path, required=True, help="data folder: calibration texts from train")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import onnxruntime as ort
    from tokenizers import Tokenizer

    work = Path(tempfile.mkdtemp(prefix="candidates-"))
    fp32 = export_onnx(args.model, work / "onnx")
    isa = cpu_features().int8_preset
    DynamicInt8(isa, "all", True).apply(fp32, work / "dyn.onnx", lambda count: [])
    files = {"fp32": fp32, "int8 dynamic": work / "dyn.onnx"}
    files["fused + int8 dynamic"] = quantize_fused(optimize_onnx(fp32, work / "opt.onnx")[0], work / "optq.onnx")
    tokenizer = Tokenizer.from_file(str(work / "onnx" / "tokenizer.json"))
    texts = [e.text for e in load_dataset(args.data, columns=Columns(), check=False).splits["train"].examples[:64]]
    ids, types, _ = encode_texts(tokenizer, texts, None, 256)
    names = [i.name for i in ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()]
    calibration = [{k: v for k, v in pad_arrays(ids[s:s + 8], types[s:s + 8], 0).items() if k in names}
                   for s in range(0, len(ids), 8)]
    StaticQdqInt8(isa, len(texts), per_channel=True).apply(fp32, work / "qdq.onnx", lambda count: calibration)
    files["int8 static QDQ"] = work / "qdq.onnx"

    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(1000, 20000, (1, args.tokens)).astype(np.int64),
            "attention_mask": np.ones((1, args.tokens), np.int64),
            "token_type_ids": np.zeros((1, args.tokens), np.int64)}
    feed = {k: v for k, v in feed.items() if k in names}

    def onnxruntime_runner(path: Path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda: session.run(None, feed)

    candidates = {f"onnxruntime {name}": onnxruntime_runner(path) for name, path in files.items()}
    try:
        import openvino as ov

        core = ov.Core()

        def openvino_runner(path: Path, precision: str):
            compiled = core.compile_model(core.read_model(str(path)), "CPU", {
                "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY"})
            request = compiled.create_infer_request()
            return lambda: request.infer(feed)

        candidates["openvino fp32 (f32)"] = openvino_runner(fp32, "f32")
        if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            candidates["openvino fp32 (bf16 hint)"] = openvino_runner(fp32, "bf16")
        candidates["openvino int8 dynamic graph"] = openvino_runner(files["int8 dynamic"], "f32")
        candidates["openvino int8 static QDQ"] = openvino_runner(files["int8 static QDQ"], "f32")
        openvino_version = ov.get_version()
    except ImportError:
        openvino_version = None

    times = time_interleaved(candidates, args.warmup, args.runs)
    baseline = float(np.median(times["onnxruntime int8 dynamic"]))
    rows = [{"candidate": name, "p50_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
             "vs_bundle_default": baseline / float(np.median(t))} for name, t in times.items()]
    environment = {"cpu": cpu_features().model, "isa": cpu_features().isa,
                   "threads": 1, "python": platform.python_version(), "versions": library_versions(),
                   "openvino": openvino_version, "tokens": args.tokens, "runs": args.runs, "warmup": args.warmup,
                   "model": str(args.model), "command": " ".join(sys.argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "backend_candidates.json").write_text(json.dumps({"environment": environment, "rows": rows},
                                                                 indent=2) + "\n")
    lines = [f"Batch 1, {args.tokens} tokens, 1 thread, p50 of {args.runs} interleaved runs after {args.warmup} "
             f"warm-ups; {environment['cpu']} ({', '.join(environment['isa'])}).", "",
             "| candidate | p50 ms | p90 ms | speed vs bundle default (onnxruntime int8 dynamic) |",
             "|---|---:|---:|---:|"]
    lines += [f"| {r['candidate']} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['vs_bundle_default']:.2f}x |"
              for r in sorted(rows, key=lambda r: r["p50_ms"])]
    (args.out / "backend_candidates.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
