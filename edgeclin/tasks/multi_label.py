"""Multi-label classification: a set of labels per text; independent sigmoids and binary
cross-entropy; one decision threshold tuned on validation; selected and gated on micro-F1."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from edgeclin.errors import EdgeclinError
from edgeclin.metrics import multilabel_metrics, tune_threshold
from edgeclin.records import MISSING_MARKERS, has_bad_bytes
from edgeclin.schema import Columns, Dataset, Example
from edgeclin.tasks.base import as_float
from edgeclin.tasks.classification import Predictions, TextClassificationTask

DEFAULT_THRESHOLD = 0.5


def split_labels(value, separator: str) -> tuple[str, ...]:
    parts = value if isinstance(value, list) else str(value).split(separator)
    return tuple(sorted({str(p).strip() for p in parts if str(p).strip()}))


class MultiLabelTask(TextClassificationTask):
    name = "multi_label_classification"
    short_name = "multi-label"
    selection_metric = "micro_f1"
    display_columns = (("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"), ("micro_auroc", "micro-AUROC"),
                       ("precision_at_1", "P@1"))
    problem_type = "multi_label_classification"  # sigmoid + binary cross-entropy in transformers

    def matches_data(self, records: list[dict], columns: Columns, multi_label: bool) -> bool:
        # asked for, or a JSONL label that is a list
        return multi_label or bool(columns.label and any(isinstance(r.get(columns.label), list) for r in records))

    def matches_model_config(self, config: dict) -> bool:
        return super().matches_model_config(config) and config.get("problem_type") == self.problem_type

    def reads_as(self, detected) -> bool:
        return detected.name in (self.name, "single_label_classification")

    def with_label(self, example: Example, value, columns: Columns) -> tuple[Example | None, str | None]:
        labels = split_labels(value if value is not None else "", columns.label_sep)  # empty cell: empty set
        if any(has_bad_bytes(label) for label in labels):
            return None, f"text in column {columns.label!r} is not valid UTF-8"
        marker = next((label for label in labels if label.lower() in MISSING_MARKERS), None)
        if marker is not None:
            return None, f"label {marker!r} in column {columns.label!r} looks like a missing value"
        return replace(example, label=";".join(labels), label_set=labels), None

    def example_labels(self, example: Example) -> set[str]:
        return set(example.label_set)

    def label_counts(self, examples: list[Example]) -> dict[str, int]:
        return dict(sorted(Counter(label for e in examples for label in e.label_set).items()))

    def label_names(self, dataset: Dataset) -> list[str]:
        train = dataset.splits["train"]
        seen = sorted({label for e in train.examples for label in e.label_set})
        if not seen:
            raise EdgeclinError(f"{train.source}: no labels at all in the training data")
        self._refuse_unseen(dataset, seen)
        return seen

    def encode_labels(self, examples: list[Example], label2id: dict[str, int]) -> list:
        return self.targets(examples, label2id).astype(float).tolist()

    @staticmethod
    def targets(examples: list[Example], label2id: dict[str, int]) -> np.ndarray:
        """Multi-hot rows; a label the model never learnt is left out (a miss in the metrics)."""
        targets = np.zeros((len(examples), len(label2id)), dtype=int)
        for row, example in enumerate(examples):
            for label in example.label_set:
                if label in label2id:
                    targets[row, label2id[label]] = 1
        return targets

    def label_tensor(self, labels: list, width: int):
        import torch

        return torch.tensor(labels, dtype=torch.float32)

    def scores(self, logits: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-as_float(logits)))

    def torch_scores(self, logits):
        return logits.sigmoid()

    def gold_loss(self, logits, labels, labelled):
        import torch.nn.functional as F

        if not bool(labelled.any()):
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits[labelled], labels[labelled])

    def distill_loss(self, student, teacher, temperature: float, mask=None):
        """Each label's teacher probability as the student's soft target (independent sigmoids), times T²."""
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(student / temperature, (teacher / temperature).sigmoid()) \
            * temperature ** 2

    def evaluate(self, examples, encoded, scores, labels, threshold=None, tune=False) -> tuple[dict, np.ndarray]:
        probabilities = np.stack(scores)
        targets = self.targets(examples, {label: i for i, label in enumerate(labels)})
        if tune:
            threshold = tune_threshold(targets, probabilities)
        elif threshold is None:
            raise ValueError("multi-label metrics need the threshold tuned on validation")
        return multilabel_metrics(targets, probabilities, threshold), probabilities

    def degenerate(self, metrics: dict, predictions: np.ndarray, labels: list[str]) -> str | None:
        rows = {tuple(row) for row in (np.asarray(predictions) >= metrics["threshold"]).tolist()}
        if len(rows) == 1 and len(predictions) > 1:
            chosen = [labels[i] for i, on in enumerate(rows.pop()) if on]
            return f"every prediction is the label set {chosen}"
        return None


    def decide(self, probabilities: np.ndarray, labels: list[str], threshold: float | None) -> Predictions:
        threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        sets = [[labels[j] for j in np.flatnonzero(row >= threshold)] for row in probabilities]
        return Predictions([";".join(s) for s in sets], probabilities, labels, sets, threshold)
