"""Where a result came from: library versions and the edgeclin commit, for every record edgeclin writes."""

from __future__ import annotations

import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

TRACKED_LIBRARIES = ("edgeclin", "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors",
                     "scikit-learn", "numpy", "optimum", "optimum-onnx", "onnxruntime", "onnx", "openvino")


def library_versions(names: tuple[str, ...] = TRACKED_LIBRARIES) -> dict[str, str | None]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@cache
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
