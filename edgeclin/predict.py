"""``edgeclin predict``: classify or tag a CSV/JSONL file with a bundle (torch-free)."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from edgeclin import runtime
from edgeclin.data import Columns, LabelFormat, file_columns, read_split
from edgeclin.errors import EdgeclinError
from edgeclin.tasks import MULTI_LABEL, TOKEN


def predict_file(bundle_dir: str | Path, data_file: str | Path, output: str | Path | None = None, *,
                 text_col: str | None = None, text_pair_col: str | None = None, label_col: str | None = None,
                 batch_size: int = 32, threads: int | None = None, backend: str = "auto") -> dict:
    """Predict every row of ``data_file``; write rows with predictions and probabilities; return a summary.

    Column names default to the ones the model was trained with. If the file has the label
    column (NER: ``tags``), the summary holds the task metrics. NER input is JSONL with
    ``tokens`` (pre-split words) or any file with a text column (raw text, split as BERT
    does); each row gets its entities with character offsets.
    """
    model = runtime.load(bundle_dir, threads=threads, backend=backend)
    trained = model.manifest.get("columns", {})
    data_file = Path(data_file)
    present = file_columns(data_file)
    if output is not None and Path(output).suffix not in (".csv", ".jsonl"):
        raise EdgeclinError(f"{output}: output must end in .csv or .jsonl")
    if output is not None and not Path(output).resolve().parent.is_dir():
        raise EdgeclinError(f"{output}: the folder {Path(output).parent} does not exist")
    summary: dict = {"bundle": str(bundle_dir), "input": str(data_file), "backend": model.backend,
                     "model_file": model.model_path.name, "task": model.task}
    if model.task == TOKEN:
        rows = _tag_rows(model, data_file, present, text_col, batch_size, summary)
    else:
        rows = _classify_rows(model, data_file, present, trained, text_col, text_pair_col, label_col, batch_size,
                              summary)
    _write_rows(rows, Path(output) if output else None)
    if output is not None and "metrics" in summary:
        Path(str(output) + ".metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _classify_rows(model, data_file: Path, present: list[str], trained: dict, text_col, text_pair_col, label_col,
                   batch_size: int, summary: dict) -> list[dict]:
    from edgeclin.metrics import task_metrics

    text_col = text_col or trained.get("text") or "text"
    text_pair_col = text_pair_col or trained.get("text_pair")
    if label_col is None and trained.get("label") in present:
        label_col = trained["label"]
    label_format = LabelFormat(model.task, trained.get("multi_label_separator") or ";")
    examples = read_split(data_file, "predict", Columns(text_col, label_col, text_pair_col),
                          label_format=label_format).examples
    result = model.predict([e.text for e in examples], [e.text_pair for e in examples] if text_pair_col else None,
                           batch_size=batch_size)
    summary["rows"] = len(examples)
    multi = model.task == MULTI_LABEL
    if label_col:
        given = {label for e in examples for label in (e.label_set if multi else (e.label,))}
        unknown = sorted(given - set(model.labels))
        if unknown:
            summary["unknown_labels"] = unknown
        known = [i for i, e in enumerate(examples) if multi or e.label in model.labels]
        if known:
            summary["metrics"] = task_metrics(model.task, [examples[i] for i in known], result.probabilities[known],
                                              model.labels, model.threshold)
            summary["scored_rows"] = len(known)
    rows = []
    for i, example in enumerate(examples):
        row = {"text": example.text}
        if text_pair_col:
            row["text_pair"] = example.text_pair
        if label_col:
            row["true_label"] = example.label
        row["label"] = result.labels[i]
        row.update({f"p_{name}": round(float(p), 6) for name, p in zip(model.labels, result.probabilities[i],
                                                                      strict=True)})
        rows.append(row)
    return rows


def _tag_rows(model, data_file: Path, present: list[str], text_col, batch_size: int, summary: dict) -> list[dict]:
    from edgeclin.metrics import task_metrics

    pre_split = text_col is None and "tokens" in present
    if pre_split:
        columns = Columns(tokens="tokens", tags="tags" if "tags" in present else None)
        examples = read_split(data_file, "predict", columns, label_format=LabelFormat(TOKEN)).examples
        tagged = model.predict(words=[list(e.tokens) for e in examples], batch_size=batch_size)
    else:
        examples = read_split(data_file, "predict", Columns(text_col or "text", None)).examples
        tagged = model.predict([e.text for e in examples], batch_size=batch_size)
    summary["rows"] = len(examples)
    if model.truncated:  # words past max_length are tagged O: say so, never silently
        summary["truncated_rows"] = model.truncated
        print(f"{data_file}: {model.truncated} of {len(examples)} texts are longer than {model.max_length} word "
              "pieces; their later words were not tagged (O)", file=sys.stderr)
    labelled = pre_split and "tags" in present
    if labelled:
        unknown = sorted({t for e in examples for t in e.tags} - set(model.labels))
        if unknown:
            summary["unknown_labels"] = unknown
        summary["metrics"] = task_metrics(TOKEN, examples, [t.tags for t in tagged], model.labels)
        summary["scored_rows"] = len(examples)
    rows = []
    for example, result in zip(examples, tagged, strict=True):
        row: dict = {"text": result.text}
        if pre_split:
            row["tokens"] = result.words
            if labelled:
                row["true_tags"] = list(example.tags)
            row["tags"] = result.tags
        row["entities"] = [e.as_dict() for e in result.entities]
        rows.append(row)
    return rows


def _write_rows(rows: list[dict], output: Path | None) -> None:
    """CSV or JSONL by suffix; written to a temporary file and renamed, so no half file remains."""
    if output is None:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    tmp = output.with_name(output.name + ".tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            if output.suffix == ".csv":
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["label"])
                writer.writeheader()
                for row in rows:  # lists (NER tags, entities) as JSON in their cell
                    writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else v
                                     for k, v in row.items()})
            else:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
