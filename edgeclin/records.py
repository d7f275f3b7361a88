"""Reading CSV and JSONL files into raw records, with file, line and column in every error.

Files are decoded with ``surrogateescape`` so that one bad byte does not stop the read: the
row that holds it is reported (file, line, column) or, with ``skip_bad_rows``, dropped and
counted. What a record means (text and label, words and tags) is up to the task strategies.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

from edgeclin.errors import EdgeclinError
from edgeclin.schema import Columns, Example, Split

SUFFIXES = (".csv", ".jsonl")
Record = tuple[int, dict]  # (line number, the row's fields)


def has_bad_bytes(value: str) -> bool:
    # surrogateescape maps each undecodable byte to a lone surrogate U+DC80..U+DCFF
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def read_records(path: Path) -> tuple[list[str], list[Record]]:
    """(column names, [(line number, record)]) of a CSV or JSONL file."""
    path = Path(path)
    if not path.exists():
        raise EdgeclinError(f"data file not found: {path}")
    if path.suffix not in SUFFIXES:
        raise EdgeclinError(f"{path}: unsupported file type {path.suffix!r} (use .csv or .jsonl)")
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):  # Excel writes a byte-order mark
        text = text[1:]
    return _csv_records(path, text) if path.suffix == ".csv" else _jsonl_records(path, text)


# cells that spreadsheets and data frames write for "no value": never a class of their own
MISSING_MARKERS = frozenset({"nan", "null", "none", "n/a", "na", "#n/a", "?", "-"})
FIELD_LIMIT = 16 * 2**20  # characters in one CSV field: a long clinical note is ~100k; the csv module stops at 128k
MALFORMED = "\x00malformed"  # a CSV record's own problem (wrong number of fields), reported with its line
DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}


def _csv_header(path: Path, reader) -> list[str]:
    columns = next(reader, [])
    if not columns:
        raise EdgeclinError(f"{path}: empty file (no header row)")
    if any(has_bad_bytes(c) for c in columns):
        raise EdgeclinError(f"{path}, line 1: the header is not UTF-8 (a latin-1 or Windows-1252 file?); "
                            "save the file as UTF-8")
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise EdgeclinError(f"{path}, line 1: column {twice[0]!r} appears twice in the header")
    return columns


def _field_count_problem(row: list[str], columns: list[str]) -> str | None:
    """A record with more or fewer fields than the header: an unquoted comma, or an unterminated quote."""
    if len(row) > len(columns):
        return (f"{len(row)} fields, but the header has {len(columns)} (an unquoted comma in a text? "
                "put the field in double quotes)")
    if len(row) < len(columns):
        hint = " (an unterminated quote swallowed the lines after it?)" if any("\n" in v for v in row) else ""
        return f"{len(row)} field(s), but the header has {len(columns)}{hint}"
    return None


def _csv_records(path: Path, text: str) -> tuple[list[str], list[Record]]:
    # io.StringIO with newline="": only \r and \n end records (str.splitlines would also split on
    # form feeds and U+2028, common in text pasted from PDFs and records systems)
    csv.field_size_limit(FIELD_LIMIT)
    reader = csv.reader(io.StringIO(text, newline=""))
    columns = _csv_header(path, reader)
    rows, start = [], reader.line_num + 1
    try:
        for row in reader:
            if row:  # a blank line is no record
                problem = _field_count_problem(row, columns)
                record = {MALFORMED: problem} if problem else dict(zip(columns, row, strict=True))
                rows.append((start, record))  # the line where the record starts (records may span lines)
            start = reader.line_num + 1
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise EdgeclinError(f"{path}, line {start}: a field longer than {FIELD_LIMIT:,} characters "
                                "(an unterminated quote?)") from None
        raise EdgeclinError(f"{path}, line {start}: malformed CSV ({exc})") from None
    return columns, rows


def _jsonl_records(path: Path, text: str) -> tuple[list[str], list[Record]]:
    rows, columns = [], []
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EdgeclinError(f"{path}, line {line_no}, column {exc.colno}: invalid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise EdgeclinError(f"{path}, line {line_no}: expected a JSON object per line")
        columns.extend(key for key in record if key not in columns)
        rows.append((line_no, record))
    if not rows:
        raise EdgeclinError(f"{path}: empty file (no rows)")
    return columns, rows


def first_records(path: Path, count: int = 100) -> list[dict]:
    """The header (CSV) or the first JSON objects (JSONL): enough to tell the task, without a full read.

    Anything malformed is left for the full read to report with its line and column.
    """
    path = Path(path)
    if not path.exists() or path.suffix not in SUFFIXES:
        return []
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


def require_columns(path: Path, present: list[str], wanted: list[str], kind: str = "column") -> None:
    for column in wanted:
        if column not in present:
            hint = next((f"; the file looks {name}-separated: edgeclin reads comma-separated CSV"
                         for mark, name in DELIMITERS.items() if len(present) == 1 and mark in present[0]), "")
            raise EdgeclinError(f"{path}: no {kind} {column!r} ({kind}s present: {', '.join(present) or 'none'}){hint}")


RowParser = Callable[[dict], tuple[Example | None, str | None]]  # record -> (example, or the reason it is unusable)


def parse_rows(path: Path, records: list[Record], parse: RowParser, skip_bad_rows: bool) -> tuple[list[Example], int]:
    """Examples of every usable record; a bad one stops the read (file and line) or is skipped and counted."""
    examples, skipped = [], 0
    for line_no, record in records:
        example, problem = (None, record[MALFORMED]) if MALFORMED in record else parse(record)
        if problem:
            if skip_bad_rows:
                skipped += 1
                continue
            raise EdgeclinError(f"{path}, line {line_no}: {problem} (--skip-bad-rows drops such rows)")
        examples.append(example)
    if not examples:
        raise EdgeclinError(f"{path}: no usable rows")
    return examples, skipped


def text_value(record: dict, column: str) -> tuple[str, str | None]:
    """A text cell and the reason it is unusable (empty, or not UTF-8), if it is."""
    value = record.get(column)
    value = "" if value is None else str(value)
    if not value.strip():
        return value, f"empty value in column {column!r}"
    if has_bad_bytes(value):
        return value, f"text in column {column!r} is not valid UTF-8"
    return value, None


def text_example(record: dict, columns: Columns) -> tuple[Example | None, str | None]:
    """The text (and second text) of a record, unlabelled; or the reason the row is unusable."""
    text, problem = text_value(record, columns.text)
    if problem:
        return None, problem
    pair = None
    if columns.text_pair:
        pair, problem = text_value(record, columns.text_pair)
        if problem:
            return None, problem
    return Example(text=text, label="", text_pair=pair), None


def read_split_with(path: Path, name: str, wanted: list[str], parse: RowParser, skip_bad_rows: bool,
                    kind: str = "column") -> Split:
    """Read a file, check that it has the ``wanted`` columns, and parse every row into an Example."""
    present, records = read_records(path)
    require_columns(path, present, wanted, kind)
    examples, skipped = parse_rows(path, records, parse, skip_bad_rows)
    return Split(name=name, source=str(path), examples=examples, skipped_rows=skipped)
