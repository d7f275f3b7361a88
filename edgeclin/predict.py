"""``edgeclin predict``: classify a CSV/JSONL file with a bundle (torch-free)."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

from edgeclin import runtime
from edgeclin.data import Columns, file_columns, read_split
from edgeclin.errors import EdgeclinError


def predict_file(bundle_dir: str | Path, data_file: str | Path, output: str | Path | None = None, *,
                 text_col: str | None = None, text_pair_col: str | None = None, label_col: str | None = None,
                 batch_size: int = 32, threads: int | None = None, backend: str = "onnxruntime") -> dict:
    """Predict every row of ``data_file``; write rows with label and probabilities; return a summary.

    Column names default to the ones the model was trained with. If the file has the label
    column, the summary holds the task metrics.
    """
    bundle = runtime.load(bundle_dir, threads=threads, backend=backend)
    trained = bundle.manifest.get("columns", {})
    data_file = Path(data_file)
    present = file_columns(data_file)
    text_col = text_col or trained.get("text") or "text"
    text_pair_col = text_pair_col or trained.get("text_pair")
    if label_col is None and trained.get("label") in present:
        label_col = trained["label"]
    if output is not None and Path(output).suffix not in (".csv", ".jsonl"):
        raise EdgeclinError(f"{output}: output must end in .csv or .jsonl")
    if output is not None and not Path(output).resolve().parent.is_dir():
        raise EdgeclinError(f"{output}: the folder {Path(output).parent} does not exist")
    examples = read_split(data_file, "predict", Columns(text_col, label_col, text_pair_col)).examples
    result = bundle.predict([e.text for e in examples], [e.text_pair for e in examples] if text_pair_col else None,
                            batch_size=batch_size)
    summary: dict = {"rows": len(examples), "bundle": str(bundle_dir), "input": str(data_file), "backend": backend}
    if label_col:
        from edgeclin.metrics import classification_metrics

        label2id = {label: i for i, label in enumerate(bundle.labels)}
        unknown = sorted({e.label for e in examples} - set(label2id))
        if unknown:
            summary["unknown_labels"] = unknown
        known = [i for i, e in enumerate(examples) if e.label in label2id]
        if known:
            summary["metrics"] = classification_metrics([label2id[examples[i].label] for i in known],
                                                        result.probabilities[known])
            summary["scored_rows"] = len(known)
    rows = []
    for i, example in enumerate(examples):
        row = {"text": example.text}
        if text_pair_col:
            row["text_pair"] = example.text_pair
        if label_col:
            row["true_label"] = example.label
        row["label"] = result.labels[i]
        row.update({f"p_{name}": round(float(p), 6) for name, p in zip(bundle.labels, result.probabilities[i],
                                                                      strict=True)})
        rows.append(row)
    _write_rows(rows, Path(output) if output else None)
    if output is not None and "metrics" in summary:
        Path(str(output) + ".metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


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
                writer.writerows(rows)
            else:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
