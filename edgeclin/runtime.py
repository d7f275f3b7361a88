"""Torch-free inference from an exported bundle: onnxruntime (or OpenVINO) and tokenizers only.

    from edgeclin import runtime
    model = runtime.load("export/my-run")
    result = model.predict(["Chest pain radiating to the left arm ..."])
    result.labels, result.probabilities        # classification
    [e.as_dict() for e in result[0].entities]  # NER bundles: entities with character offsets
    model.backend, model.precision             # what actually runs

Loading verifies every file against the manifest's sha256, so a changed or incomplete
bundle is refused before it can give wrong answers. This module (and what it imports)
must never import torch or transformers; a test checks it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from edgeclin.artifacts import BUNDLE_FORMAT, LABELS, MANIFEST, BundleManifest, check_manifest
from edgeclin.engines import BACKENDS, FP32_MODEL_FILE, MODEL_FILE, Candidate, get_backend
from edgeclin.errors import EdgeclinError
from edgeclin.inference import ModelSpec, OnnxModel
from edgeclin.selection import resolve_backend
from edgeclin.tasks import Classifier, Entity, Predictions, TaggedText, Tagger, get_task

REQUIRED_FILES = (MODEL_FILE, "tokenizer.json", LABELS)

__all__ = ["BACKENDS", "FP32_MODEL_FILE", "MODEL_FILE", "Classifier", "Entity", "Predictions", "TaggedText",
           "Tagger", "bundle_model", "load", "resolve_backend", "verify_bundle"]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(path: Path) -> dict:
    if not path.is_dir():
        raise EdgeclinError(f"no such bundle folder: {path}")
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise EdgeclinError(f"{path} is not an edgeclin bundle (no {MANIFEST}); create one with edgeclin export")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EdgeclinError(f"{manifest_path}, line {exc.lineno}, column {exc.colno}: invalid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != BUNDLE_FORMAT:
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise EdgeclinError(f"{manifest_path}: unsupported bundle format {found!r}")
    missing = [k for k in ("labels", "max_length", "files") if k not in manifest]
    if missing or not isinstance(manifest["files"], dict):
        raise EdgeclinError(f"{manifest_path}: not a valid manifest (missing {', '.join(missing) or 'files'})")
    return manifest


KEY_FILE_VARIABLE = "EDGECLIN_BUNDLE_KEY_FILE"  # the signing key, for every command that loads bundles


def read_key_file(path: str | Path) -> bytes:
    """A signing key: the bytes of a file (surrounding whitespace ignored), never empty."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise EdgeclinError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    if not key:
        raise EdgeclinError(f"the key file {path} is empty")
    return key


def _key_from_environment() -> bytes | None:
    return read_key_file(os.environ[KEY_FILE_VARIABLE]) if os.environ.get(KEY_FILE_VARIABLE) else None


def verify_bundle(path: Path, key: bytes | None = None) -> BundleManifest:
    """Check the manifest's digest (and signature, given the key), then every file's size and checksum.

    Every value that decides a prediction is in a checksummed file or in the manifest's digested
    content, so a changed byte anywhere is refused.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    check_manifest(manifest, path / MANIFEST, key)
    files = manifest["files"]
    for required in REQUIRED_FILES:
        if required not in files:
            raise EdgeclinError(f"{path / MANIFEST}: the manifest lists no {required}")
    for name, expected in files.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise EdgeclinError(f"{path / MANIFEST}: file name {name!r} points outside the bundle")
        file = path / name
        if not file.exists():
            raise EdgeclinError(f"bundle {path} is incomplete: {name} is missing")
        if not isinstance(expected, dict) or file.stat().st_size != expected.get("bytes") \
                or sha256_of(file) != expected.get("sha256"):
            raise EdgeclinError(f"bundle {path}: {name} has changed since export (checksum mismatch)")
    absent = [f for graph in manifest.get("graphs", {}).values() for f in graph.get("files", []) if f not in files]
    if absent:
        raise EdgeclinError(f"{path / MANIFEST}: the graph files {', '.join(absent)} are not checksummed")
    labels = json.loads((path / LABELS).read_text(encoding="utf-8"))
    if labels.get("labels") != manifest["labels"] or labels.get("task", manifest.get("task")) != manifest.get("task"):
        raise EdgeclinError(f"bundle {path}: {LABELS} and {MANIFEST} disagree on the labels")
    return BundleManifest.from_dict(manifest)


def model_spec(manifest: BundleManifest, graph: str = MODEL_FILE) -> ModelSpec:
    quantization = manifest.quantization or {}
    # bundles from before the flag was recorded: dynamic int8 is the one batch-dependent recipe
    dependent = not quantization.get("batch_independent", quantization.get("mode") != "dynamic")
    one_per_run = graph == MODEL_FILE and dependent
    return ModelSpec(task=manifest.task, labels=manifest.labels, input=manifest.input,
                     pad_token_id=manifest.pad_token_id, vocab_size=manifest.vocab_size,
                     threshold=manifest.threshold, rows_per_run=1 if one_per_run else None)


def make_predictor(model_path: Path, tokenizer_path: Path, spec: ModelSpec, candidate: Candidate, *,
                   threads: int | None = None, device: str = "cpu", bundle: Path | None = None,
                   manifest: BundleManifest | None = None, choice: str = "") -> OnnxModel:
    """The task's predictor (a ``Classifier``, or a ``Tagger`` for NER) of one graph on one engine."""
    engine = get_backend(candidate.backend).engine(Path(model_path), candidate.precision, threads, device)
    task = get_task(spec.task)
    return task.predictor(engine, tokenizer_path, spec, task, model_path=model_path, backend=candidate.backend,
                          bundle=bundle, manifest=manifest, choice=choice)


def bundle_model(path: Path, manifest: BundleManifest, candidate: Candidate | None = None, *,
                 threads: int | None = None, device: str = "cpu", choice: str = "") -> OnnxModel:
    """The predictor of a verified bundle on one candidate (default: onnxruntime on the main graph)."""
    path = Path(path)
    candidate = candidate or Candidate("onnxruntime", MODEL_FILE, manifest.graph_precisions()[MODEL_FILE])
    return make_predictor(path / candidate.model, path / "tokenizer.json", model_spec(manifest, candidate.model),
                          candidate,
                          threads=threads, device=device, bundle=path, manifest=manifest, choice=choice)


def threads_from_environment() -> int | None:
    value = os.environ.get("EDGECLIN_THREADS")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise EdgeclinError(f"EDGECLIN_THREADS must be a number, not {value!r}") from None


def load(path: str | Path, *, threads: int | None = None, verify: bool = True, backend: str = "auto",
         key: bytes | None = None) -> OnnxModel:
    """Open a bundle written by ``edgeclin export`` (checksums verified).

    Returns a ``Classifier`` (``.predict(texts)``) or, for NER bundles, a ``Tagger``
    (``.predict(texts)`` -> entities with character offsets). ``backend``: ``auto`` (the
    fastest at equal accuracy that export measured on this kind of CPU, else onnxruntime), or
    one of ``BACKENDS`` on the main graph. ``.backend`` and ``.precision`` say what runs. ``key``
    (default: the file named by $EDGECLIN_BUNDLE_KEY_FILE): the bundle must carry a valid signature.
    """
    path = Path(path)
    key = key if key is not None else _key_from_environment()
    manifest = verify_bundle(path, key) if verify else BundleManifest.from_dict(_read_manifest(path))
    threads = threads if threads is not None else threads_from_environment()
    choice = resolve_backend(manifest, backend, path, threads)
    return bundle_model(path, manifest, choice.candidate, threads=threads, choice=choice.reason)
