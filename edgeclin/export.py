"""``edgeclin export``: a run (or merged / HF folder) -> a checked, self-describing ONNX bundle.

Each step is one small function, usable on its own:

1. ``merged_model`` an adapter first (LoRA models exported unmerged are wrong: peft #670, #901);
2. ``export_onnx``: optimum-onnx's exporter, dynamic batch and sequence axes;
3. ``optimize_onnx`` (``--optimize``): optimum's ``ORTOptimizer`` (onnxruntime's transformer fusions),
   with every tensor's shape recorded (``with_shapes``) so that the fused graph can be quantised;
4. the quantisation recipes (``edgeclin.quantization``, ``--int8``), tried in turn by
5. the gate (``edgeclin.gate``): every variant scored with the task metric against fp32;
6. ``write_bundle``: files and the checksummed manifest, built beside the output and renamed
   into place only when complete; then every engine that can run it is measured here
   (``edgeclin.selection``).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from edgeclin.artifacts import METRICS, BundleManifest, LabelsFile, RunFolder, open_model_folder
from edgeclin.engines import FP32_MODEL_FILE, MODEL_FILE, Candidate
from edgeclin.errors import EdgeclinError
from edgeclin.files import OutputFolder, check_output_free, read_json
from edgeclin.gate import EXPORT_TOLERANCE, Variant, print_table
from edgeclin.graphs import ExtraGraph, planned_graphs
from edgeclin.hardware import INT8_PRESETS, cpu_features
from edgeclin.inference import ModelSpec
from edgeclin.logs import get_logger
from edgeclin.provenance import git_commit, library_versions
from edgeclin.quantization import QUANTIZE_OPS, Recipe, plan_recipes
from edgeclin.run_data import run_examples
from edgeclin.runtime import make_predictor, sha256_of
from edgeclin.selection import measure_candidates
from edgeclin.tasks import SINGLE_LABEL, get_task
from edgeclin.torch_model import check_mergeable, max_difference, reference_scores

log = get_logger(__name__)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spm.model")


@dataclass
class ExportConfig:
    """Every option of ``edgeclin export``, checked before any work."""

    int8: bool = False
    optimize: bool = False
    opset: int | None = None
    quantize: str = "all"  # a key of quantization.QUANTIZE_OPS
    per_channel: bool = False
    isa: str = "auto"  # an int8 preset, or auto: this CPU's
    static: bool = False
    calibration: int | None = None  # training texts for --static (default 300)
    max_drop: float = 1.0
    force: bool = False
    eval_data: str | Path | None = None
    keep_fp32: bool = False  # also carry the fp32 ONNX graph (model.fp32.onnx)
    ir: bool = True  # with --int8: also an OpenVINO IR with int8 weights, for bf16 engines (edgeclin.graphs)
    sign_key_file: str | Path | None = None  # HMAC-sign the manifest with this key
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.quantize not in QUANTIZE_OPS:
            raise EdgeclinError(f"--quantize must be one of {', '.join(QUANTIZE_OPS)}")
        if self.isa != "auto" and self.isa not in INT8_PRESETS:
            raise EdgeclinError(f"--isa must be auto or one of {', '.join(INT8_PRESETS)}")
        if self.calibration is not None and not self.static:
            raise EdgeclinError("--calibration sets the calibration texts of --static; give --static too")
        if self.calibration is not None and self.calibration < 1:
            raise EdgeclinError("--calibration must be at least 1")
        if self.keep_fp32 and not self.int8:
            raise EdgeclinError("--keep-fp32 carries the fp32 graph beside the int8 one; without --int8 the "
                                "bundle's model.onnx is that fp32 graph already")
        for flag in ("static", "per_channel", "force"):
            if getattr(self, flag) and not self.int8:
                raise EdgeclinError(f"--{flag.replace('_', '-')} is an int8 option; give --int8 too")

    @property
    def key(self) -> bytes | None:
        from edgeclin.runtime import read_key_file

        return read_key_file(self.sign_key_file) if self.sign_key_file else None

    @property
    def preset(self) -> str:
        return cpu_features().int8_preset if self.isa == "auto" else self.isa


@dataclass
class ExportResult:
    bundle: Path
    manifest: dict


@dataclass
class Graph:
    """The fp32 ONNX export of a model folder, with what its predictors need."""

    path: Path  # the fp32 model.onnx
    folder: Path  # optimum's output folder: tokenizer files and config.json
    model_config: dict
    spec: ModelSpec

    def predictor(self, path: Path, rows_per_run: int | None = None):
        spec = dataclasses.replace(self.spec, rows_per_run=rows_per_run)
        return make_predictor(path, self.folder / "tokenizer.json", spec, Candidate("onnxruntime", path.name, "fp32"))


def export_onnx(model_dir: Path, out_dir: Path, opset: int | None = None, task: str = SINGLE_LABEL) -> Path:
    """Export with optimum-onnx (dynamic batch/sequence axes); returns the .onnx path."""
    from optimum.exporters.onnx import main_export
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "torch_dtype is deprecated", from optimum's own call: nothing to act on
    try:
        with warnings.catch_warnings():  # the gate below is the check: optimum's validation only warns
            warnings.simplefilter("ignore")  # tracer warnings about constants are expected and harmless
            main_export(str(model_dir), output=out_dir, task=get_task(task).export_task, opset=opset,
                        do_validation=False, local_files_only=True, trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(previous)
    return Path(out_dir) / MODEL_FILE


def optimize_onnx(onnx_path: Path, out_path: Path) -> tuple[Path, dict]:
    """optimum's ``ORTOptimizer`` at level 1 (attention, LayerNorm and GELU fusions); and its serialised config."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import OptimizationConfig

    scratch = out_path.with_suffix(".optimizer")
    optimizer = ORTOptimizer.from_pretrained(onnx_path.parent, file_names=[onnx_path.name])
    try:
        optimizer.optimize(OptimizationConfig(optimization_level=1, optimize_for_gpu=False), save_dir=scratch)
    except (KeyError, NotImplementedError, ValueError) as exc:  # an architecture optimum cannot fuse
        raise EdgeclinError(f"--optimize: optimum cannot optimise this model ({exc})") from None
    shutil.move(str(next(scratch.glob("*optimized.onnx"))), out_path)
    config = read_json(scratch / "ort_config.json") if (scratch / "ort_config.json").exists() else {}
    shutil.rmtree(scratch, ignore_errors=True)
    with_shapes(out_path)
    return out_path, config


def with_shapes(onnx_path: Path) -> None:
    """Record the shape and type of every tensor in the graph (onnxruntime's symbolic shape inference).

    onnx's own inference cannot type the outputs of onnxruntime's fused ops (Attention,
    SkipLayerNormalization, FastGelu), and onnxruntime's quantiser then stops at the first MatMul
    behind one ("Unable to find data type"); with the types recorded it quantises the fused graph.
    """
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        inferred = SymbolicShapeInference.infer_shapes(onnx.load(str(onnx_path)), auto_merge=True)
    except Exception as exc:  # the tool raises bare Exceptions on graphs it cannot follow
        raise EdgeclinError(f"--optimize: onnxruntime cannot infer the optimised graph's shapes ({exc})") from None
    onnx.save(inferred, str(onnx_path))


def write_bundle(folder: Path, model: Path, source_dir: Path, labels: LabelsFile | dict,
                 manifest: BundleManifest | dict, extra_models: dict[str, Path] | None = None,
                 key: bytes | None = None) -> Path:
    """Assemble model.onnx, tokenizer files, config, labels and the checksummed manifest."""
    labels = labels if isinstance(labels, LabelsFile) else LabelsFile.from_dict(labels)
    manifest = manifest if isinstance(manifest, BundleManifest) else BundleManifest.from_dict(manifest)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, folder / MODEL_FILE)
    for name, path in (extra_models or {}).items():
        shutil.copyfile(path, folder / name)
    for name in (*TOKENIZER_FILES, "config.json"):
        if (source_dir / name).exists():
            shutil.copyfile(source_dir / name, folder / name)
    labels.write(folder)
    seal(folder, manifest, key)
    return folder


def seal(folder: Path, manifest: BundleManifest, key: bytes | None = None) -> None:
    """Write the bundle's model card, the checksum of every file, and the manifest (with its digest)."""
    from edgeclin.model_card import bundle_card

    (folder / "README.md").write_text(bundle_card(manifest), encoding="utf-8")
    manifest.files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_of(p)}
                      for p in sorted(folder.iterdir()) if p.name != "manifest.json"}
    manifest.write(folder, key)


def _graph_record(extra: ExtraGraph, variant: Variant) -> dict:
    return {"name": extra.name, "files": list(extra.files), "weights": extra.weights, "bytes": variant.size,
            "settings": variant.settings, "metrics": variant.metrics, "drop_points": variant.drop,
            "passed": variant.passed}


def _pad_token_id(folder: Path) -> int:
    config = read_json(folder / "config.json")
    if config.get("pad_token_id") is not None:
        return int(config["pad_token_id"])
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return next((tokenizer.token_to_id(t) for t in ("[PAD]", "<pad>") if tokenizer.token_to_id(t) is not None), 0)


def _opset_of(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


@dataclass
class ExportJob:
    """One export: the source run, the options, the gate's examples, and a scratch folder."""

    run: RunFolder
    config: ExportConfig
    examples: list
    scratch: Path
    timings: dict = field(default_factory=dict)

    @property
    def task(self):
        return get_task(self.run.task)

    def say(self, message: str) -> None:
        if not self.config.quiet:
            log.info(message)

    def model_folder(self) -> Path:
        """The run as a plain model folder: an adapter is merged (fp32, verified), a model is used as it is."""
        from edgeclin.merge import merged_model, save_merged

        if not self.run.is_adapter:
            return self.run.path
        self.say("merging the adapter (fp32, verified against the unmerged model) ...")
        merged, tokenizer, check = merged_model(self.run, self.config.eval_data)
        save_merged(self.scratch / "merged", self.run, merged, tokenizer, check)
        return self.scratch / "merged"

    def graph(self, model_dir: Path) -> Graph:
        self.say("exporting to ONNX ...")
        path = export_onnx(model_dir, self.scratch / "onnx", self.config.opset, self.run.task)
        folder = path.parent
        if not (folder / "tokenizer.json").exists():
            raise EdgeclinError(f"{model_dir} has no fast tokenizer (tokenizer.json); edgeclin needs one")
        model_config = read_json(folder / "config.json")
        spec = ModelSpec(task=self.run.task, labels=self.run.labels, input=self.run.input_format,
                         pad_token_id=_pad_token_id(folder), vocab_size=model_config.get("vocab_size"),
                         threshold=self.run.threshold)
        return Graph(path, folder, model_config, spec)

    def score(self, graph: Graph, variant: Variant, rows_per_run: int | None = None) -> list:
        """The variant's metrics, run as the runtime will run it (one text per call where its answers would
        depend on the batch)."""
        variant.metrics, scores = graph.predictor(variant.path, rows_per_run).evaluate(self.examples)
        return scores

    def check_fp32(self, graph: Graph, reference: tuple[dict, list]) -> Variant:
        """The fp32 graph must reproduce the PyTorch model (optimum's own check only warns: optimum #978)."""
        fp32 = Variant("onnx fp32", graph.path, {"quantization": None})
        error = max_difference(self.score(graph, fp32), reference[1])
        if not error <= EXPORT_TOLERANCE:
            raise EdgeclinError(f"the fp32 ONNX model differs from the PyTorch model by {error:.2e} in probability "
                                f"on the test split (tolerance {EXPORT_TOLERANCE:.0e}); no bundle written")
        return fp32

    def optimized(self, graph: Graph, fp32: Variant) -> Variant:
        path, optimum_config = optimize_onnx(graph.path, self.scratch / "optimized.onnx")
        variant = Variant("onnx fp32 optimized", path, {"optimized": True, "optimum_ort_config": optimum_config})
        self.score(graph, variant)
        variant.judge(fp32.metrics, self.task.selection_metric, self.config.max_drop)
        return variant

    def quantized(self, graph: Graph, base: Variant, fp32: Variant, recipe: Recipe, index: int) -> Variant:
        path = self.scratch / f"int8-{index}.onnx"
        optimum_config = recipe.apply(base.path, path, lambda count: self.calibration_batches(graph, count))
        variant = Variant(recipe.label, path, {**recipe.settings(), "batch_independent": recipe.batch_independent,
                                               "optimum_ort_config": optimum_config})
        self.score(graph, variant, None if recipe.batch_independent else 1)
        metric = self.task.selection_metric
        variant.judge(fp32.metrics, metric, self.config.max_drop)
        self.say(f"  {recipe.label}: {metric} {100 * variant.metrics[metric]:.1f} ({variant.drop:+.2f} points) "
                 f"{'pass' if variant.passed else 'FAIL'}")
        return variant

    def calibration_batches(self, graph: Graph, count: int) -> list[dict]:
        from edgeclin.encoding import pad_arrays

        examples = run_examples(self.run, "train", self.config.eval_data)[:count]
        if not examples:
            raise EdgeclinError("no training texts to calibrate static quantisation with")
        predictor = graph.predictor(graph.path)
        encoded = self.task.encode(predictor.tokenizer, examples, None, graph.spec.input)
        batches = []
        for start in range(0, len(encoded), 8):
            arrays = pad_arrays(encoded.input_ids[start:start + 8], encoded.token_type_ids[start:start + 8],
                                graph.spec.pad_token_id)
            batches.append({name: arrays[name] for name in predictor.input_names})
        return batches

    def variants(self, graph: Graph, reference: tuple[dict, list]) -> tuple[list[Variant], Variant, bool]:
        """Every variant tried, the one the bundle gets, and whether it comes from the optimised graph."""
        fp32 = self.check_fp32(graph, reference)
        tried, base = [fp32], fp32
        if self.config.optimize:
            tried.append(self.optimized(graph, fp32))
            base = tried[-1] if tried[-1].passed else fp32
        recipes = plan_recipes(self.config, self.config.preset)
        for index, recipe in enumerate(recipes):
            tried.append(self.quantized(graph, base, fp32, recipe, index))
            if tried[-1].passed:
                return tried, tried[-1], base is not fp32
        if not recipes:
            return tried, base, base is not fp32
        return tried, self.forced(tried, recipes[0]), base is not fp32

    def extra_graphs(self, graph: Graph, fp32: Variant) -> list[tuple[ExtraGraph, Variant]]:
        """Each extra graph the options ask for, built from the fp32 graph and scored by the engine that runs it."""
        scored = []
        for extra in planned_graphs(self.config):
            folder = self.scratch / f"graph-{extra.file}"
            folder.mkdir()
            settings = extra.build(graph.path, folder)
            variant = Variant(extra.name, folder / extra.file, {"graph": extra.file, "weights": extra.weights,
                                                                 **settings}, files=[folder / f for f in extra.files])
            if extra.file == FP32_MODEL_FILE:  # the fp32 graph itself: scored already
                variant.metrics = fp32.metrics
            else:
                candidate = Candidate("openvino", extra.file, "bf16" if cpu_features().native_bf16 else "fp32")
                variant.metrics, _ = make_predictor(variant.path, graph.folder / "tokenizer.json", graph.spec,
                                                    candidate).evaluate(self.examples)
            variant.judge(fp32.metrics, self.task.selection_metric, self.config.max_drop)
            if not variant.passed:
                log.warning(f"warning: {extra.name} lost {variant.drop:.2f} points: not carried")
            scored.append((extra, variant))
        return scored

    def forced(self, tried: list[Variant], requested: Recipe) -> Variant:
        if not self.config.force:
            raise EdgeclinError(f"every int8 setting lost more than {self.config.max_drop} "
                                f"{self.task.selection_metric} points; no bundle written (--force writes the "
                                f"requested one, {requested.label}, anyway; --max-drop changes the limit)")
        chosen = next(v for v in tried if v.name == requested.label)
        log.warning(f"--force: writing {chosen.name} although it failed the gate")
        return chosen

    def manifest(self, graph: Graph, tried: list[Variant], chosen: Variant, optimized: bool,
                 source_metrics: dict) -> BundleManifest:
        run, config = self.run, self.run.config
        quantized = chosen.settings.get("mode") is not None
        return BundleManifest(
            task=run.task, labels=run.labels, input=graph.spec.input, columns=run.columns,
            pad_token_id=graph.spec.pad_token_id, vocab_size=graph.spec.vocab_size,
            model_type=graph.model_config.get("model_type"), threshold=run.threshold,
            source={"path": str(run.path), "kind": "adapter run" if run.is_adapter else
                    ("run" if run.record else "model folder"), "method": config.method if run.record else None,
                    "model": config.model if run.record else None,
                    "git_commit": run.record.git_commit if run.record else None},
            opset=_opset_of(chosen.path), optimized=optimized,
            quantization=chosen.settings if quantized else None, isa=self.config.preset,
            gate={"metric": self.task.selection_metric, "max_drop_points": self.config.max_drop,
                  "eval_examples": len(self.examples), "eval_data": str(self.config.eval_data) if
                  self.config.eval_data else "the source run's test split", "source_pytorch_fp32": source_metrics,
                  "forced": chosen.passed is False, "variants": [v.as_record() for v in tried]},
            chosen=chosen.name, timings=self.timings, versions=library_versions(), git_commit=git_commit(),
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def warn_if_unlike_run(self, source_metrics: dict) -> None:
        """A reloaded model that scores unlike the run did has lost something (its head: peft #577)."""
        metric = self.task.selection_metric
        recorded = read_json(self.run.path / METRICS).get("test", {}).get(metric) \
            if self.config.eval_data is None and (self.run.path / METRICS).exists() else None
        if recorded is not None and abs(recorded - source_metrics[metric]) > 0.02:
            log.warning(f"warning: the reloaded model scores {metric} {100 * source_metrics[metric]:.1f} on the test "
                        f"split, the run recorded {100 * recorded:.1f}")

    def build(self, folder: Path) -> BundleManifest:
        """Every step, timed; the bundle is written into ``folder``."""
        start = time.perf_counter()
        model_dir = self.model_folder()
        self.timings["merge_s"] = time.perf_counter() - start
        graph = self.graph(model_dir)
        self.timings["export_s"] = time.perf_counter() - start - self.timings["merge_s"]
        self.say(f"evaluating on {len(self.examples)} test examples ...")
        start = time.perf_counter()
        reference = reference_scores(self.run, self.examples)
        self.warn_if_unlike_run(reference[0])
        tried, chosen, optimized = self.variants(graph, reference)
        self.timings["evaluate_s"] = time.perf_counter() - start
        if not self.config.quiet:
            print_table(tried, reference[0], self.run.task)
        carried = self.extra_graphs(graph, tried[0])
        if not self.config.quiet and carried:
            print_table([tried[0], *(v for _, v in carried)], None, self.run.task)
        manifest = self.manifest(graph, tried, chosen, optimized, reference[0])
        manifest.graphs = {g.file: _graph_record(g, v) for g, v in carried if v.passed}
        files = {name: v.path.parent / name for g, v in carried if v.passed for name in g.files}
        write_bundle(folder, chosen.path, graph.folder, self.run.label_file, manifest, files, self.config.key)
        self.say("measuring the runtime backends on this CPU ...")
        metric = self.task.selection_metric
        known = {("openvino", g.file): v.metrics[metric] for g, v in carried if v.passed}
        manifest.runtime = measure_candidates(folder, manifest, self.examples, tried[0].metrics[metric], metric,
                                              self.config.max_drop, chosen.metrics[metric], known)
        seal(folder, manifest, self.config.key)
        preferred = manifest.runtime["preferred"]
        self.say(f"fastest at equal accuracy here: {preferred['backend']} {preferred['precision']} "
                 f"({preferred['model']})")
        return manifest


def export(source: str | Path, output: str | Path | None = None, config: ExportConfig | None = None,
           **options) -> ExportResult:
    """Export a run, merged folder or HF classifier folder to a gated ONNX bundle.

    Either pass an ``ExportConfig`` or its fields as keywords: ``export(run, int8=True)``.
    """
    config = config or ExportConfig(**options)
    run = open_model_folder(source)
    if run.is_adapter:
        check_mergeable(run)
    output = Path(output) if output else Path("export") / run.name
    check_output_free(output, config.overwrite, "bundle folder")
    examples = run_examples(run, "test", config.eval_data)  # fails early if the data is missing
    if not examples:
        raise EdgeclinError("no test examples with known labels to check the export against")
    with OutputFolder(output, config.overwrite, what="bundle folder") as out:
        manifest = ExportJob(run, config, examples, out.scratch()).build(out.staging)
        out.publish()
    return ExportResult(bundle=output, manifest=manifest.to_dict())
