"""The columns each task adds to an output row, as Arrow types (Spark's follow from them).

- single-label: ``label`` (string) and ``probabilities`` (map label -> probability);
- multi-label: ``label_set`` (array of the labels at the bundle's threshold) and ``probabilities``;
- NER: ``entities`` (array of structs: type, start, end, text, score; offsets index the text,
  or for pre-split words the words joined by single spaces, as ``edgeclin predict`` gives them).

Probabilities and scores are rounded as ``edgeclin predict`` writes them, so both give equal values.
A new task type needs its columns here too (one class, one line in ``OUTPUTS``).
"""

from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from edgeclin.errors import EdgeclinError
from edgeclin.schema import Example
from edgeclin.tasks import MULTI_LABEL, SINGLE_LABEL, TOKEN

DECIMALS = 6  # as edgeclin predict's p_<label> columns
PROBABILITIES = pa.map_(pa.string(), pa.float64())
ENTITY = pa.struct([("type", pa.string()), ("start", pa.int32()), ("end", pa.int32()), ("text", pa.string()),
                    ("score", pa.float64())])


class Output:
    """What one task adds to each row; ``values`` gives each column as a list, in example order."""

    fields: ClassVar[tuple[tuple[str, pa.DataType], ...]]
    reads_words: ClassVar[bool] = False  # can it take pre-split words instead of raw text?

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)

    def values(self, model, examples: list[Example], batch_size: int) -> dict[str, list]:
        raise NotImplementedError


def _probabilities(model, rows) -> list[list[tuple[str, float]]]:
    return [[(name, round(float(p), DECIMALS)) for name, p in zip(model.labels, row, strict=True)] for row in rows]


def _classify(model, examples: list[Example], batch_size: int):
    pairs = [e.text_pair for e in examples] if model.text_pair else None
    return model.predict([e.text for e in examples], pairs, batch_size=batch_size)


class LabelOutput(Output):
    fields = (("label", pa.string()), ("probabilities", PROBABILITIES))

    def values(self, model, examples: list[Example], batch_size: int) -> dict[str, list]:
        result = _classify(model, examples, batch_size)
        return {"label": list(result.labels), "probabilities": _probabilities(model, result.probabilities)}


class LabelSetOutput(Output):
    fields = (("label_set", pa.list_(pa.string())), ("probabilities", PROBABILITIES))

    def values(self, model, examples: list[Example], batch_size: int) -> dict[str, list]:
        result = _classify(model, examples, batch_size)
        return {"label_set": [list(s) for s in result.label_sets],
                "probabilities": _probabilities(model, result.probabilities)}


class EntityOutput(Output):
    fields = (("entities", pa.list_(ENTITY)),)
    reads_words = True

    def values(self, model, examples: list[Example], batch_size: int) -> dict[str, list]:
        # the task's own output rows: raw text, or word by word when the examples carry words
        rows, _ = model.strategy.prediction_rows(model, examples, batch_size=batch_size)
        return {"entities": [row["entities"] for row in rows]}


OUTPUTS: dict[str, Output] = {SINGLE_LABEL: LabelOutput(), MULTI_LABEL: LabelSetOutput(), TOKEN: EntityOutput()}


def output_for(task: str) -> Output:
    try:
        return OUTPUTS[task]
    except KeyError:
        raise EdgeclinError(f"edgeclin.spark has no output columns for task {task!r} yet") from None
