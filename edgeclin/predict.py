"""``edgeclin predict``: classify or tag a CSV/JSONL file with a bundle (torch-free)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from edgeclin import runtime
from edgeclin.errors import EdgeclinError
from edgeclin.files import atomic_file, write_json
from edgeclin.logs import get_logger
from edgeclin.schema import ColumnChoice

log = get_logger(__name__)
OUTPUT_SUFFIXES = (".csv", ".jsonl")


def predict_file(bundle_dir: str | Path, data_file: str | Path, output: str | Path | None = None, *,
                 text_col: str | None = None, text_pair_col: str | None = None, label_col: str | None = None,
                 batch_size: int = 32, threads: int | None = None, backend: str = "auto") -> dict:
    """Predict every row of ``data_file``; write rows with predictions and probabilities; return a summary.

    Column names default to the ones the model was trained with. If the file has the label
    column (NER: ``tags``), the summary holds the task metrics. NER input is JSONL with
    ``tokens`` (pre-split words) or any file with a text column (raw text, split as BERT
    does); each row gets its entities with character offsets.
    """
    output = Path(output) if output is not None else None
    _check_output(output)
    model = runtime.load(bundle_dir, threads=threads, backend=backend)
    log.info(f"running {model.describe()}")
    data_file = Path(data_file)
    rows, found = model.strategy.predict_rows(model, data_file, ColumnChoice(text_col, text_pair_col, label_col),
                                              batch_size)
    summary = {"bundle": str(bundle_dir), "input": str(data_file), "backend": model.backend,
               "precision": model.precision, "model_file": model.model_path.name, "task": model.task, **found}
    if summary.get("truncated_rows"):  # never silent: a warning shows even under --quiet
        log.warning(f"{data_file}: {summary['truncated_rows']} of {summary['rows']} texts are longer than "
                    f"{model.max_length} tokens and were cut as in training ({model.truncation})")
    _write_rows(rows, output)
    if output is not None and "metrics" in summary:
        write_json(Path(str(output) + ".metrics.json"), summary)
    return summary


def _check_output(output: Path | None) -> None:
    if output is None:
        return
    if output.suffix not in OUTPUT_SUFFIXES:
        raise EdgeclinError(f"{output}: output must end in .csv or .jsonl")
    if not output.resolve().parent.is_dir():
        raise EdgeclinError(f"{output}: the folder {output.parent} does not exist")


def _write_rows(rows: list[dict], output: Path | None) -> None:
    """CSV or JSONL by suffix; written to a temporary file and renamed, so no half file remains."""
    if output is None:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    with atomic_file(output) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        if output.suffix == ".csv":
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["label"])
            writer.writeheader()
            for row in rows:  # lists (NER tags, entities) as JSON in their cell
                writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else v
                                 for k, v in row.items()})
        else:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
