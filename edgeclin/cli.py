"""The ``edgeclin`` command line: option parsing only; the work is in the stage modules."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from edgeclin.errors import EdgeclinError


def _friendly_errors(command):
    """Turn EdgeclinError into one line on stderr and exit code 2: no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EdgeclinError as exc:
            click.echo(f"edgeclin: error: {exc}", err=True)
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


@main.command()
@click.option("--model", default="all-MiniLM-L6-v2", show_default=True,
              help="Built-in name, local Hugging Face folder, or hub id (e.g. nlpie/bio-mobilebert).")
@click.option("--data", type=str, default=None,
              help="Folder with train/valid/test .csv or .jsonl files. Default: built-in synthetic demo notes.")
@click.option("--train", "train_file", type=click.Path(dir_okay=False), help="Training file (overrides --data's).")
@click.option("--valid", "valid_file", type=click.Path(dir_okay=False), help="Validation file.")
@click.option("--test", "test_file", type=click.Path(dir_okay=False), help="Test file.")
@click.option("--text-col", default="text", show_default=True, help="Column holding the text.")
@click.option("--label-col", default="label", show_default=True, help="Column holding the label.")
@click.option("--text-pair-col", default=None, help="Column holding a second text (sentence pairs).")
@click.option("--skip-bad-rows", is_flag=True,
              help="Drop empty or non-UTF-8 rows (and report how many) instead of failing.")
@click.option("--limit", type=int, help="Use a deterministic subsample of N rows of each split.")
@click.option("--method", type=click.Choice(["lora", "full"]), default="lora", show_default=True,
              help="lora: train low-rank adapters and the head; full: train every weight (the baseline).")
@click.option("--lora-r", type=int, default=8, show_default=True, help="LoRA rank.")
@click.option("--lora-alpha", type=int, default=16, show_default=True,
              help="LoRA scaling numerator (scale = alpha / r).")
@click.option("--lora-dropout", type=float, default=0.1, show_default=True)
@click.option("--target-modules", default="attention", show_default=True,
              help="LoRA targets: qv, qkv, attention (q,k,v,output), all-linear, or a comma list of module names.")
@click.option("--epochs", type=int, default=4, show_default=True)
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps.")
@click.option("--lr", type=float, help="Learning rate. Default per method: lora 2e-3, full 1e-4.")
@click.option("--warmup-ratio", type=float, default=0.1, show_default=True,
              help="Fraction of steps spent warming up.")
@click.option("--schedule", type=click.Choice(["linear", "cosine", "constant_with_warmup"]), default="linear",
              show_default=True, help="Learning-rate schedule after warm-up.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Gradient accumulation steps.")
@click.option("--max-length", type=int, default=256, show_default=True,
              help="Tokens per input; longer inputs are cut and counted.")
@click.option("--truncation", type=click.Choice(["head", "tail", "head+tail"]), default="head", show_default=True,
              help="Which part of a long input to keep.")
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="auto: bf16 autocast on GPUs and on CPUs with AMX/AVX512-BF16 (2x faster, same accuracy), "
              "else fp32.")
@click.option("--early-stopping-patience", type=int,
              help="Stop after N epochs without a better validation macro-F1.")
@click.option("-o", "--output", type=click.Path(file_okay=False),
              help="Run folder. Default: runs/<model>-<method>-<time>.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--resume", type=click.Path(file_okay=False),
              help="Continue an interrupted run (its folder) from its last finished epoch; other options are "
              "taken from that run.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_friendly_errors
def train(resume, quiet, **options) -> None:
    """Fine-tune a classifier on text (LoRA or full) and write a run folder.

    \b
    The run folder holds the adapter (LoRA) or the model (full), the tokenizer,
    labels.json, run.json (every option, versions, commit) and metrics.json
    (validation per epoch, test of the best epoch, parameters, time, memory).
    Examples:
      edgeclin train --data ../shared/data/mtsamples --max-length 256
      edgeclin train --data notes/ --method full --epochs 3 -o runs/baseline
      accelerate launch -m edgeclin train --data notes/     # several GPUs
    """
    from edgeclin.train import TrainConfig
    from edgeclin.train import train as run_training

    if resume:
        result = run_training(resume=resume)
    else:
        result = run_training(TrainConfig(progress=not quiet, **options))
    if os.environ.get("RANK", "0") != "0":  # under accelerate launch / torchrun: one summary line
        return
    test = result.metrics["test"]
    click.echo(f"{result.output}: test macro-F1 {100 * test['macro_f1']:.1f}, accuracy {100 * test['accuracy']:.1f}")


@main.command("demo-data")
@click.argument("folder", type=click.Path(file_okay=False), default="data/demo")
@_friendly_errors
def demo_data(folder) -> None:
    """Write edgeclin's synthetic demo notes as train/valid/test CSV files to FOLDER."""
    from edgeclin.demo_data import write_demo_dataset

    written = write_demo_dataset(Path(folder))
    click.echo(f"wrote {', '.join(str(p) for p in written.values())} (synthetic, not patient data)")


if __name__ == "__main__":
    main()
