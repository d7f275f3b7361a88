"""Reading the rows to predict with Spark's own readers: Parquet (a file or a folder of part files), CSV, JSONL."""

from __future__ import annotations

from pathlib import Path

from edgeclin.errors import EdgeclinError
from edgeclin.spark.paths import local_path

READERS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}


def reader_of(path: str) -> str:
    """The reader a path's suffix asks for; a folder without one is read as Parquet part files."""
    suffix = Path(path.rstrip("/")).suffix.lower()
    if suffix in READERS:
        return READERS[suffix]
    local = local_path(path)
    if local is not None and local.is_dir():
        return "parquet"
    raise EdgeclinError(f"{path}: unsupported data type {suffix or '(no suffix)'!r} (use .parquet, .csv or .jsonl, "
                        "or a folder of Parquet files)")


def check_data(path: str) -> str:
    """The reader for ``path``, once a local one is known to exist (checked before Spark starts; a glob
    pattern such as ``notes/*.parquet`` is left to Spark)."""
    local = local_path(path)
    if local is not None and not local.exists() and not any(ch in str(local) for ch in "*?[{"):
        raise EdgeclinError(f"data file not found: {path}")
    return reader_of(path)


def read_data(session, path: str):
    """A DataFrame of the file's rows; every CSV column stays a string, as edgeclin predict reads it."""
    path = str(path)
    kind = check_data(path)
    reader = session.read
    if kind == "csv":
        # RFC 4180 as Python's csv module writes it: doubled quotes, newlines inside quoted notes
        reader = reader.options(header=True, multiLine=True, escape='"', mode="PERMISSIVE")
    try:
        return getattr(reader, kind)(path)
    except Exception as exc:  # AnalysisException and friends: keep the first line only
        raise EdgeclinError(f"{path}: Spark cannot read it as {kind} ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
