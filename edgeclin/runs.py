"""Run folders: where training writes, and how a half-finished run never looks finished.

A run is built in ``<output>.partial/`` and renamed to ``<output>`` only when it is
complete. After each finished epoch the partial folder holds ``last/`` (a loadable
model or adapter folder) and ``checkpoint/`` (optimizer and loop state), which
``--resume`` continues from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path

from edgeclin.errors import EdgeclinError

TRACKED_LIBRARIES = ("edgeclin", "torch", "transformers", "peft", "accelerate", "tokenizers",
                     "safetensors", "scikit-learn", "numpy", "optimum", "optimum-onnx", "onnxruntime", "onnx")
RUN_RECORD = "run.json"
METRICS = "metrics.json"
LABELS = "labels.json"


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The commit of the edgeclin checkout in use (with "-dirty" when it has edits)."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def default_run_dir(model: str, method: str, root: Path = Path("runs")) -> Path:
    short = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model.rstrip("/")).name).strip("-") or "model"
    return root / f"{short}-{method}-{time.strftime('%Y%m%d-%H%M%S')}"


def partial_dir(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def write_json(path: Path, data) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def check_output_free(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite:
        raise EdgeclinError(f"output folder {output} already exists (use --overwrite to replace it)")
    work = partial_dir(output)
    if work.exists() and not overwrite:
        raise EdgeclinError(
            f"{work} holds an interrupted run: continue it with --resume {output}, "
            "or start afresh with --overwrite"
        )


def save_folder_atomically(folder: Path, save) -> None:
    """Call ``save(tmp)`` to fill a temporary folder, then swap it in place of ``folder``."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def publish(work: Path, output: Path, overwrite: bool) -> None:
    """Rename a finished ``.partial`` folder to its final name."""
    if output.exists():
        if not overwrite:
            raise EdgeclinError(f"output folder {output} appeared during training; the run is in {work}")
        shutil.rmtree(output)
    os.replace(work, output)
