"""Single-label classification: one label per text (or text pair); softmax and cross-entropy;
selected and gated on macro-F1."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from edgeclin.encoding import IGNORE_INDEX
from edgeclin.errors import EdgeclinError
from edgeclin.logs import get_logger
from edgeclin.metrics import classification_metrics
from edgeclin.records import MISSING_MARKERS, has_bad_bytes
from edgeclin.schema import Columns, Dataset, Example
from edgeclin.tasks.classification import Predictions, TextClassificationTask

log = get_logger(__name__)
MANY_CLASSES = 0.3  # more distinct labels than this share of the training rows: is it the label column?


class SingleLabelTask(TextClassificationTask):
    name = "single_label_classification"
    short_name = "single-label"
    selection_metric = "macro_f1"
    display_columns = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("weighted_f1", "weighted-F1"),
                       ("auroc", "AUROC"))

    def matches_data(self, records: list[dict], columns: Columns, multi_label: bool) -> bool:
        return True  # the fallback: tried last

    def with_label(self, example: Example, value, columns: Columns) -> tuple[Example | None, str | None]:
        value = "" if value is None else str(value)
        if not value.strip():
            return None, f"empty value in column {columns.label!r}"
        if has_bad_bytes(value):
            return None, f"text in column {columns.label!r} is not valid UTF-8"
        if value.strip().lower() in MISSING_MARKERS:
            return None, f"label {value.strip()!r} in column {columns.label!r} looks like a missing value"
        return replace(example, label=value.strip()), None

    def example_labels(self, example: Example) -> set[str]:
        return {example.label}

    def label_counts(self, examples: list[Example]) -> dict[str, int]:
        return dict(sorted(Counter(e.label for e in examples).items()))

    def label_names(self, dataset: Dataset) -> list[str]:
        train = dataset.splits["train"]
        seen = sorted({e.label for e in train.examples})
        if len(seen) < 2:
            raise EdgeclinError(f"{train.source}: only one class ({seen[0]!r}) in the training data; "
                                "a classifier needs at least two")
        self._refuse_unseen(dataset, seen)
        self._warn_about_label_counts(train)
        return seen

    def _warn_about_label_counts(self, train) -> None:
        """Counts that are possible but often a sign of a misread file: warned, with the numbers."""
        counts = self.label_counts(train.examples)
        once = sorted(label for label, n in counts.items() if n == 1)
        if once:
            shown = ", ".join(repr(label) for label in once[:5]) + (" ..." if len(once) > 5 else "")
            log.warning(f"warning: {train.source}: {len(once)} label(s) occur only once in training: {shown}")
        if len(counts) > 20 and len(counts) > MANY_CLASSES * len(train.examples):
            log.warning(f"warning: {train.source}: {len(counts)} distinct labels in {len(train.examples)} rows; "
                        "is the label column the right one (--label-col)?")

    def is_scorable(self, example: Example, labels: list[str]) -> bool:
        return example.label in labels  # a class the model never learnt has no logit to score

    def encode_labels(self, examples: list[Example], label2id: dict[str, int]) -> list:
        # a row without a label (distillation's unlabelled notes) is ignored by the loss
        return [label2id[e.label] if e.label else IGNORE_INDEX for e in examples]

    def label_tensor(self, labels: list, width: int):
        import torch

        return torch.tensor(labels, dtype=torch.long)

    def evaluate(self, examples, encoded, scores, labels, threshold=None, tune=False) -> tuple[dict, np.ndarray]:
        probabilities = np.stack(scores)
        label2id = {label: i for i, label in enumerate(labels)}
        return classification_metrics(np.array([label2id[e.label] for e in examples]), probabilities), probabilities

    def degenerate(self, metrics: dict, predictions: np.ndarray, labels: list[str]) -> str | None:
        chosen = set(np.asarray(predictions).argmax(axis=1).tolist())
        if len(chosen) == 1 and len(predictions) > 1:
            return f"every prediction is the class {labels[chosen.pop()]!r}"
        return None

    def decide(self, probabilities: np.ndarray, labels: list[str], threshold: float | None) -> Predictions:
        return Predictions([labels[i] for i in probabilities.argmax(axis=1)], probabilities, labels)
