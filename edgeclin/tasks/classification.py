"""What single- and multi-label text classification share: text rows, text encoding, the classifier."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclin.encoding import EncodedSplit, encode_texts
from edgeclin.errors import EdgeclinError
from edgeclin.inference import OnnxModel
from edgeclin.records import first_records, read_split_with, text_example
from edgeclin.schema import ColumnChoice, Columns, Example, InputFormat, Split
from edgeclin.tasks.base import Task


@dataclass
class Predictions:
    """Classification results; rows in input order."""

    labels: list[str]  # the predicted label (multi-label: the set joined by ";")
    probabilities: np.ndarray  # (n, n_labels), columns in ``label_names`` order
    label_names: list[str]
    label_sets: list[list[str]] | None = None  # multi-label: the labels at or above ``threshold``
    threshold: float | None = None
    truncated: int = 0  # texts longer than the model's max length, cut as in training


class Classifier(OnnxModel):
    """An ONNX text (or text-pair) classifier: tokenise, batch, run, softmax or sigmoid."""

    def logits(self, texts: list[str], pairs: list[str | None] | None = None, batch_size: int = 32) -> np.ndarray:
        """Raw logits, (n, labels); rows in input order."""
        return self._logits(texts, pairs, batch_size)[0]

    def _logits(self, texts, pairs, batch_size) -> tuple[np.ndarray, int]:
        ids, types, truncated = encode_texts(self.tokenizer, texts, pairs, self.max_length, self.truncation)
        if not ids:
            return np.zeros((0, len(self.labels)), dtype=np.float32), 0
        return np.stack(self.run_encoded(ids, types, batch_size)), truncated

    def predict(self, texts: list[str], pairs: list[str | None] | None = None, batch_size: int = 32) -> Predictions:
        if batch_size < 1:
            raise EdgeclinError("batch size must be at least 1")
        if self.text_pair and (pairs is None or any(p is None for p in pairs)):
            raise EdgeclinError("this model classifies text pairs: give a second text for every text")
        logits, truncated = self._logits(texts, pairs if self.text_pair else None, batch_size)
        result = self.strategy.decide(self.strategy.scores(logits), self.labels, self.spec.threshold)
        return dataclasses.replace(result, truncated=truncated)


class TextClassificationTask(Task):
    export_task = "text-classification"
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    predictor = Classifier

    def matches_model_config(self, config: dict) -> bool:
        return not any(a.endswith("ForTokenClassification") for a in config.get("architectures") or [])

    def read_split(self, path: Path, name: str, columns: Columns, skip_bad_rows: bool = False) -> Split:
        wanted = [c for c in (columns.text, columns.label, columns.text_pair) if c]

        def parse(record: dict):
            example, problem = text_example(record, columns)
            if problem or not columns.label:
                return example, problem
            return self.with_label(example, record.get(columns.label), columns)

        return read_split_with(Path(path), name, wanted, parse, skip_bad_rows)

    def with_label(self, example: Example, value, columns: Columns) -> tuple[Example | None, str | None]:
        """The example with its label cell read, or the reason the cell is unusable."""
        raise NotImplementedError

    def encode(self, tokenizer, examples: list[Example], label2id: dict[str, int] | None,
               fmt: InputFormat) -> EncodedSplit:
        pairs = [e.text_pair for e in examples]
        ids, types, truncated = encode_texts(tokenizer, [e.text for e in examples], pairs, fmt.max_length,
                                             fmt.truncation)
        labels = self.encode_labels(examples, label2id) if label2id is not None else [-1] * len(examples)
        return EncodedSplit(ids, types, labels, truncated)

    def encode_labels(self, examples: list[Example], label2id: dict[str, int]) -> list:
        raise NotImplementedError

    def decide(self, probabilities: np.ndarray, labels: list[str], threshold: float | None) -> Predictions:
        """The predicted labels of a batch of probabilities."""
        raise NotImplementedError

    def read_prediction_input(self, model, path: Path, given: ColumnChoice,
                              skip_bad_rows: bool = False) -> tuple[Split, bool]:
        columns = self._prediction_columns(model, path, given)
        return self.read_split(path, "predict", columns, skip_bad_rows), columns.label is not None

    def prediction_rows(self, model, examples: list[Example], labelled: bool = False,
                        batch_size: int = 32) -> tuple[list[dict], dict]:
        pairs = [e.text_pair for e in examples] if model.text_pair else None
        result = model.predict([e.text for e in examples], pairs, batch_size=batch_size)
        summary: dict = {"rows": len(examples), "truncated_rows": result.truncated}
        if labelled:
            summary.update(self._score(examples, result.probabilities, model))
        rows = []
        for i, example in enumerate(examples):
            row = {"text": example.text}
            if model.text_pair:
                row["text_pair"] = example.text_pair
            if labelled:
                row["true_label"] = example.label
            row["label"] = result.labels[i]
            row.update({f"p_{name}": round(float(p), 6) for name, p in zip(model.labels, result.probabilities[i],
                                                                          strict=True)})
            rows.append(row)
        return rows, summary

    def _prediction_columns(self, model, path: Path, given: ColumnChoice) -> Columns:
        """The bundle's own column names, unless the command line names others."""
        trained = model.manifest.columns
        label = given.label
        if label is None and any(trained.label in record for record in first_records(path)):
            label = trained.label
        return Columns(text=given.text or trained.text, label=label, text_pair=given.text_pair or trained.text_pair,
                       label_sep=trained.label_sep)

    def _score(self, examples: list[Example], probabilities: np.ndarray, model) -> dict:
        out: dict = {}
        unknown = self.unknown_labels(examples, model.labels)
        if unknown:
            out["unknown_labels"] = unknown
        known = [i for i, e in enumerate(examples) if self.is_scorable(e, model.labels)]
        if known:
            out["metrics"], _ = self.evaluate([examples[i] for i in known], None, list(probabilities[known]),
                                              model.labels, model.spec.threshold)
            out["scored_rows"] = len(known)
        return out

