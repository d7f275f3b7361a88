"""The interface of a task strategy: everything that differs between task types lives behind it.

A stage never asks which task it has; it asks the task: how to read a row, which labels a
dataset has, how to encode and collate, which head and loss, how to turn logits into scores,
metrics and the selection metric, how the exported model predicts and what its output rows
hold. The torch-free runtime uses strategies too, so nothing here imports torch at module level.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgeclin.encoding import IGNORE_INDEX, EncodedSplit, pad_arrays
from edgeclin.errors import EdgeclinError
from edgeclin.schema import ColumnChoice, Columns, Dataset, Example, InputFormat, Split


class Task:
    name: ClassVar[str]
    short_name: ClassVar[str]  # for people: "NER", "single-label" (--help, tables)
    selection_metric: ClassVar[str]  # picks the best epoch and gates int8 exports
    display_columns: ClassVar[tuple[tuple[str, str], ...]]  # (metric key, heading) for tables
    export_task: ClassVar[str]  # optimum's exporter task
    auto_model: ClassVar[str]  # the transformers auto class of the head
    peft_task_type: ClassVar[str]  # peft's TaskType name
    problem_type: ClassVar[str | None] = None  # transformers' problem_type (the loss)
    predictor: ClassVar[type]  # the torch-free predictor class (an edgeclin.inference.OnnxModel)
    answers_entities: ClassVar[bool] = False  # a prediction is a list of entity spans, not one label
    reads_pairs: ClassVar[bool] = True  # an example may be a pair of texts (a second-text column)

    # --- recognising the task ------------------------------------------------------------------

    def matches_data(self, records: list[dict], columns: Columns, multi_label: bool) -> bool:
        """Do these first records of a training file hold this task?"""
        raise NotImplementedError

    def matches_model_config(self, config: dict) -> bool:
        """Does a Hugging Face config.json (a folder with no edgeclin records) hold this task's head?"""
        raise NotImplementedError

    def matches_model(self, model) -> bool:
        """Is this loaded transformers model a head of this task?"""
        return self.matches_model_config({"architectures": [type(model).__name__],
                                          "problem_type": getattr(model.config, "problem_type", None)})

    def reads_as(self, detected: Task) -> bool:
        """Can data that looks like ``detected`` be read as this task? (A multi-label CSV looks single-label.)"""
        return detected.name == self.name

    # --- rows and labels -----------------------------------------------------------------------

    def read_split(self, path: Path, name: str, columns: Columns, skip_bad_rows: bool = False) -> Split:
        raise NotImplementedError

    def example_labels(self, example: Example) -> set[str]:
        raise NotImplementedError

    def label_counts(self, examples: list[Example]) -> dict[str, int]:
        raise NotImplementedError

    def label_names(self, dataset: Dataset) -> list[str]:
        """The model's labels in logit order, checked to train and evaluate a model."""
        raise NotImplementedError

    def is_scorable(self, example: Example, labels: list[str]) -> bool:
        """Can a model with these labels be scored on this example? (Yes, unless the task says otherwise.)"""
        return True

    def scorable(self, examples: list[Example], labels: list[str]) -> list[Example]:
        return [e for e in examples if self.is_scorable(e, labels)]

    def unknown_labels(self, examples: list[Example], labels: list[str]) -> list[str]:
        return sorted(set().union(*(self.example_labels(e) for e in examples)) - set(labels)) if examples else []

    def _refuse_unseen(self, dataset: Dataset, known: list[str]) -> None:
        train = dataset.splits["train"]
        for name in ("valid", "test"):
            split = dataset.splits[name]
            unseen = self.unknown_labels(split.examples, known)
            if unseen:
                shown = ", ".join(repr(u) for u in unseen[:5])
                raise EdgeclinError(f"{split.source}: label(s) {shown} never occur in the training data {train.source}")

    # --- encoding and batches ------------------------------------------------------------------

    def encode(self, tokenizer, examples: list[Example], label2id: dict[str, int] | None,
               fmt: InputFormat) -> EncodedSplit:
        """Token ids cut to ``fmt.max_length``; labels as the loss needs them (``label2id`` None: none)."""
        raise NotImplementedError

    def label_tensor(self, labels: list, width: int):
        """The labels of one batch as the torch tensor the loss takes."""
        raise NotImplementedError

    def batch(self, split: EncodedSplit, indices: list[int], pad_token_id: int, with_token_types: bool = True) -> dict:
        """A padded training/evaluation batch as torch tensors, labels included."""
        import torch

        arrays = pad_arrays([split.input_ids[i] for i in indices], [split.token_type_ids[i] for i in indices],
                            pad_token_id)
        if not with_token_types:
            del arrays["token_type_ids"]
        batch = {name: torch.from_numpy(array) for name, array in arrays.items()}
        batch["labels"] = self.label_tensor([split.labels[i] for i in indices], batch["input_ids"].shape[1])
        return batch

    def without_labels(self, columns: Columns) -> Columns:
        """The columns of an unlabelled file of this task (distillation's extra notes)."""
        return replace(columns, label=None)

    # --- distillation (torch; a student learns from a teacher's outputs) ---------------------------

    def gold_loss(self, logits, labels, labelled):
        """The task loss on the labelled rows of a batch (``labelled``: a bool per row)."""
        import torch.nn.functional as F

        if not bool(labelled.any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits[labelled], labels[labelled], ignore_index=IGNORE_INDEX)

    def distill_loss(self, student, teacher, temperature: float, mask=None):
        """Temperature-scaled KL from the teacher's distribution to the student's, times T² (Hinton et al.)."""
        import torch.nn.functional as F

        if mask is not None:
            student, teacher = student[mask], teacher[mask]
        return F.kl_div(F.log_softmax(student / temperature, dim=-1), F.softmax(teacher / temperature, dim=-1),
                        reduction="batchmean") * temperature ** 2

    def distill_mask(self, split: EncodedSplit, indices: list[int], width: int):
        """Which positions of a batch are distilled (None: each row's single output)."""
        return None

    def model_kwargs(self) -> dict:
        """Extra ``from_pretrained`` arguments of this task's head."""
        return {"problem_type": self.problem_type} if self.problem_type else {}

    def adapt_prompt_model(self, peft_model, num_virtual_tokens: int) -> None:
        """Fix up a prompt/P-tuning model for this task (nothing to do for most)."""

    # --- outputs -------------------------------------------------------------------------------

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities from logits, over the last axis: softmax (sigmoid where labels are independent)."""
        logits = as_float(logits)
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)

    def torch_scores(self, logits):
        """``scores`` on a torch tensor (training evaluates on the device, before gathering across processes)."""
        return logits.softmax(dim=-1)

    def evaluate(self, examples: list[Example], encoded: EncodedSplit | None, scores: list[np.ndarray],
                 labels: list[str], threshold: float | None = None, tune: bool = False) -> tuple[dict, object]:
        """Metrics of one split's scores, and the predictions they were computed from.

        ``tune`` (validation only) lets a task choose its decision threshold on these scores;
        ``encoded`` is needed by tasks that score words rather than rows (NER).
        """
        raise NotImplementedError

    def degenerate(self, metrics: dict, predictions, labels: list[str]) -> str | None:
        """Why these predictions (from ``evaluate``) look like a collapsed model: one answer for everything."""
        raise NotImplementedError

    def columns_record(self, columns: Columns) -> dict:
        """The column names a bundle's manifest records (what its input files hold)."""
        return {"text": columns.text, "text_pair": columns.text_pair, "label": columns.label,
                "multi_label_separator": columns.label_sep}


    def headline(self, metrics: dict) -> str:
        """The selection metric and the next display metric, e.g. "macro-F1 81.1, accuracy 82.3"."""
        selected = [c for c in self.display_columns if c[0] == self.selection_metric]
        shown = selected + [c for c in self.display_columns if c[0] != self.selection_metric][:1]
        return ", ".join(f"{heading} {100 * metrics[key]:.1f}" for key, heading in shown
                         if metrics.get(key) is not None)

    # --- the torch-free runtime ----------------------------------------------------------------

    def read_prediction_input(self, model, path: Path, given: ColumnChoice,
                              skip_bad_rows: bool = False) -> tuple[Split, bool]:
        """The rows of a file to predict, and whether they carry labels to score against."""
        raise NotImplementedError

    def prediction_rows(self, model, examples: list[Example], labelled: bool = False,
                        batch_size: int = 32) -> tuple[list[dict], dict]:
        """``edgeclin predict``'s output rows (the same for a server or a Spark job), and what the
        summary adds: counts, and the metrics when ``labelled``."""
        raise NotImplementedError

    def predict_rows(self, model, path: Path, given: ColumnChoice, batch_size: int) -> tuple[list[dict], dict]:
        """``edgeclin predict``'s output rows for a file, and what the summary adds (metrics, counts)."""
        split, labelled = self.read_prediction_input(model, path, given)
        return self.prediction_rows(model, split.examples, labelled, batch_size)


def as_float(logits) -> np.ndarray:
    # computed in the logits' own precision, so every path (export gate, predict, bench) gives
    # bit-identical probabilities for the same logits
    logits = np.asarray(logits)
    return logits if np.issubdtype(logits.dtype, np.floating) else logits.astype(np.float64)


__all__ = ["IGNORE_INDEX", "Task"]
