"""``edgeclin export``: a run (or merged / HF folder) -> a checked, self-describing ONNX bundle.

Each step is one small function, usable on its own:

1. ``merge`` an adapter first (LoRA models exported unmerged are wrong: peft #670, #901);
2. ``export_onnx``: optimum-onnx's exporter, dynamic batch and sequence axes;
3. ``optimize_onnx`` (``--optimize``): onnxruntime's transformer fusions;
4. ``quantize_dynamic`` / ``quantize_static`` (``--int8``): int8 with the CPU's preset;
5. ``evaluate`` every variant with the task metric, and gate int8 on its drop against fp32
   (optimum's own export check only warns: optimum #978);
6. ``write_bundle``: files, manifest with checksums, renamed into place only when complete.
"""

from __future__ import annotations

import functools
import platform
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeclin import runs
from edgeclin.errors import EdgeclinError
from edgeclin.merge import (
    RunFolder,
    check_mergeable,
    load_torch_model,
    max_difference,
    merge,
    open_model_folder,
    run_examples,
    torch_logits,
)
from edgeclin.runtime import BUNDLE_FORMAT, FP32_MODEL_FILE, MANIFEST, MODEL_FILE, Classifier, Tagger, sha256_of
from edgeclin.runtime import evaluate as evaluate_onnx
from edgeclin.tasks import DISPLAY_COLUMNS, EXPORT_TASK, SELECTION_METRIC, SINGLE_LABEL, TOKEN, scores_from_logits

ISAS = ("avx2", "avx512", "avx512_vnni", "arm64")
QUANTIZE_OPS = {
    # optimum's default dynamic op set: Gather too, i.e. the embedding table (half a MiniLM's bytes)
    "all": None,
    "matmul": ["MatMul", "Attention"],
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spm.model")
EXPORT_TOLERANCE = 1e-3  # fp32 ONNX vs PyTorch, max difference of any class probability


def detect_isa() -> str:
    """The quantisation preset that fits this CPU (onnxruntime #6695: the wrong one is slower)."""
    from edgeclin.hardware import cpu_flags

    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    flags = cpu_flags()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def export_onnx(model_dir: Path, out_dir: Path, opset: int | None = None, task: str = SINGLE_LABEL) -> Path:
    """Export with optimum-onnx (dynamic batch/sequence axes); returns the .onnx path."""
    from optimum.exporters.onnx import main_export

    # optimum's validation only warns on mismatches; the task-metric gate below is the check
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about constants are expected and harmless
        main_export(str(model_dir), output=out_dir, task=EXPORT_TASK[task], opset=opset, do_validation=False,
                    local_files_only=True, trust_remote_code=False)
    return out_dir / MODEL_FILE


def optimize_onnx(onnx_path: Path, out_path: Path, model_config: dict) -> Path:
    """onnxruntime's transformer optimiser: attention, LayerNorm and GELU fusions."""
    from onnxruntime.transformers.optimizer import optimize_model

    heads = model_config.get("num_attention_heads") or model_config.get("n_heads") or 0
    hidden = model_config.get("hidden_size") or model_config.get("dim") or 0
    optimized = optimize_model(str(onnx_path), model_type="bert", num_heads=heads, hidden_size=hidden,
                               opt_level=1, use_gpu=False)
    optimized.save_model_to_file(str(out_path))
    return out_path


def quantize_dynamic(onnx_path: Path, out_path: Path, isa: str, quantize: str, per_channel: bool) -> Path:
    """Dynamic int8 through optimum's ``ORTQuantizer`` with the ISA's preset."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    preset = getattr(AutoQuantizationConfig, isa)
    qconfig = preset(is_static=False, per_channel=per_channel, operators_to_quantize=QUANTIZE_OPS[quantize])
    with tempfile.TemporaryDirectory(dir=out_path.parent) as scratch:
        quantizer = ORTQuantizer.from_pretrained(onnx_path.parent, file_name=onnx_path.name)
        quantizer.quantize(save_dir=scratch, quantization_config=qconfig, file_suffix="int8")
        produced = next(Path(scratch).glob("*int8.onnx"))
        shutil.move(str(produced), out_path)
    return out_path


def quantize_static(onnx_path: Path, out_path: Path, calibration: list[dict], per_channel: bool) -> Path:
    """Calibrated static int8 (QDQ) on MatMul only.

    LayerNorm, GELU, Softmax and the residual Adds stay in float: quantising them is what makes
    static int8 lose accuracy on transformers (optimum #151, onnxruntime #8770).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self):
            return next(self.batches, None)

    ort_quantize_static(
        str(onnx_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        # a model fused by the optimiser otherwise fails with "Unable to find data type for weight_name"
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return out_path


@dataclass
class Variant:
    name: str
    path: Path
    settings: dict
    metrics: dict = field(default_factory=dict)
    drop: float | None = None  # gate-metric points lost against fp32 ONNX
    passed: bool | None = None

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def evaluate(model: Classifier | Tagger, examples: list) -> tuple[dict, list]:
    """Metrics of an ONNX variant on labelled examples, and its probabilities per row.

    Probabilities are per class for classification, per word piece and tag for NER: what
    ``source_predictions`` gives for the PyTorch model, to compare the two.
    """
    if model.task != TOKEN:
        metrics, probabilities = evaluate_onnx(model, examples)
        return metrics, list(probabilities)
    from edgeclin.encoding import encode_words
    from edgeclin.metrics import task_metrics
    from edgeclin.tasks import word_tags

    # one run of the model: the piece probabilities give the word tags and the export check alike
    ids, types, word_ids, _ = encode_words(model.tokenizer, [list(e.tokens) for e in examples], model.max_length)
    probabilities = [scores_from_logits(TOKEN, row) for row in model._run_sorted(ids, types, 32)]
    tags = [word_tags(p, w, len(e.tokens), model.labels)
            for p, w, e in zip(probabilities, word_ids, examples, strict=True)]
    return task_metrics(TOKEN, examples, tags, model.labels), probabilities


def source_predictions(run: RunFolder, examples: list) -> tuple[dict, list]:
    """The PyTorch model's metrics and probabilities per row (fp32, unmerged adapter if any)."""
    from edgeclin.encoding import encode_examples
    from edgeclin.metrics import task_metrics
    from edgeclin.models import load_tokenizer
    from edgeclin.tasks import word_tags

    tokenizer = load_tokenizer(str(run.path))
    label2id = {label: i for i, label in enumerate(run.labels)}
    config = run.config
    encoded = encode_examples(tokenizer, examples, label2id, config.get("max_length", 256),
                              config.get("truncation", "head"), run.task)
    logits = torch_logits(load_torch_model(run), encoded, tokenizer.pad_token_id or 0,
                          "token_type_ids" in tokenizer.model_input_names)
    probabilities = [scores_from_logits(run.task, row) for row in logits]
    if run.task == TOKEN:
        tags = [word_tags(p, w, len(e.tokens), run.labels)
                for p, w, e in zip(probabilities, encoded.word_ids, examples, strict=True)]
        return task_metrics(TOKEN, examples, tags, run.labels), probabilities
    return task_metrics(run.task, examples, np.stack(probabilities), run.labels, run.threshold), probabilities


def int8_candidates(quantize: str, per_channel: bool) -> list[dict]:
    """The requested setting first, then the others; none is assumed safer (PITFALLS 6)."""
    order = [(quantize, per_channel)] + [(q, p) for q in ("all", "matmul") for p in (False, True)]
    return [{"quantize": q, "per_channel": p} for q, p in dict.fromkeys(order)]


def _print_table(variants: list[Variant], source: dict | None, fp32_size: int, task: str) -> None:
    from rich.console import Console
    from rich.table import Table

    gate_metric = SELECTION_METRIC[task]
    shown = [(key, heading) for key, heading in DISPLAY_COLUMNS[task] if key == gate_metric]
    shown += [c for c in DISPLAY_COLUMNS[task] if c[0] != gate_metric][:1]

    def pct(metrics: dict, key: str) -> str:
        return "n/a" if metrics.get(key) is None else f"{100 * metrics[key]:.1f}"

    table = Table(title=f"export gate ({gate_metric.replace('_', '-')}, points)")
    for column in ("variant", *(h for _, h in shown), "size MB", "size vs fp32", "drop", "gate"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    if source:
        table.add_row("pytorch fp32 (source)", *(pct(source, k) for k, _ in shown), "", "", "", "")
    for v in variants:
        gate = "" if v.passed is None else ("pass" if v.passed else "FAIL")
        table.add_row(v.name, *(pct(v.metrics, k) for k, _ in shown),
                      f"{v.size / 1e6:.1f}", f"{v.size / fp32_size:.2f}x",
                      "" if v.drop is None else f"{v.drop:+.2f}", gate)
    Console(stderr=True, width=120).print(table)


@dataclass
class ExportResult:
    bundle: Path
    manifest: dict


def export(
    source: str | Path,
    output: str | Path | None = None,
    *,
    int8: bool = False,
    optimize: bool = False,
    opset: int | None = None,
    quantize: str = "all",
    per_channel: bool = False,
    isa: str = "auto",
    static: bool = False,
    calibration: int = 300,
    max_drop: float = 1.0,
    force: bool = False,
    eval_data: str | Path | None = None,
    openvino_fp32: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
) -> ExportResult:
    """Export a run, merged folder or HF classifier folder to a gated ONNX bundle."""
    run = open_model_folder(source)
    if run.is_adapter:
        check_mergeable(run)
    output = Path(output) if output else Path("export") / run.name
    if output.exists() and not overwrite:
        raise EdgeclinError(f"bundle folder {output} already exists (use --overwrite to replace it)")
    if calibration < 1:
        raise EdgeclinError("--calibration must be at least 1")
    if quantize not in QUANTIZE_OPS:
        raise EdgeclinError(f"--quantize must be one of {', '.join(QUANTIZE_OPS)}")
    isa = detect_isa() if isa == "auto" else isa
    if isa not in ISAS:
        raise EdgeclinError(f"--isa must be auto or one of {', '.join(ISAS)}")
    task, gate_metric = run.task, SELECTION_METRIC[run.task]
    test_examples = run_examples(run, "test", eval_data)  # fails early if the data is missing
    if not test_examples:
        raise EdgeclinError("no test examples with known labels to check the export against")

    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr)

    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        timings: dict[str, float] = {}
        start = time.perf_counter()
        model_dir = run.path
        if run.is_adapter:
            say("merging the adapter (fp32, verified against the unmerged model) ...")
            model_dir = merge(run.path, work / "merged", eval_data=eval_data)
        timings["merge_s"] = time.perf_counter() - start
        say("exporting to ONNX ...")
        start = time.perf_counter()
        onnx_dir = work / "onnx"
        fp32_path = export_onnx(model_dir, onnx_dir, opset, task)
        model_config = runs.read_json(model_dir / "config.json")
        timings["export_s"] = time.perf_counter() - start
        config = run.config
        max_length = int(config.get("max_length", min(512, model_config.get("max_position_embeddings", 512))))
        tokenizer_json = onnx_dir / "tokenizer.json"
        if not tokenizer_json.exists():
            raise EdgeclinError(f"{model_dir} has no fast tokenizer (tokenizer.json); edgeclin needs one")
        pad_id = _pad_token_id(onnx_dir)

        def classifier(path: Path) -> Classifier | Tagger:
            kwargs = dict(max_length=max_length, truncation=config.get("truncation", "head"), pad_token_id=pad_id,
                          vocab_size=model_config.get("vocab_size"), text_pair=bool(config.get("text_pair_col")))
            if task == TOKEN:
                return Tagger(path, tokenizer_json, run.labels, **kwargs)
            return Classifier(path, tokenizer_json, run.labels, task=task, threshold=run.threshold, **kwargs)

        say(f"evaluating on {len(test_examples)} test examples ...")
        start = time.perf_counter()
        source, source_probabilities = source_predictions(run, test_examples)
        recorded = _recorded_test_metric(run, gate_metric) if eval_data is None else None
        if recorded is not None and abs(recorded - source[gate_metric]) > 0.02:
            # a reloaded model that scores unlike the run did has lost something (its head: peft #577)
            say(f"warning: the reloaded model scores {gate_metric} {100 * source[gate_metric]:.1f} on the test "
                f"split, the run recorded {100 * recorded:.1f}")
        fp32 = Variant("onnx fp32", fp32_path, {"quantization": None})
        fp32.metrics, fp32_probabilities = evaluate(classifier(fp32_path), test_examples)
        export_error = max_difference(fp32_probabilities, source_probabilities)
        if not export_error <= EXPORT_TOLERANCE:  # optimum's own check only warns (optimum #978)
            raise EdgeclinError(f"the fp32 ONNX model differs from the PyTorch model by {export_error:.2e} in "
                                f"probability on the test split (tolerance {EXPORT_TOLERANCE:.0e}); no bundle written")
        variants = [fp32]
        base = fp32
        if optimize:
            optimized = Variant("onnx fp32 optimized", optimize_onnx(fp32_path, work / "optimized.onnx",
                                                                    model_config), {"optimized": True})
            optimized.metrics, _ = evaluate(classifier(optimized.path), test_examples)
            optimized.drop = 100 * (fp32.metrics[gate_metric] - optimized.metrics[gate_metric])
            optimized.passed = optimized.drop <= max_drop
            variants.append(optimized)
            if optimized.passed:
                base = optimized
        chosen = base
        if int8:
            candidates = int8_candidates(quantize, per_channel)
            if static:
                candidates.insert(0, {"static": True, "calibration": calibration, "per_channel": per_channel})
            chosen = None
            for i, settings in enumerate(candidates):
                path = work / f"int8-{i}.onnx"
                if settings.get("static"):
                    name = f"int8 static QDQ MatMul ({calibration} calibration texts)"
                    batches = _calibration_batches(run, classifier(base.path), calibration, eval_data)
                    quantize_static(base.path, path, batches, per_channel)
                else:
                    name = (f"int8 dynamic {isa} {settings['quantize']} "
                            f"{'per-channel' if settings['per_channel'] else 'per-tensor'}")
                    quantize_dynamic(base.path, path, isa, settings["quantize"], settings["per_channel"])
                variant = Variant(name, path, {"isa": isa, "mode": "static" if settings.get("static") else "dynamic",
                                               **settings})
                variant.metrics, _ = evaluate(classifier(path), test_examples)
                variant.drop = 100 * (fp32.metrics[gate_metric] - variant.metrics[gate_metric])
                variant.passed = variant.drop <= max_drop
                variants.append(variant)
                say(f"  {name}: {gate_metric} {100 * variant.metrics[gate_metric]:.1f} "
                    f"({variant.drop:+.2f} points) {'pass' if variant.passed else 'FAIL'}")
                if variant.passed:
                    chosen = variant
                    break
        timings["evaluate_s"] = time.perf_counter() - start
        if not quiet:
            _print_table(variants, source, fp32.size, task)
        if chosen is None:
            if not force:
                raise EdgeclinError(f"every int8 setting lost more than {max_drop} {gate_metric} points; "
                                    "no bundle written (--force writes the requested one anyway, "
                                    "--max-drop changes the limit)")
            chosen = variants[2 if optimize else 1]
            say(f"--force: writing {chosen.name} although it failed the gate")
        manifest = {
            "format_version": BUNDLE_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "task": task,
            "source": {"path": str(run.path.resolve()), "kind": "adapter run" if run.is_adapter else
                       ("run" if run.record else "model folder"), "method": config.get("method"),
                       "model": config.get("model"), "git_commit": (run.record or {}).get("git_commit")},
            "labels": run.labels,
            **({"threshold": run.threshold} if run.threshold is not None else {}),
            "max_length": max_length,
            "truncation": config.get("truncation", "head"),
            "text_pair": bool(config.get("text_pair_col")),
            "columns": ({"tokens": "tokens", "tags": "tags"} if task == TOKEN else
                        {"text": config.get("text_col", "text"), "text_pair": config.get("text_pair_col"),
                         "label": config.get("label_col", "label"), "multi_label_separator":
                         config.get("label_sep", ";") if task != SINGLE_LABEL else None}),
            "pad_token_id": pad_id,
            "vocab_size": model_config.get("vocab_size"),
            "model_type": model_config.get("model_type"),
            "opset": _opset_of(chosen.path),
            "optimized": chosen is not fp32 and (optimize and base is not fp32),
            "quantization": chosen.settings if chosen.name.startswith("int8") else None,
            "isa": isa,
            "gate": {
                "metric": gate_metric, "max_drop_points": max_drop, "eval_examples": len(test_examples),
                "eval_data": str(eval_data) if eval_data else "the source run's test split",
                "source_pytorch_fp32": source, "forced": chosen.passed is False,
                "variants": [{"name": v.name, "settings": v.settings, "metrics": v.metrics, "bytes": v.size,
                              "drop_points": v.drop, "passed": v.passed} for v in variants],
            },
            "chosen": chosen.name,
            "timings": timings,
            "versions": runs.library_versions(),
            "git_commit": runs.git_commit(),
        }
        extra = {FP32_MODEL_FILE: fp32_path} if openvino_fp32 and chosen is not fp32 else {}
        bundle = write_bundle(work / "bundle", chosen.path, onnx_dir, run.label_info, manifest, extra)
        say("measuring the runtime backends on this CPU ...")
        manifest["runtime"] = measure_backends(bundle, manifest, test_examples, fp32.metrics[gate_metric],
                                               gate_metric, max_drop, chosen.metrics[gate_metric])
        runs.write_json(bundle / MANIFEST, manifest)
        say(f"fastest at equal accuracy here: {manifest['runtime']['preferred']['backend']} "
            f"({manifest['runtime']['preferred']['model']})")
        if output.exists():
            shutil.rmtree(output)
        bundle.rename(output)
        return ExportResult(bundle=output, manifest=runs.read_json(output / MANIFEST))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_bundle(folder: Path, model: Path, source_dir: Path, label_info: dict, manifest: dict,
                 extra_models: dict[str, Path] | None = None) -> Path:
    """Assemble model.onnx, tokenizer files, config, labels and the checksummed manifest."""
    folder.mkdir(parents=True)
    shutil.copyfile(model, folder / MODEL_FILE)
    for name, path in (extra_models or {}).items():
        shutil.copyfile(path, folder / name)
    for name in (*TOKENIZER_FILES, "config.json"):
        if (source_dir / name).exists():
            shutil.copyfile(source_dir / name, folder / name)
    runs.write_json(folder / runs.LABELS, label_info)
    manifest["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_of(p)}
                         for p in sorted(folder.iterdir()) if p.name != MANIFEST}
    runs.write_json(folder / MANIFEST, manifest)
    return folder


SPEEDUP_TO_SWITCH = 1.1  # a backend must beat onnxruntime by this much to be preferred (not by noise)


def measure_backends(folder: Path, manifest: dict, examples: list, reference: float, gate_metric: str,
                     max_drop: float, bundle_metric: float, rounds: int = 20) -> dict:
    """Time each backend that can run the bundle on this CPU; check its metric; prefer the fastest.

    Latency is batch 1, one thread, on the median-length test input, candidates interleaved;
    a candidate counts only if its ``gate_metric`` is within ``max_drop`` points of the fp32
    ONNX model's ``reference`` (onnxruntime on ``model.onnx`` is the variant the gate already
    scored: ``bundle_metric``). ``runtime.load(backend="auto")`` follows the result on the
    same kind of CPU.
    """
    from edgeclin.bench import time_interleaved
    from edgeclin.runtime import FP32_MODEL_FILE, bundle_model, cpu_signature, openvino_available

    candidates = [("onnxruntime", MODEL_FILE, "auto")]
    if openvino_available():
        import openvino as ov

        candidates.append(("openvino", MODEL_FILE, "auto"))
        if (folder / FP32_MODEL_FILE).exists():
            bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            candidates.append(("openvino", FP32_MODEL_FILE, "bf16" if bf16 else "f32"))
    models = [bundle_model(folder, manifest, threads=1, backend=b, model_file=m, precision=p)
              for b, m, p in candidates]
    sample = sorted(examples, key=lambda e: len(e.text))[len(examples) // 2]

    def call(model) -> None:
        if model.task == TOKEN:
            model.predict(words=[list(sample.tokens)])
        else:
            model.predict([sample.text], [sample.text_pair] if model.text_pair else None)

    times = time_interleaved({i: functools.partial(call, model) for i, model in enumerate(models)}, 3, rounds)
    results = []
    for i, ((backend, model_file, precision), model) in enumerate(zip(candidates, models, strict=True)):
        metric = bundle_metric if i == 0 else evaluate_onnx(model, examples)[0][gate_metric]
        results.append({"backend": backend, "model": model_file, "precision": precision,
                        "p50_ms": float(np.median(times[i])), gate_metric: metric,
                        "passed": 100 * (reference - metric) <= max_drop})
    baseline = results[0]
    preferred = min((r for r in results if r["passed"]), key=lambda r: r["p50_ms"], default=baseline)
    if preferred is not baseline and baseline["p50_ms"] / preferred["p50_ms"] < SPEEDUP_TO_SWITCH:
        preferred = baseline
    return {"cpu": cpu_signature(), "threads": 1, "batch_size": 1, "rounds": rounds, "candidates": results,
            "preferred": {k: preferred[k] for k in ("backend", "model", "precision")}}


def _recorded_test_metric(run: RunFolder, metric: str) -> float | None:
    metrics_file = run.path / runs.METRICS
    if not metrics_file.exists():
        return None
    return runs.read_json(metrics_file).get("test", {}).get(metric)


def _pad_token_id(folder: Path) -> int:
    config = runs.read_json(folder / "config.json")
    if config.get("pad_token_id") is not None:
        return int(config["pad_token_id"])
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for token in ("[PAD]", "<pad>"):
        if tokenizer.token_to_id(token) is not None:
            return tokenizer.token_to_id(token)
    return 0


def _opset_of(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _calibration_batches(run: RunFolder, classifier: Classifier | Tagger, count: int, eval_data) -> list[dict]:
    from edgeclin.encoding import encode_texts, encode_words, pad_arrays

    examples = run_examples(run, "train", eval_data)[:count]
    if not examples:
        raise EdgeclinError("no training texts to calibrate static quantisation with")
    if run.task == TOKEN:
        ids, types, _, _ = encode_words(classifier.tokenizer, [list(e.tokens) for e in examples],
                                        classifier.max_length)
    else:
        ids, types, _ = encode_texts(classifier.tokenizer, [e.text for e in examples],
                                     [e.text_pair for e in examples], classifier.max_length, classifier.truncation)
    batches = []
    for start in range(0, len(ids), 8):
        arrays = pad_arrays(ids[start:start + 8], types[start:start + 8], classifier.pad_token_id)
        batches.append({name: arrays[name] for name in classifier.input_names})
    return batches
