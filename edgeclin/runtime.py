"""Torch-free inference from an exported bundle: onnxruntime + tokenizers, nothing else.

    from edgeclin import runtime
    model = runtime.load("export/my-run")
    result = model.predict(["Chest pain radiating to the left arm ..."])
    result.labels, result.probabilities     # classification
    [e.as_dict() for e in result[0].entities]  # NER bundles: entities with character offsets

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

from edgeclin.encoding import encode_texts, encode_words, pad_arrays, plain_tokenizer, split_words
from edgeclin.errors import EdgeclinError
from edgeclin.tasks import (
    DEFAULT_THRESHOLD,
    MULTI_LABEL,
    SINGLE_LABEL,
    TOKEN,
    bio_spans,
    first_pieces,
    scores_from_logits,
)

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


BACKENDS = ("onnxruntime", "openvino")
FP32_MODEL_FILE = "model.fp32.onnx"  # optional: the fp32 graph, for OpenVINO's bf16 on AMX CPUs


def cpu_signature() -> dict:
    """What a backend measurement depends on: the CPU model and its vector/matrix extensions."""
    from edgeclin.hardware import cpu_flags, cpu_model

    wanted = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "asimd", "sve"}
    return {"model": cpu_model(), "isa": sorted(wanted & cpu_flags())}


def resolve_backend(manifest: dict, backend: str) -> tuple[str, str, str]:
    """(backend, model file, precision) to run a bundle with.

    ``auto`` takes what export measured fastest at equal accuracy (``manifest["runtime"]``) when
    this is the same kind of CPU and that backend is installed; otherwise onnxruntime, which
    runs everywhere.
    """
    if backend != "auto":
        if backend not in BACKENDS:
            raise EdgeclinError(f"unknown backend {backend!r} (choose from auto, {', '.join(BACKENDS)})")
        return backend, MODEL_FILE, "auto"
    measured = manifest.get("runtime") or {}
    preferred = measured.get("preferred") or {}
    if (preferred.get("backend") == "openvino" and openvino_available()
            and measured.get("cpu") == cpu_signature() and preferred.get("model") in manifest.get("files", {})):
        return "openvino", preferred["model"], preferred.get("precision", "auto")
    return "onnxruntime", MODEL_FILE, "auto"


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


def make_engine(model_path: Path, backend: str, threads: int | None = None, precision: str = "auto"):
    if backend == "onnxruntime":
        return OnnxRuntimeEngine(model_path, threads)
    if backend == "openvino":
        if not openvino_available():
            raise EdgeclinError("backend openvino needs the openvino package (pip install openvino)")
        return OpenVinoEngine(model_path, threads, precision)
    raise EdgeclinError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")


@dataclass
class Predictions:
    """Classification results; rows in input order."""

    labels: list[str]  # the predicted label (multi-label: the set joined by ";")
    probabilities: np.ndarray  # (n, n_labels), columns in ``label_names`` order
    label_names: list[str]
    label_sets: list[list[str]] | None = None  # multi-label: the labels at or above ``threshold``
    threshold: float | None = None


@dataclass
class Entity:
    type: str
    start: int  # character offsets in the input text, end exclusive
    end: int
    text: str
    score: float  # mean probability of the entity's word tags

    def as_dict(self) -> dict:
        return {"type": self.type, "start": self.start, "end": self.end, "text": self.text,
                "score": round(self.score, 6)}


@dataclass
class TaggedText:
    """NER result of one text: its words, a tag per word, and the entities they form."""

    text: str
    words: list[str]
    tags: list[str]
    entities: list[Entity]


class OnnxModel:
    """An ONNX encoder with its tokenizer; checks that the two and the labels belong together."""

    def __init__(self, model_path: Path, tokenizer_path: Path, labels: list[str], *, max_length: int,
                 truncation: str = "head", pad_token_id: int = 0, vocab_size: int | None = None,
                 threads: int | None = None, backend: str = "onnxruntime", text_pair: bool = False,
                 precision: str = "auto") -> None:
        from tokenizers import Tokenizer

        self.model_path, self.labels = Path(model_path), labels
        self.max_length, self.truncation, self.pad_token_id = max_length, truncation, pad_token_id
        self.text_pair = text_pair
        self.tokenizer = plain_tokenizer(Tokenizer.from_file(str(tokenizer_path)))
        self.engine = make_engine(self.model_path, backend, threads, precision)
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

    def _run_sorted(self, ids: list[list[int]], types: list[list[int]], batch_size: int) -> list[np.ndarray]:
        """Logits of each encoded row, with length-sorted batches and dynamic padding; input order."""
        order = np.argsort([len(x) for x in ids], kind="stable")
        out: list = [None] * len(ids)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            arrays = pad_arrays([ids[i] for i in rows], [types[i] for i in rows], self.pad_token_id)
            logits = self.engine({name: arrays[name] for name in self.input_names})
            for row, values in zip(rows, logits, strict=True):
                out[row] = values[:len(ids[row])] if values.ndim == 2 else values
        return out


class Classifier(OnnxModel):
    """An ONNX text (or text-pair) classifier: tokenise, batch, run, softmax or sigmoid."""

    def __init__(self, *args, task: str = SINGLE_LABEL, threshold: float | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.task = task
        self.threshold = (threshold if threshold is not None else DEFAULT_THRESHOLD) if task == MULTI_LABEL else None

    def logits(self, texts: list[str], pairs: list[str | None] | None = None, batch_size: int = 32) -> np.ndarray:
        """Raw logits, (n, labels); rows in input order."""
        ids, types, _ = encode_texts(self.tokenizer, texts, pairs, self.max_length, self.truncation)
        if not ids:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return np.stack(self._run_sorted(ids, types, batch_size))

    def predict(self, texts: list[str], pairs: list[str | None] | None = None, batch_size: int = 32) -> Predictions:
        if batch_size < 1:
            raise EdgeclinError("batch size must be at least 1")
        if self.text_pair and (pairs is None or any(p is None for p in pairs)):
            raise EdgeclinError("this model classifies text pairs: give a second text for every text")
        probabilities = scores_from_logits(self.task, self.logits(texts, pairs, batch_size))
        if self.task == MULTI_LABEL:
            sets = [[self.labels[j] for j in np.flatnonzero(row >= self.threshold)] for row in probabilities]
            return Predictions([";".join(s) for s in sets], probabilities, self.labels, sets, self.threshold)
        return Predictions([self.labels[i] for i in probabilities.argmax(axis=1)], probabilities, self.labels)


class Tagger(OnnxModel):
    """An ONNX token classifier (NER): words in, a BIO tag per word and character-offset entities out."""

    task = TOKEN
    truncated = 0  # texts cut to max_length in the last call (their later words are tagged O)

    def word_scores(self, words: list[list[str]], batch_size: int = 32) -> list[np.ndarray]:
        """Tag probabilities at each word's first piece, (words, tags) per text; cut words get none."""
        ids, types, word_ids, self.truncated = encode_words(self.tokenizer, words, self.max_length)
        if not ids:
            return []
        logits = self._run_sorted(ids, types, batch_size)
        out = []
        for row_words, row_word_ids, row_logits in zip(words, word_ids, logits, strict=True):
            scores = np.zeros((len(row_words), len(self.labels)), dtype=np.float32)
            scores[:, self.labels.index("O") if "O" in self.labels else 0] = 1.0  # words cut off: outside
            pairs = first_pieces(row_word_ids)
            if pairs:
                found, positions = (list(x) for x in zip(*pairs, strict=True))
                scores[found] = scores_from_logits(TOKEN, row_logits[positions])
            out.append(scores)
        return out

    def predict_words(self, words: list[list[str]], batch_size: int = 32) -> list[list[str]]:
        """A tag per word of each pre-split text."""
        return [[self.labels[i] for i in s.argmax(axis=1)] for s in self.word_scores(words, batch_size)]

    def predict(self, texts: list[str] | None = None, *, words: list[list[str]] | None = None,
                batch_size: int = 32) -> list[TaggedText]:
        """Entities of raw ``texts`` (split into words as BERT does) or of pre-split ``words``.

        Entity offsets index the text: the raw text, or for ``words`` the words joined by
        single spaces.
        """
        if batch_size < 1:
            raise EdgeclinError("batch size must be at least 1")
        if (texts is None) == (words is None):
            raise EdgeclinError("give either texts or words")
        if texts is not None:
            spans = [split_words(text) for text in texts]
        else:
            texts, spans = [], []
            for row in words:
                offsets, position = [], 0
                for word in row:
                    offsets.append((word, position, position + len(word)))
                    position += len(word) + 1
                texts.append(" ".join(row))
                spans.append(offsets)
        results = []
        all_scores = self.word_scores([[w for w, _, _ in row] for row in spans], batch_size)
        for text, row, scores in zip(texts, spans, all_scores, strict=True):
            tags = [self.labels[i] for i in scores.argmax(axis=1)]
            entities = [Entity(kind, row[first][1], row[last - 1][2], text[row[first][1]:row[last - 1][2]],
                               float(scores[first:last].max(axis=1).mean()))
                        for kind, first, last in bio_spans(tags)]
            results.append(TaggedText(text, [w for w, _, _ in row], tags, entities))
        return results


def bundle_model(path: Path, manifest: dict, *, threads: int | None = None, backend: str = "onnxruntime",
                 model_file: str = MODEL_FILE, precision: str = "auto") -> Classifier | Tagger:
    """The classifier or tagger of a (verified) bundle folder, on one backend and model file."""
    m = manifest
    task = m.get("task", SINGLE_LABEL)
    kwargs = dict(max_length=m["max_length"], truncation=m.get("truncation", "head"),
                  pad_token_id=m.get("pad_token_id", 0), vocab_size=m.get("vocab_size"), threads=threads,
                  backend=backend, text_pair=bool(m.get("text_pair")), precision=precision)
    if task == TOKEN:
        model = Tagger(path / model_file, path / "tokenizer.json", m["labels"], **kwargs)
    else:
        model = Classifier(path / model_file, path / "tokenizer.json", m["labels"], task=task,
                           threshold=m.get("threshold"), **kwargs)
    model.path, model.manifest = path, manifest
    return model


def load(path: str | Path, *, threads: int | None = None, verify: bool = True,
         backend: str = "auto") -> Classifier | Tagger:
    """Open a bundle written by ``edgeclin export`` (checksums verified).

    Returns a ``Classifier`` (``.predict(texts)``) or, for NER bundles, a ``Tagger``
    (``.predict(texts)`` -> entities with character offsets). ``backend``: ``auto`` (the
    fastest at equal accuracy that export measured on this kind of CPU, else onnxruntime),
    ``onnxruntime`` (everywhere) or ``openvino`` (optional package; runs ``model.onnx``).
    """
    if threads is None and os.environ.get("EDGECLIN_THREADS"):
        try:
            threads = int(os.environ["EDGECLIN_THREADS"])
        except ValueError:
            raise EdgeclinError(f"EDGECLIN_THREADS must be a number, not {os.environ['EDGECLIN_THREADS']!r}") from None
    path = Path(path)
    manifest = verify_bundle(path) if verify else json.loads((path / MANIFEST).read_text())
    backend, model_file, precision = resolve_backend(manifest, backend)
    return bundle_model(path, manifest, threads=threads, backend=backend, model_file=model_file, precision=precision)


def evaluate(model: Classifier | Tagger, examples: list, batch_size: int = 32) -> tuple[dict, object]:
    """Task metrics of a bundle's model on labelled examples, and its predictions.

    Classification: (metrics, probabilities); NER: (metrics, predicted tags per example).
    """
    from edgeclin.metrics import task_metrics

    if model.task == TOKEN:
        predictions = model.predict_words([list(e.tokens) for e in examples], batch_size)
        return task_metrics(TOKEN, examples, predictions, model.labels), predictions
    pairs = [e.text_pair for e in examples] if model.text_pair else None
    probabilities = model.predict([e.text for e in examples], pairs, batch_size).probabilities
    return task_metrics(model.task, examples, probabilities, model.labels, model.threshold), probabilities
