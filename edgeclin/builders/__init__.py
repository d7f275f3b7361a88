"""Dataset builders: turn licensed clinical corpora you already hold into edgeclin data folders.

* ``edgeclin data mimic`` (:mod:`edgeclin.builders.mimic`): van Aken et al. (2021) outcome
  prediction from admission notes (MIMIC-III or MIMIC-IV-Note), as ``text,label`` CSV files.
* ``edgeclin data i2b2`` (:mod:`edgeclin.builders.i2b2`): the i2b2/n2c2 2010, 2012 and 2014 NER
  releases as BIO-tagged JSONL (``{"tokens": [...], "tags": [...]}``).
* ``tests/builder_fixtures.py``: tiny files in each release's format with invented text, for
  the tests (no real record is ever copied into this repository).

This module holds what the builders share: opening plain or gzipped files as text streams,
finding columns by name, a bytes-read progress bar, deterministic hashing for splits, and
writing the output folder atomically.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from edgeclin.errors import EdgeclinError
from edgeclin.files import OutputFolder

SPLITS = ("train", "valid", "test")
GZIP_MAGIC = b"\x1f\x8b"


def raise_csv_field_limit() -> None:
    """MIMIC notes are single CSV fields of up to ~100 kB; the csv module's default cap is 128 kB."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # C long is 32 bits on some platforms
            limit //= 2


@contextmanager
def open_text(path: Path) -> Iterator[tuple[io.TextIOWrapper, BinaryIO]]:
    """Open ``path`` as a UTF-8 text stream for the csv module, gunzipping when it is gzip.

    Gzip is recognised by its magic bytes, not the file name. Yields ``(text, raw)``: ``raw``
    is the file on disk, whose position is the number of (compressed) bytes read so far and
    drives the progress bar. Undecodable bytes become U+FFFD rather than stopping a
    multi-hour read on one bad byte; a byte-order mark is dropped.
    """
    if not path.exists():
        raise EdgeclinError(f"file not found: {path}")
    if path.is_dir():
        raise EdgeclinError(f"{path} is a folder; expected a CSV file")
    raw = path.open("rb")
    try:
        stream: BinaryIO = raw
        if raw.read(2) == GZIP_MAGIC:
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
        else:
            raw.seek(0)
        # newline="": the csv module must see the raw line ends to keep quoted multi-line fields intact
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
        yield text, raw
    finally:
        raw.close()


@contextmanager
def open_csv(path: Path) -> Iterator[tuple[Any, list[str], BinaryIO]]:
    """A csv.reader over a (maybe gzipped) file, its header row, and the raw file for progress."""
    raise_csv_field_limit()
    with open_text(path) as (text, raw):
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            raise EdgeclinError(f"{path}: empty file (no header row)") from None
        except (csv.Error, EOFError, OSError, gzip.BadGzipFile) as exc:
            raise EdgeclinError(f"{path}, line 1: cannot read the header row ({exc})") from None
        yield reader, [column.strip() for column in header], raw


def find_columns(path: Path, header: list[str], wanted: tuple[str, ...], what: str) -> dict[str, int]:
    """Map each wanted column name to its index, ignoring case (MIMIC-III ships upper-case
    headers, MIMIC-IV and database exports lower-case); fail naming the missing ones."""
    index = {name.upper(): i for i, name in enumerate(header)}
    missing = [name for name in wanted if name.upper() not in index]
    if missing:
        shown = ", ".join(header[:20]) + (", ..." if len(header) > 20 else "")
        raise EdgeclinError(
            f"{path}, line 1: not {what}: no column {', '.join(missing)} (columns present: {shown or 'none'})"
        )
    return {name: index[name.upper()] for name in wanted}


def has_columns(header: list[str], *names: str) -> bool:
    present = {name.upper() for name in header}
    return all(name.upper() in present for name in names)


@contextmanager
def byte_progress(path: Path, raw: BinaryIO, description: str, enabled: bool) -> Iterator[Callable[[], None]]:
    """A rich progress bar of bytes read from ``raw``; yields ``update()`` (cheap; call it often)."""
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    console = Console(stderr=True)  # standard output stays for the one-line summary
    if not console.is_terminal:  # a log file gets no bar (rich would leave blank lines)
        yield lambda: None
        return
    total = path.stat().st_size
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        calls = 0

        def update() -> None:
            nonlocal calls
            calls += 1
            if calls % 256 == 0:  # raw.tell() and rich's refresh are cheap, but not per row cheap
                bar.update(task, completed=raw.tell())

        yield update
        bar.update(task, completed=total)


def unit_interval(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by ``seed`` and ``key``: the same on every machine and run
    (unlike Python's salted ``hash``), so splits can be decided row by row while streaming."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def write_atomically(output: Path, overwrite: bool, build: Callable[[Path], None]) -> None:
    """Fill a temporary folder with ``build(tmp)`` and rename it to ``output`` only when it succeeded:
    an interrupted or failed build never leaves a folder that looks finished."""
    with OutputFolder(output, overwrite) as folder:
        build(folder.staging)
        folder.publish()


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, for the README of what it built."""
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]).name if argv else "edgeclin"
    if program in ("edgeclin", "__main__.py", "cli.py"):
        program = "edgeclin"
    return shlex.join([program, *argv[1:]])


def describe_file(path: Path) -> str:
    return f"`{path.name}` ({os.path.getsize(path) / 1e6:,.1f} MB)"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in
                                                             range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
