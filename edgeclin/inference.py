"""The torch-free predictor base: an ONNX engine, its tokenizer, and the checks that they fit.

Each task strategy (``edgeclin.tasks``) subclasses ``OnnxModel`` with its own ``predict``;
what they share is here: tokenising as in training, length-sorted batches with dynamic
padding, and scoring labelled examples with the task's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclin.encoding import length_sorted_batches, pad_arrays, plain_tokenizer
from edgeclin.errors import EdgeclinError
from edgeclin.schema import InputFormat

ALLOWED_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}


@dataclass(frozen=True)
class ModelSpec:
    """What a predictor needs besides its graph: read from a bundle manifest, or from a run during export."""

    task: str
    labels: list[str]
    input: InputFormat
    pad_token_id: int = 0
    vocab_size: int | None = None
    threshold: float | None = None  # multi-label decision threshold
    # texts per engine call: 1 for dynamically quantised graphs, whose activation scales come from the whole
    # batch, so that a text's answer never depends on the texts beside it; None: any number
    rows_per_run: int | None = None


class OnnxModel:
    """An ONNX encoder with its tokenizer; subclasses (one per task) add ``predict``."""

    def __init__(self, engine, tokenizer_path: Path, spec: ModelSpec, strategy, *, model_path: Path,
                 backend: str, bundle: Path | None = None, manifest=None, choice: str = "") -> None:
        from tokenizers import Tokenizer

        self.engine, self.spec, self.strategy = engine, spec, strategy
        self.choice = choice  # why this engine runs (runtime.load's backend choice)
        self.model_path, self.backend, self.path, self.manifest = Path(model_path), backend, bundle, manifest
        self.tokenizer = plain_tokenizer(Tokenizer.from_file(str(tokenizer_path)))
        self.input_names = engine.input_names
        self._check_model_fits()

    # the settings a caller reads, named as in the run record
    task = property(lambda self: self.spec.task)
    labels = property(lambda self: self.spec.labels)
    max_length = property(lambda self: self.spec.input.max_length)
    truncation = property(lambda self: self.spec.input.truncation)
    text_pair = property(lambda self: self.spec.input.text_pair)
    pad_token_id = property(lambda self: self.spec.pad_token_id)
    precision = property(lambda self: self.engine.precision)

    def _check_model_fits(self) -> None:
        """An ONNX file from another model family must not run with this tokenizer and labels."""
        inputs = set(self.input_names)
        if not inputs <= ALLOWED_INPUTS or "input_ids" not in inputs:
            raise EdgeclinError(f"{self.model_path} is not an encoder classifier (inputs: {', '.join(sorted(inputs))})")
        name, shape = self.engine.output_name, self.engine.output_shape
        width = shape[-1] if shape else None
        if name != "logits" or (isinstance(width, int) and width != len(self.labels)):
            raise EdgeclinError(f"{self.model_path} does not fit: its output is {name} {shape}, "
                                f"but there are {len(self.labels)} labels")
        vocab = self.tokenizer.get_vocab_size()
        if self.spec.vocab_size is not None and vocab > self.spec.vocab_size:
            raise EdgeclinError(f"{self.model_path}: the tokenizer's vocabulary ({vocab}) is larger than the "
                                f"model's embedding table ({self.spec.vocab_size}): they come from different models")

    def run_encoded(self, ids: list[list[int]], types: list[list[int]], batch_size: int = 32) -> list[np.ndarray]:
        """Logits of each encoded row (length-sorted batches, dynamic padding), in input order."""
        out: list = [None] * len(ids)
        for rows in length_sorted_batches([len(x) for x in ids], min(batch_size, self.spec.rows_per_run or batch_size)):
            arrays = pad_arrays([ids[i] for i in rows], [types[i] for i in rows], self.pad_token_id)
            logits = self.engine({name: arrays[name] for name in self.input_names})
            for row, values in zip(rows, logits, strict=True):
                out[row] = values[:len(ids[row])] if values.ndim == 2 else values
        return out

    def evaluate(self, examples: list, batch_size: int = 32) -> tuple[dict, list[np.ndarray]]:
        """The task's metrics on labelled examples, and the probabilities of each row."""
        encoded = self.strategy.encode(self.tokenizer, examples, None, self.spec.input)
        logits = self.run_encoded(encoded.input_ids, encoded.token_type_ids, batch_size)
        scores = [self.strategy.scores(row) for row in logits]
        metrics, _ = self.strategy.evaluate(examples, encoded, scores, self.labels, self.spec.threshold)
        return metrics, scores

    def describe(self) -> str:
        """E.g. "onnxruntime, int8, model.onnx": what actually runs."""
        return f"{self.backend}, {self.precision}, {self.model_path.name}"

    def describe_choice(self) -> str:
        """What runs and why, for the one line predict and serve print."""
        return self.describe() + (f": {self.choice}" if self.choice else "")
