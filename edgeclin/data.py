"""The one loader for every dataset edgeclin trains on: three splits (train/valid/test), each a
CSV or JSONL file, read and checked by the task strategy the files hold (``edgeclin.tasks``):

- single-label classification: ``text[,text_pair],label`` (CSV or JSONL);
- multi-label classification: the label column holds several labels, ``;``-separated in a
  CSV (``--label-sep``) or a JSON list in JSONL; chosen with ``multi_label=True``, or
  automatically when a JSONL label is a list;
- token classification (NER): JSONL with ``tokens`` (words) and ``tags`` (BIO), chosen
  automatically when the files have those keys and no text column.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from edgeclin.errors import EdgeclinError
from edgeclin.records import SUFFIXES, first_records
from edgeclin.schema import SPLITS, Columns, Dataset, Example, Split
from edgeclin.tasks import SINGLE_LABEL, Task, get_task, task_of_records

DEMO_DATA = "builtin:demo"  # a name no folder has: a path that exists is always the user's data
PAIR_COLUMN = "text_pair"  # the documented second text of a pair: read as one without --text-pair-col


def find_split_files(folder: Path) -> dict[str, Path]:
    """Map each split name to its file in ``folder`` (``train.csv`` or ``train.jsonl`` ...)."""
    if not folder.exists():
        hint = f" (edgeclin's synthetic notes are --data {DEMO_DATA})" if str(folder) == "demo" else ""
        raise EdgeclinError(f"data folder not found: {folder}{hint}")
    if not folder.is_dir():
        raise EdgeclinError(f"--data must be a folder holding train/valid/test files: {folder}")
    files = {}
    for split in SPLITS:
        candidates = [folder / f"{split}{suffix}" for suffix in SUFFIXES]
        present = [p for p in candidates if p.exists()]
        if not present:
            raise EdgeclinError(f"{folder}: missing {split} split (expected {' or '.join(p.name for p in candidates)})")
        if len(present) > 1:
            raise EdgeclinError(f"{folder}: both {present[0].name} and {present[1].name}; keep one")
        files[split] = present[0]
    return files


def detect_task(path: Path, columns: Columns, multi_label: bool = False) -> Task:
    """The task a data file holds, from its header or first rows."""
    return task_of_records(first_records(Path(path)), columns, multi_label)


def documented_pair_column(data: str | Path | None, train: str | Path | None, columns: Columns,
                           multi_label: bool = False) -> str | None:
    """``text_pair`` when the training file has that column and no pair column was named.

    The documented layout of sentence pairs (``text,text_pair,label``) then trains on both texts
    with nothing but ``--data``, instead of silently on the first text alone.
    """
    if columns.text_pair is not None or (data is None and train is None) or str(data) == DEMO_DATA:
        return None
    path = Path(train) if train is not None else find_split_files(Path(data))["train"]
    records = first_records(path)
    present = {key for record in records for key in record}
    if PAIR_COLUMN not in present or not task_of_records(records, columns, multi_label).reads_pairs:
        return None
    return PAIR_COLUMN


def read_split(path: Path, name: str, columns: Columns, skip_bad_rows: bool = False,
               task: str | None = None) -> Split:
    """Read one split file into Examples, checking every row; ``task`` None: detected from the file."""
    strategy = get_task(task) if task else detect_task(path, columns)
    return strategy.read_split(Path(path), name, columns, skip_bad_rows)


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


def describe(dataset: Dataset) -> dict:
    """Rows, skipped rows and label counts per split, for the run record."""
    task = get_task(dataset.task)
    return {name: {"source": split.source, "rows": len(split.examples), "skipped_rows": split.skipped_rows,
                   "label_counts": task.label_counts(split.examples)}
            for name, split in dataset.splits.items()}


def _split_files(data, explicit: dict[str, str | Path | None]) -> dict[str, Path]:
    files = find_split_files(Path(data)) if data is not None else {}
    files.update({name: Path(path) for name, path in explicit.items() if path is not None})
    missing = [s for s in SPLITS if s not in files]
    if missing:
        raise EdgeclinError(f"no {'/'.join(missing)} file given (use --data DIR or --{missing[0]} FILE)")
    return files


def _required(name: str, detected: Task, path: Path) -> Task:
    required = get_task(name)
    if not required.reads_as(detected):
        raise EdgeclinError(f"{path} holds data for {detected.name}, the model does {required.name}")
    return required


def load_dataset(data: str | Path | None = None, *, train: str | Path | None = None, valid: str | Path | None = None,
                 test: str | Path | None = None, columns: Columns | None = None, skip_bad_rows: bool = False,
                 limit: int | None = None, seed: int = 42, check: bool = True, multi_label: bool = False,
                 label_separator: str | None = None, task: str | None = None) -> Dataset:
    """Load train/valid/test from a folder, explicit files, or the built-in demo data.

    ``data`` may be a folder, or ``"builtin:demo"`` (also the default when nothing is given) for
    edgeclin's generated synthetic notes. Explicit ``train``/``valid``/``test`` paths
    override the folder's files one by one. The task is read from the files (NER when they
    hold tokens/tags; multi-label when a JSONL label is a list) or set by ``multi_label``.
    ``check``: the label set must be able to train a model (an exported model's data need not).
    ``task``: the task the data must hold (a trained model's), instead of what it looks like.
    """
    columns = columns or Columns()
    if label_separator is not None:
        columns = replace(columns, label_sep=label_separator)
    explicit = {"train": train, "valid": valid, "test": test}
    if data is None and not any(explicit.values()):
        data = DEMO_DATA
    if str(data) == DEMO_DATA:
        from edgeclin.demo_data import generate_demo_dataset

        splits, task = generate_demo_dataset(seed=0), get_task(task or SINGLE_LABEL)
    else:
        files = _split_files(data, explicit)
        detected = detect_task(files["train"], columns, multi_label)
        task = _required(task, detected, files["train"]) if task else detected
        splits = {name: task.read_split(files[name], name, columns, skip_bad_rows) for name in SPLITS}
    for split in splits.values():
        split.examples = subsample(split.examples, limit, seed)
    dataset = Dataset(splits=splits, task=task.name)
    if check:
        dataset.labels = task.label_names(dataset)
    return dataset
