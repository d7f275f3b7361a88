"""``edgeclin predict``: classify or tag a CSV/JSONL file with a bundle (torch-free)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from edgeclin import runtime
from edgeclin.errors import EdgeclinError
from edgeclin.files import OutputFile, check_output_free
from edgeclin.logs import get_logger
from edgeclin.schema import ColumnChoice

log = get_logger(__name__)
OUTPUT_SUFFIXES = (".csv", ".jsonl")


def predict_file(bundle_dir: str | Path, data_file: str | Path, output: str | Path | None = None, *,
                 text_col: str | None = None, text_pair_col: str | None = None, label_col: str | None = None,
                 batch_size: int = 32, threads: int | None = None, backend: str = "auto", overwrite: bool = False,
                 skip_bad_rows: bool = False, key: bytes | None = None) -> dict:
    """Predict every row of ``data_file``; write rows with predictions and probabilities; return a summary.

    Column names default to the ones the model was trained with. If the file has the label
    column (NER: ``tags``), the summary holds the task metrics. NER input is JSONL with
    ``tokens`` (pre-split words) or any file with a text column (raw text, split as BERT
    does); each row gets its entities with character offsets. An existing output is replaced only
    with ``overwrite``; ``skip_bad_rows`` drops (and counts) empty or undecodable rows.
    """
    output = Path(output) if output is not None else None
    _check_output(output, overwrite)
    model = runtime.load(bundle_dir, threads=threads, backend=backend, key=key)
    log.info(f"running {model.describe_choice()}")
    data_file = Path(data_file)
    columns = ColumnChoice(text_col, text_pair_col, label_col)
    split, labelled = model.strategy.read_prediction_input(model, data_file, columns, skip_bad_rows)
    rows, found = model.strategy.prediction_rows(model, split.examples, labelled, batch_size)
    summary = {"bundle": str(bundle_dir), "input": str(data_file), "backend": model.backend,
               "precision": model.precision, "model_file": model.model_path.name, "task": model.task,
               "skipped_rows": split.skipped_rows, **found}
    _warn(summary, data_file, model)
    if output is None:
        _print_rows(rows)
        return summary
    with OutputFile(output, overwrite) as out:
        _write_rows(rows, out.tmp, output.suffix)
        if "metrics" in summary:
            with OutputFile(Path(str(output) + ".metrics.json"), overwrite) as metrics:
                metrics.tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
                metrics.publish()
        out.publish()
    return summary


def _warn(summary: dict, data_file: Path, model) -> None:
    """What the user must know about the input: never silent, so warnings (shown even under --quiet)."""
    if summary.get("truncated_rows"):
        log.warning(f"{data_file}: {summary['truncated_rows']} of {summary['rows']} texts are longer than "
                    f"{model.max_length} tokens and were cut as in training ({model.truncation})")
    if summary.get("skipped_rows"):
        log.warning(f"{data_file}: skipped {summary['skipped_rows']} bad rows (--skip-bad-rows)")
    if summary.get("unknown_labels"):
        shown = ", ".join(repr(label) for label in summary["unknown_labels"][:5])
        log.warning(f"{data_file}: label(s) {shown} are unknown to the model; the metrics score the "
                    f"{summary.get('scored_rows', 0)} rows it can ({summary['rows']} predicted)")


def _check_output(output: Path | None, overwrite: bool) -> None:
    if output is None:
        return
    if output.suffix not in OUTPUT_SUFFIXES:
        raise EdgeclinError(f"{output}: output must end in .csv or .jsonl")
    if not output.resolve().parent.is_dir():
        raise EdgeclinError(f"{output}: the folder {output.parent} does not exist")
    check_output_free(output, overwrite, "output file")


def _print_rows(rows: list[dict]) -> None:
    for row in rows:
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_rows(rows: list[dict], path: Path, suffix: str) -> None:
    """CSV or JSONL by the output's suffix."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        if suffix == ".csv":
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["label"])
            writer.writeheader()
            for row in rows:  # lists (NER tags, entities) as JSON in their cell
                writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else v
                                 for k, v in row.items()})
        else:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
