"""Local paths and URIs: Spark reads and writes both; edgeclin checks local ones itself, before the job starts."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse


def has_scheme(path: str) -> bool:
    """hdfs://, s3a://, dbfs:/, file:/ ...; "C:" is a drive letter, not a scheme."""
    return len(urlparse(str(path)).scheme) > 1


def local_path(path: str) -> Path | None:
    """The local file a plain path or a file: URI names; None for other URIs (only Spark can look)."""
    path = str(path)
    if path.startswith("file:"):
        return Path(urlparse(path).path)
    return None if has_scheme(path) else Path(path).expanduser()
