"""One loader for every dataset edgeclin reads.

A dataset is three splits (train/valid/test), each a CSV or JSONL file. Rows become
`Example`s. Three task types share the structures (see ``edgeclin.tasks``):

- single-label classification: ``text[,text_pair],label`` (CSV or JSONL);
- multi-label classification: the label column holds several labels, ``;``-separated in a
  CSV (``--label-sep``) or a JSON list in JSONL; chosen with ``multi_label=True``, or
  automatically when a JSONL label is a list;
- token classification (NER): JSONL with ``tokens`` (words) and ``tags`` (BIO), chosen
  automatically when the files have those keys and no text column.

Files are decoded with ``surrogateescape`` so that a single bad byte does not stop the
read: the row that holds it is reported (file, line, column) or, with
``skip_bad_rows``, dropped and counted.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edgeclin.errors import EdgeclinError
from edgeclin.tasks import MULTI_LABEL, SINGLE_LABEL, TOKEN

SPLITS = ("train", "valid", "test")
SUFFIXES = (".csv", ".jsonl")
DEMO_DATA = "demo"


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


@dataclass
class Columns:
    text: str = "text"
    label: str | None = "label"  # None: unlabelled input (prediction)
    text_pair: str | None = None
    tokens: str = "tokens"  # NER
    tags: str | None = "tags"  # NER; None: unlabelled


@dataclass
class LabelFormat:
    """How labels are read: the task, and the separator of multi-label cells."""

    task: str = SINGLE_LABEL
    separator: str = ";"


@dataclass
class Dataset:
    splits: dict[str, Split]
    labels: list[str] = field(default_factory=list)  # index = class id (NER: tag id)
    task: str = SINGLE_LABEL

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def describe(self) -> dict:
        return {
            name: {
                "source": split.source,
                "rows": len(split.examples),
                "skipped_rows": split.skipped_rows,
                "label_counts": label_counts(split.examples, self.task),
            }
            for name, split in self.splits.items()
        }


def label_counts(examples: list[Example], task: str) -> dict[str, int]:
    """Rows per label (multi-label: rows holding it; NER: entities per type)."""
    if task == MULTI_LABEL:
        counts = Counter(label for e in examples for label in e.label_set)
    elif task == TOKEN:
        counts = Counter(tag[2:] for e in examples for tag in e.tags if tag.startswith("B-"))
    else:
        counts = Counter(e.label for e in examples)
    return dict(sorted(counts.items()))


def find_split_files(folder: Path) -> dict[str, Path]:
    """Map each split name to its file in ``folder`` (``train.csv`` or ``train.jsonl`` ...)."""
    if not folder.exists():
        raise EdgeclinError(f"data folder not found: {folder}")
    if not folder.is_dir():
        raise EdgeclinError(f"--data must be a folder holding train/valid/test files: {folder}")
    files = {}
    for split in SPLITS:
        candidates = [folder / f"{split}{suffix}" for suffix in SUFFIXES]
        present = [p for p in candidates if p.exists()]
        if not present:
            names = " or ".join(p.name for p in candidates)
            raise EdgeclinError(f"{folder}: missing {split} split (expected {names})")
        if len(present) > 1:
            raise EdgeclinError(f"{folder}: both {present[0].name} and {present[1].name}; keep one")
        files[split] = present[0]
    return files


def _has_bad_bytes(value: str) -> bool:
    # surrogateescape maps each undecodable byte to a lone surrogate U+DC80..U+DCFF
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _read_records(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """Return (column names, [(line number, record)]) for a CSV or JSONL file."""
    if not path.exists():
        raise EdgeclinError(f"data file not found: {path}")
    if path.suffix not in SUFFIXES:
        raise EdgeclinError(f"{path}: unsupported file type {path.suffix!r} (use .csv or .jsonl)")
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):  # Excel writes a byte-order mark
        text = text[1:]
    if path.suffix == ".csv":
        # io.StringIO with newline="": only \r and \n end records (str.splitlines would also
        # split on form feeds and U+2028, common in text pasted from PDFs and records systems)
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = list(reader.fieldnames or [])
        if not columns:
            raise EdgeclinError(f"{path}: empty file (no header row)")
        rows = []
        try:
            for record in reader:
                # line_num is the line where the record ended; records may span lines
                rows.append((reader.line_num, record))
        except csv.Error as exc:
            raise EdgeclinError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
        return columns, rows
    rows, columns = [], []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EdgeclinError(
                f"{path}, line {line_no}, column {exc.colno}: invalid JSON ({exc.msg})"
            ) from None
        if not isinstance(record, dict):
            raise EdgeclinError(f"{path}, line {line_no}: expected a JSON object per line")
        for key in record:
            if key not in columns:
                columns.append(key)
        rows.append((line_no, record))
    if not rows:
        raise EdgeclinError(f"{path}: empty file (no rows)")
    return columns, rows


def file_columns(path: Path) -> list[str]:
    """The column names of a CSV or JSONL file."""
    return _read_records(Path(path))[0]


def _first_records(path: Path, count: int = 100) -> list[dict]:
    """The header (CSV) or the first JSON objects (JSONL): enough to tell the task, without a full read.

    Anything malformed is left for ``read_split`` to report with its line and column.
    """
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
        if path.suffix == ".csv":
            header = next(csv.reader(handle), [])
            return [dict.fromkeys(name.lstrip("\ufeff") for name in header)]
        records = []
        for line in handle:
            if len(records) >= count:
                break
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                break
            if isinstance(record, dict):
                records.append(record)
        return records


def detect_task(path: Path, columns: Columns, multi_label: bool = False) -> str:
    """The task a data file holds: NER when it has tokens/tags and no text column."""
    path = Path(path)
    records = _first_records(path) if path.exists() and path.suffix in SUFFIXES else []
    present = {key for record in records for key in record}
    if columns.text not in present and columns.tokens in present:
        return TOKEN
    if multi_label:
        return MULTI_LABEL
    if columns.label and any(isinstance(record.get(columns.label), list) for record in records):
        return MULTI_LABEL
    return SINGLE_LABEL


def _token_example(path: Path, line_no: int, record: dict, columns: Columns) -> tuple[Example | None, str | None]:
    """An NER row, or the reason it is unusable."""
    tokens = record.get(columns.tokens)
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        return None, f"{columns.tokens!r} must be a list of strings"
    if not tokens:
        return None, f"empty {columns.tokens!r} list"
    if any(not t.strip() or any(ch.isspace() for ch in t) for t in tokens):
        return None, f"a word in {columns.tokens!r} is empty or holds whitespace"
    if any(_has_bad_bytes(t) for t in tokens):
        return None, f"text in {columns.tokens!r} is not valid UTF-8"
    tags: list[str] = []
    if columns.tags:
        tags = record.get(columns.tags)
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            return None, f"{columns.tags!r} must be a list of strings"
        if len(tags) != len(tokens):
            return None, f"{len(tokens)} tokens but {len(tags)} tags"
        bad = next((t for t in tags if t != "O" and (t[:2] not in ("B-", "I-") or len(t) < 3)), None)
        if bad is not None:
            return None, f"tag {bad!r} is not BIO (O, B-type or I-type)"
    return Example(text=" ".join(tokens), label="", tokens=tuple(tokens), tags=tuple(tags)), None


def _split_labels(value, separator: str) -> tuple[str, ...]:
    parts = value if isinstance(value, list) else str(value).split(separator)
    return tuple(sorted({str(p).strip() for p in parts if str(p).strip()}))


def read_split(path: Path, name: str, columns: Columns, skip_bad_rows: bool = False,
               label_format: LabelFormat | None = None) -> Split:
    """Read one split file into Examples, checking every row."""
    path = Path(path)
    label_format = label_format or LabelFormat()
    present, records = _read_records(path)
    if label_format.task == TOKEN:
        return _read_token_split(path, name, present, records, columns, skip_bad_rows)
    multi = label_format.task == MULTI_LABEL
    wanted = [c for c in (columns.text, columns.label, columns.text_pair) if c]
    for column in wanted:
        if column not in present:
            raise EdgeclinError(
                f"{path}: no column {column!r} (columns present: {', '.join(present) or 'none'})"
            )
    examples, skipped = [], 0
    for line_no, record in records:
        problem = None
        values = {}
        for column in wanted:
            value = record.get(column)
            if multi and column == columns.label:
                # a row may hold no label at all; an empty cell is an empty set
                values[column] = _split_labels(value if value is not None else "", label_format.separator)
                if any(_has_bad_bytes(label) for label in values[column]):
                    problem = f"text in column {column!r} is not valid UTF-8"
                    break
                continue
            value = "" if value is None else str(value)
            if not value.strip():
                problem = f"empty value in column {column!r}"
            elif _has_bad_bytes(value):
                problem = f"text in column {column!r} is not valid UTF-8"
            if problem:
                break
            values[column] = value.strip() if column == columns.label else value
        if problem:
            if skip_bad_rows:
                skipped += 1
                continue
            raise EdgeclinError(f"{path}, line {line_no}: {problem} (--skip-bad-rows drops such rows)")
        label = values[columns.label] if columns.label else (() if multi else "")
        examples.append(
            Example(
                text=values[columns.text],
                label=";".join(label) if multi else label,
                text_pair=values.get(columns.text_pair) if columns.text_pair else None,
                label_set=label if multi else (),
            )
        )
    if not examples:
        raise EdgeclinError(f"{path}: no usable rows")
    return Split(name=name, source=str(path), examples=examples, skipped_rows=skipped)


def _read_token_split(path: Path, name: str, present: list[str], records: list, columns: Columns,
                      skip_bad_rows: bool) -> Split:
    if path.suffix != ".jsonl":
        raise EdgeclinError(f"{path}: token classification (NER) data must be JSONL with "
                            f"{columns.tokens!r} and {columns.tags!r} lists")
    for column in (columns.tokens, columns.tags):
        if column and column not in present:
            raise EdgeclinError(f"{path}: no key {column!r} (keys present: {', '.join(present) or 'none'})")
    examples, skipped = [], 0
    for line_no, record in records:
        example, problem = _token_example(path, line_no, record, columns)
        if problem:
            if skip_bad_rows:
                skipped += 1
                continue
            raise EdgeclinError(f"{path}, line {line_no}: {problem} (--skip-bad-rows drops such rows)")
        examples.append(example)
    if not examples:
        raise EdgeclinError(f"{path}: no usable rows")
    return Split(name=name, source=str(path), examples=examples, skipped_rows=skipped)


def subsample(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """A deterministic subsample: the same ``limit`` and ``seed`` always pick the same rows.

    Rows are ranked by a hash of (seed, position, text), so the choice does not depend on
    Python's hash randomisation and keeps the file's order among the chosen rows.
    """
    if limit is None or limit >= len(examples):
        return examples

    def rank(item: tuple[int, Example]) -> str:
        index, example = item
        return hashlib.sha256(f"{seed}\0{index}\0{example.text}".encode("utf-8", "surrogateescape")).hexdigest()

    chosen = sorted(sorted(enumerate(examples), key=rank)[:limit], key=lambda item: item[0])
    return [example for _, example in chosen]


def example_labels(example: Example, task: str) -> set[str]:
    """Every label an example uses (NER: its tags)."""
    if task == MULTI_LABEL:
        return set(example.label_set)
    if task == TOKEN:
        return set(example.tags)
    return {example.label}


def check_labels(dataset: Dataset) -> None:
    """Fail on label sets that cannot train or evaluate a model; set ``dataset.labels``."""
    train, task = dataset.splits["train"], dataset.task
    seen = sorted(set().union(*(example_labels(e, task) for e in train.examples)))
    if task == MULTI_LABEL:
        if not seen:
            raise EdgeclinError(f"{train.source}: no labels at all in the training data")
    elif task == TOKEN:
        if not any(tag != "O" for tag in seen):
            raise EdgeclinError(f"{train.source}: no entities (every tag is O) in the training data")
        # every type gets both B- and I- (a rare type may show only B- in training); O first, then
        # each type's B-/I- together: readable ids in config.json
        types = {tag[2:] for tag in seen if tag != "O"}
        seen = ["O"] + [f"{prefix}-{kind}" for kind in sorted(types) for prefix in "BI"]
    elif len(seen) < 2:
        raise EdgeclinError(
            f"{train.source}: only one class ({seen[0]!r}) in the training data; "
            "a classifier needs at least two"
        )
    known = set(seen)
    # NER: a type that never occurs in training can still be scored (every mention a miss); it is
    # common in real corpora (rare PHI types), so it is not an error
    for name in ("valid", "test") if task != TOKEN else ():
        split = dataset.splits[name]
        unseen = sorted(set().union(*(example_labels(e, task) for e in split.examples)) - known)
        if unseen:
            shown = ", ".join(repr(u) for u in unseen[:5])
            raise EdgeclinError(
                f"{split.source}: label(s) {shown} never occur in the training data {train.source}"
            )
    dataset.labels = seen


def load_dataset(
    data: str | Path | None = None,
    *,
    train: str | Path | None = None,
    valid: str | Path | None = None,
    test: str | Path | None = None,
    columns: Columns | None = None,
    skip_bad_rows: bool = False,
    limit: int | None = None,
    seed: int = 42,
    check: bool = True,
    multi_label: bool = False,
    label_separator: str = ";",
) -> Dataset:
    """Load train/valid/test from a folder, explicit files, or the built-in demo data.

    ``data`` may be a folder, or ``"demo"`` (also the default when nothing is given) for
    edgeclin's generated synthetic notes. Explicit ``train``/``valid``/``test`` paths
    override the folder's files one by one. The task is read from the files (NER when they
    hold tokens/tags; multi-label when a JSONL label is a list) or set by ``multi_label``.
    """
    columns = columns or Columns()
    explicit = {"train": train, "valid": valid, "test": test}
    if data is None and not any(explicit.values()):
        data = DEMO_DATA
    task = SINGLE_LABEL
    if str(data) == DEMO_DATA:
        from edgeclin.demo_data import generate_demo_dataset

        splits = generate_demo_dataset(seed=0)
    else:
        files = find_split_files(Path(data)) if data is not None else {}
        for name, path in explicit.items():
            if path is not None:
                files[name] = Path(path)
        missing = [s for s in SPLITS if s not in files]
        if missing:
            raise EdgeclinError(f"no {'/'.join(missing)} file given (use --data DIR or --{missing[0]} FILE)")
        task = detect_task(files["train"], columns, multi_label)
        label_format = LabelFormat(task, label_separator)
        splits = {name: read_split(files[name], name, columns, skip_bad_rows, label_format) for name in SPLITS}
    for split in splits.values():
        split.examples = subsample(split.examples, limit, seed)
    dataset = Dataset(splits=splits, task=task)
    if check:  # training needs a sound label set; checking an exported model does not
        check_labels(dataset)
    return dataset
