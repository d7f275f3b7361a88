"""Writing so that nothing is half-written and nothing of the user's is lost.

- ``atomic_file(path)``: write a temporary file beside ``path``, fsync it, rename it over.
- ``write_json`` / ``read_json``: JSON through ``atomic_file``.
- ``OutputFolder``: one writer per output folder (a lock file), the result built in a
  temporary folder beside it and renamed into place at the end. A folder that appears at
  the path while the command runs is never touched: publishing is refused instead. An
  existing folder is replaced only when ``--overwrite`` was given.
- ``safe_name``: a name that is safe as a folder name.

Temporary names are recognisable (``.<name>.edgeclin-tmp-<pid>``); the next writer of the
same output removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from edgeclin.errors import EdgeclinError

TMP_TAG = "edgeclin-tmp"
OLD_TAG = "edgeclin-old"
LOCK_TAG = "edgeclin-lock"


def cache_dir() -> Path:
    """edgeclin's own cache: $EDGECLIN_CACHE, else $XDG_CACHE_HOME/edgeclin, else ~/.cache/edgeclin."""
    if os.environ.get("EDGECLIN_CACHE"):
        return Path(os.environ["EDGECLIN_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "edgeclin"


def safe_name(text: str, fallback: str = "model") -> str:
    """The last path component of ``text`` with anything but letters, digits, ``._-`` turned into ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(str(text).rstrip("/")).name).strip("-") or fallback


def temporary_sibling(path: Path, tag: str = TMP_TAG) -> Path:
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as handle:
        os.fsync(handle.fileno())


def os_error(exc: OSError, path: Path) -> EdgeclinError:
    """One line naming the path and the cause (read-only file system, disk full, ...)."""
    return EdgeclinError(f"cannot write {path}: {exc.strerror or exc}")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` whole, else it is removed."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise os_error(exc, path) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_json(path: Path, data) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    with atomic_file(Path(path)) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def check_output_free(path: Path, overwrite: bool, what: str = "output folder") -> None:
    if Path(path).exists() and not overwrite:
        raise EdgeclinError(f"{what} {path} already exists (use --overwrite to replace it)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete this output's temporaries left by edgeclin processes that no longer run."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:{TMP_TAG}|{OLD_TAG})-(\d+)(?:\.work)?$")
    if not path.parent.is_dir():
        return removed
    for sibling in path.parent.iterdir():
        match = pattern.match(sibling.name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(sibling, ignore_errors=True) if sibling.is_dir() else sibling.unlink(missing_ok=True)
            removed.append(sibling)
    return removed


class OutputLock:
    """An exclusive lock on an output path for the life of one command (released if the process dies)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.file = self.path.with_name(f".{self.path.name}.{LOCK_TAG}")
        self._handle = None

    def acquire(self) -> None:
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.file, "a+", encoding="ascii")
        except OSError as exc:
            raise os_error(exc, self.path) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise EdgeclinError(f"{self.path} is being written by another edgeclin command (pid {owner}); "
                                "wait for it to finish or choose another output") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle

    def check_free(self) -> None:
        """Fail as ``acquire`` would if another command holds the lock, without taking it."""
        if self.file.exists():
            self.acquire()
            self.release()

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self.file.unlink()
            self._handle.close()
            self._handle = None


class OutputFolder:
    """Build a folder in a temporary sibling and publish it by renaming, under a lock.

        with OutputFolder(output, overwrite) as out:
            write_things(out.staging)
            out.publish()

    ``staging`` may be given (training builds in ``<output>.partial/``, kept after an
    interruption so that it can resume); otherwise a hidden temporary folder is made and
    removed unless published.
    """

    def __init__(self, path: Path, overwrite: bool = False, *, staging: Path | None = None,
                 what: str = "output folder") -> None:
        self.path, self.overwrite, self.what = Path(path), overwrite, what
        self._own_staging = staging is None
        self.staging = Path(staging) if staging is not None else temporary_sibling(self.path)
        self.lock = OutputLock(self.path)
        self.existed_at_start = False
        self.published = False
        self._scratch: Path | None = None

    def scratch(self) -> Path:
        """A private work folder beside the output for intermediate files, removed when the command ends."""
        if self._scratch is None:
            self._scratch = temporary_sibling(self.path).with_name(temporary_sibling(self.path).name + ".work")
            self._scratch.mkdir(parents=True)
        return self._scratch

    def __enter__(self) -> OutputFolder:
        check_output_free(self.path, self.overwrite, self.what)
        self.lock.acquire()
        try:
            remove_stale_temporaries(self.path)
            self.existed_at_start = self.path.exists()
            if self._own_staging:
                self.staging.mkdir(parents=True)
        except OSError as exc:
            self.lock.release()
            raise os_error(exc, self.path) from None
        return self

    def publish(self) -> Path:
        """Rename the staging folder to the output; an output that appeared meanwhile is refused."""
        if self.path.exists() and not self.existed_at_start:
            kept = self._keep_staging()
            raise EdgeclinError(f"{self.path} appeared while this command ran and was left as it is; "
                                f"the result is in {kept}")
        old = temporary_sibling(self.path, OLD_TAG)
        try:
            if self.path.exists():  # it existed at the start and --overwrite was given
                os.replace(self.path, old)
            os.replace(self.staging, self.path)
        except OSError as exc:
            raise os_error(exc, self.path) from None
        shutil.rmtree(old, ignore_errors=True)
        self.published = True
        return self.path

    def _keep_staging(self) -> Path:
        kept = self.path.with_name(f"{self.path.name}.edgeclin-result-{os.getpid()}")
        os.replace(self.staging, kept)
        self._own_staging = False
        return kept

    def __exit__(self, *exc_info) -> None:
        try:
            if self._own_staging and not self.published:
                shutil.rmtree(self.staging, ignore_errors=True)
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
        finally:
            self.lock.release()


class OutputFile:
    """One writer per output file: written beside it and renamed at the end; an existing file is replaced only
    with ``overwrite``, and one that appeared while the command ran is never touched.

        with OutputFile(path, overwrite) as out:
            out.tmp.write_text(...)
            out.publish()
    """

    def __init__(self, path: Path, overwrite: bool = False, what: str = "output file") -> None:
        self.path, self.overwrite, self.what = Path(path), overwrite, what
        self.tmp = temporary_sibling(self.path)
        self.lock = OutputLock(self.path)
        self.existed_at_start = self.published = False

    def __enter__(self) -> OutputFile:
        check_output_free(self.path, self.overwrite, self.what)
        self.lock.acquire()
        remove_stale_temporaries(self.path)
        self.existed_at_start = self.path.exists()
        return self

    def publish(self) -> Path:
        if self.path.exists() and not self.existed_at_start:
            kept = self.path.with_name(f"{self.path.name}.edgeclin-result-{os.getpid()}")
            os.replace(self.tmp, kept)
            raise EdgeclinError(f"{self.path} appeared while this command ran and was left as it is; "
                                f"the result is in {kept}")
        try:
            _fsync(self.tmp)
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise os_error(exc, self.path) from None
        self.published = True
        return self.path

    def __exit__(self, *exc_info) -> None:
        try:
            if not self.published:
                self.tmp.unlink(missing_ok=True)
        finally:
            self.lock.release()


def replace_folder(folder: Path, fill) -> None:
    """Fill a temporary sibling with ``fill(tmp)`` and swap it in for ``folder`` (used inside a run's own
    working folder, which one process owns)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
