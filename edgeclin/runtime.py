"""Torch-free inference from an exported bundle: onnxruntime + tokenizers, nothing else.

    from edgeclin import runtime
    bundle = runtime.load("export/my-run")
    result = bundle.predict(["Chest pain radiating to the left arm ..."])
    result.labels, result.probabilities

Loading verifies every file against the manifest's sha256, so a changed or incomplete
bundle is refused before it can give wrong answers. This module (and what it imports)
must never import torch or transformers; a test checks it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeclin.encoding import encode_texts, pad_arrays, plain_tokenizer
from edgeclin.errors import EdgeclinError
from edgeclin.metrics import softmax

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1
MODEL_FILE = "model.onnx"
REQUIRED_FILES = (MODEL_FILE, "tokenizer.json", "labels.json")
ALLOWED_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_bundle(path: Path) -> dict:
    """Check the manifest's file list, sizes and checksums; return the manifest."""
    if not path.is_dir():
        raise EdgeclinError(f"no such bundle folder: {path}")
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise EdgeclinError(f"{path} is not an edgeclin bundle (no {MANIFEST}); create one with edgeclin export")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EdgeclinError(f"{manifest_path}, line {exc.lineno}, column {exc.colno}: invalid JSON") from None
    if manifest.get("format_version") != BUNDLE_FORMAT:
        raise EdgeclinError(f"{manifest_path}: unsupported bundle format {manifest.get('format_version')!r}")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    missing_keys = [k for k in ("labels", "max_length", "files") if not isinstance(manifest, dict) or k not in manifest]
    if missing_keys or not isinstance(files, dict):
        raise EdgeclinError(f"{manifest_path}: not a valid manifest (missing {', '.join(missing_keys) or 'files'})")
    for required in REQUIRED_FILES:
        if required not in files:
            raise EdgeclinError(f"{manifest_path}: the manifest lists no {required}")
    for name, expected in files.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise EdgeclinError(f"{manifest_path}: file name {name!r} points outside the bundle")
        file = path / name
        if not file.exists():
            raise EdgeclinError(f"bundle {path} is incomplete: {name} is missing")
        if not isinstance(expected, dict) or file.stat().st_size != expected.get("bytes") \
                or sha256_of(file) != expected.get("sha256"):
            raise EdgeclinError(f"bundle {path}: {name} has changed since export (checksum mismatch)")
    return manifest


@dataclass
class Predictions:
    labels: list[str]
    probabilities: np.ndarray  # (n, n_labels), columns in ``label_names`` order
    label_names: list[str]


BACKENDS = ("onnxruntime", "openvino")


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxRuntimeEngine:
    """Runs an ONNX file with onnxruntime's CPU (or given) execution providers."""

    name = "onnxruntime"

    def __init__(self, model_path: Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(model_path), options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EdgeclinError(f"{model_path}: onnxruntime cannot load it: {exc}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        output = self.session.get_outputs()[0]
        self.output_name, self.output_shape = output.name, list(output.shape or [])

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output_name], feed)[0]


class OpenVinoEngine:
    """Runs the same ONNX file with OpenVINO (torch-free); bf16 where the CPU has AMX/AVX512-BF16."""

    name = "openvino"

    def __init__(self, model_path: Path, threads: int | None = None, precision: str = "auto") -> None:
        import openvino as ov

        core = ov.Core()
        if precision == "auto":
            capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            precision = "bf16" if "BF16" in capabilities else "f32"
        self.precision = precision
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = core.compile_model(core.read_model(str(model_path)), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise EdgeclinError(f"{model_path}: OpenVINO cannot load it: {str(exc).splitlines()[0]}") from None
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        output = self.compiled.outputs[0]
        self.output_name = output.get_any_name()
        self.output_shape = [d.get_length() if d.is_static else None for d in output.get_partial_shape()]
        self.request = self.compiled.create_infer_request()

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        result = self.request.infer(feed)
        return next(iter(result.values())).copy()


def make_engine(model_path: Path, backend: str, threads: int | None = None):
    if backend == "onnxruntime":
        return OnnxRuntimeEngine(model_path, threads)
    if backend == "openvino":
        if not openvino_available():
            raise EdgeclinError("backend openvino needs the openvino package (pip install openvino)")
        return OpenVinoEngine(model_path, threads)
    raise EdgeclinError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


class Classifier:
    """An ONNX sequence classifier with its tokenizer: tokenise, batch, run, softmax."""

    def __init__(self, model_path: Path, tokenizer_path: Path, labels: list[str], *, max_length: int,
                 truncation: str = "head", pad_token_id: int = 0, vocab_size: int | None = None,
                 threads: int | None = None, backend: str = "onnxruntime", text_pair: bool = False) -> None:
        from tokenizers import Tokenizer

        self.model_path, self.labels = Path(model_path), labels
        self.max_length, self.truncation, self.pad_token_id = max_length, truncation, pad_token_id
        self.text_pair = text_pair
        self.tokenizer = plain_tokenizer(Tokenizer.from_file(str(tokenizer_path)))
        self.engine = make_engine(self.model_path, backend, threads)
        self.backend = backend
        self.input_names = self.engine.input_names
        self._check_model_fits(vocab_size)

    def _check_model_fits(self, vocab_size: int | None) -> None:
        """An ONNX file from another model family must not run with this tokenizer and labels."""
        inputs = set(self.input_names)
        if not inputs <= ALLOWED_INPUTS or "input_ids" not in inputs:
            raise EdgeclinError(f"{self.model_path} is not an encoder classifier "
                                f"(inputs: {', '.join(sorted(inputs))})")
        name, shape = self.engine.output_name, self.engine.output_shape
        width = shape[-1] if shape else None
        if name != "logits" or (isinstance(width, int) and width != len(self.labels)):
            raise EdgeclinError(f"{self.model_path} does not fit: its output is {name} {shape}, "
                                f"but there are {len(self.labels)} labels")
        vocab = self.tokenizer.get_vocab_size()
        if vocab_size is not None and vocab > vocab_size:
            raise EdgeclinError(f"{self.model_path}: the tokenizer's vocabulary ({vocab}) is larger than the "
                                f"model's embedding table ({vocab_size}): they come from different models")

    def logits(self, texts: list[str], pairs: list[str | None] | None = None, batch_size: int = 32) -> np.ndarray:
        """Raw logits, with length-sorted batches and dynamic padding; rows in input order."""
        ids, types, _ = encode_texts(self.tokenizer, texts, pairs, self.max_length, self.truncation)
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            arrays = pad_arrays([ids[i] for i in rows], [types[i] for i in rows], self.pad_token_id)
            out[rows] = self.engine({name: arrays[name] for name in self.input_names})
        return out

    def predict(self, texts: list[str], pairs: list[str | None] | None = None, batch_size: int = 32) -> Predictions:
        if batch_size < 1:
            raise EdgeclinError("batch size must be at least 1")
        if self.text_pair and (pairs is None or any(p is None for p in pairs)):
            raise EdgeclinError("this model classifies text pairs: give a second text for every text")
        if not texts:
            return Predictions([], np.zeros((0, len(self.labels)), dtype=np.float32), self.labels)
        logits = self.logits(texts, pairs, batch_size)
        probabilities = softmax(logits)
        return Predictions([self.labels[i] for i in probabilities.argmax(axis=1)], probabilities, self.labels)


class Bundle(Classifier):
    """An exported bundle folder, checked against its manifest before it runs."""

    def __init__(self, path: str | Path, *, threads: int | None = None, verify: bool = True,
                 backend: str = "onnxruntime") -> None:
        self.path = Path(path)
        self.manifest = verify_bundle(self.path) if verify else json.loads((self.path / MANIFEST).read_text())
        m = self.manifest
        super().__init__(self.path / MODEL_FILE, self.path / "tokenizer.json", m["labels"],
                         max_length=m["max_length"], truncation=m.get("truncation", "head"),
                         pad_token_id=m.get("pad_token_id", 0), vocab_size=m.get("vocab_size"), threads=threads,
                         backend=backend, text_pair=bool(m.get("text_pair")))


def load(path: str | Path, *, threads: int | None = None, verify: bool = True,
         backend: str = "onnxruntime") -> Bundle:
    """Open a bundle written by ``edgeclin export`` (checksums verified).

    ``backend``: ``onnxruntime`` (default, everywhere) or ``openvino`` (optional package;
    runs the same ONNX file, in bf16 on CPUs with AMX / AVX512-BF16).
    """
    if threads is None and os.environ.get("EDGECLIN_THREADS"):
        try:
            threads = int(os.environ["EDGECLIN_THREADS"])
        except ValueError:
            raise EdgeclinError(f"EDGECLIN_THREADS must be a number, not {os.environ['EDGECLIN_THREADS']!r}") from None
    return Bundle(path, threads=threads, verify=verify, backend=backend)
