"""The data structures every stage shares: rows, splits, column names and the input format.

Plain dataclasses with no behaviour beyond their own checks, so that the loader, the demo
data, the encoders and the torch-free runtime can all use them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TRUNCATION_STRATEGIES = ("head", "tail", "head+tail")
DEFAULT_MAX_LENGTH = 256
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Example:
    text: str  # for NER: the words joined by single spaces
    label: str  # single-label; for multi-label the labels joined by ";" (for display)
    text_pair: str | None = None
    label_set: tuple[str, ...] = ()  # multi-label
    tokens: tuple[str, ...] = ()  # NER: the words
    tags: tuple[str, ...] = ()  # NER: one BIO tag per word


@dataclass
class Split:
    name: str
    source: str  # where the rows came from, for messages and the run record
    examples: list[Example]
    skipped_rows: int = 0


@dataclass(frozen=True)
class Columns:
    """Where a file keeps what edgeclin reads."""

    text: str = "text"
    label: str | None = "label"  # None: unlabelled input (prediction)
    text_pair: str | None = None
    tokens: str = "tokens"  # NER
    tags: str | None = "tags"  # NER; None: unlabelled
    label_sep: str = ";"  # between the labels of a multi-label CSV cell


@dataclass(frozen=True)
class ColumnChoice:
    """Column names given on the command line; None: the ones the model was trained with."""

    text: str | None = None
    text_pair: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class InputFormat:
    """How a text becomes model input; the same in training, the run record and the bundle."""

    max_length: int = DEFAULT_MAX_LENGTH
    truncation: str = "head"
    text_pair: bool = False

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(f"truncation must be one of {', '.join(TRUNCATION_STRATEGIES)}")
        if self.max_length < 1:
            raise ValueError("max_length must be at least 1")


@dataclass
class Dataset:
    splits: dict[str, Split]
    labels: list[str] = field(default_factory=list)  # index = class id (NER: tag id)
    task: str = "single_label_classification"  # a name from edgeclin.tasks

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}
