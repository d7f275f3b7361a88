"""The served models: each bundle verified and loaded once, before the port opens.

A ``ServedModel`` holds the torch-free predictor of one bundle, its name in URLs, the digest
that identifies the exact bundle (sha256 of its ``manifest.json``, which lists the sha256 of
every other file), and the metadata both protocols report.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edgeclin import runtime
from edgeclin.artifacts import manifest_digest
from edgeclin.inference import OnnxModel
from edgeclin.logs import get_logger
from edgeclin.schema import Example

log = get_logger(__name__)
# Tokens in one ONNX run. A gathered batch of up to --max-batch texts runs in length-sorted slices
# of at most this many max-length texts: on CPUs larger runs were measured no faster per text (at
# 256 tokens slower: benchmarks/results/serve_load.md) and only cost memory, which grows with the
# largest run the engine has seen.
TOKENS_PER_RUN = 1024
WARM_UP_WORD = "warm"


@dataclass
class ServedModel:
    name: str
    path: Path
    predictor: OnnxModel
    digest: str  # "sha256:<hex>" of manifest.json
    load_seconds: float
    texts_per_run: int = 1  # the slice a batch runs in (see TOKENS_PER_RUN)
    # the one thread that runs this predictor: never two at once (OpenVINO's infer request is not
    # thread-safe), and its memory (malloc arena, engine buffers) is warmed before the port opens
    worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "edgeclin-model"))

    @property
    def is_ner(self) -> bool:
        return self.predictor.strategy.answers_entities

    @property
    def takes_pairs(self) -> bool:
        return bool(self.predictor.text_pair)

    @property
    def version(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]

    def predict_rows(self, examples: list[Example]) -> list[dict]:
        """``edgeclin predict``'s rows for these examples (runs in the batcher's worker thread)."""
        rows, _ = self.predictor.strategy.prediction_rows(self.predictor, examples, batch_size=self.texts_per_run)
        return rows

    def warm_up(self) -> None:
        """Run every token id of the vocabulary once, in runs of the largest shape served.

        The engine's memory is only touched as it is used: the embedding rows of words not seen yet,
        the working memory of a larger shape. Touched now, before the port opens, the process's
        memory under load is what it is at start (measured on MiniLM-L6: ~50 MB that would otherwise
        creep in over the first thousands of notes and look like a leak), and no caller pays the page
        faults.
        """
        model = self.predictor
        vocab, width = model.tokenizer.get_vocab_size(), model.max_length
        rows = [list(range(start, min(start + width, vocab))) for start in range(0, vocab, width)]
        model.run_encoded(rows, [[0] * len(row) for row in rows], self.texts_per_run)
        pair = WARM_UP_WORD if self.takes_pairs else None  # and the whole path once, tokenizer included
        self.predict_rows([Example(text=WARM_UP_WORD, label="", text_pair=pair)])

    def parameters(self) -> dict:
        model = self.predictor
        return {"task": model.task, "labels": list(model.labels), "max_length": model.max_length,
                "truncation": model.truncation, "text_pair": self.takes_pairs,
                **({"threshold": model.spec.threshold} if model.spec.threshold is not None else {}),
                "backend": model.backend, "precision": model.precision, "model_file": model.model_path.name,
                "texts_per_run": self.texts_per_run, "bundle_digest": self.digest}

    def v2_metadata(self) -> dict:
        """The Open Inference Protocol's model metadata; edgeclin's own details are under ``parameters``."""
        inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        if self.takes_pairs:
            inputs.append({"name": "text_pair", "datatype": "BYTES", "shape": [-1]})
        if self.is_ner:
            outputs = [{"name": "entities", "datatype": "BYTES", "shape": [-1]}]
        else:
            outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                       {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(self.predictor.labels)]}]
        return {"name": self.name, "versions": [self.version], "platform": self.predictor.backend,
                "inputs": inputs, "outputs": outputs, "parameters": self.parameters()}


def batch_dependent(predictor: OnnxModel) -> bool:
    """Does a text's answer depend on the other texts in its ONNX run?

    Yes for dynamically quantised int8 graphs: each run quantises its activations with one scale
    computed over the whole batch (padding included), so the same note scored alone or beside
    others can differ (measured on MiniLM-L6 int8: probabilities by up to 0.15, 3 labels in 32).
    A server must not give a note a different answer because of who else called at that moment.
    """
    return predictor.spec.rows_per_run == 1  # set by edgeclin.runtime from the bundle's recipe


def runs_of(predictor: OnnxModel, max_batch: int) -> int:
    """Texts per ONNX run: 1 where answers would depend on the batch, else as many as TOKENS_PER_RUN allows."""
    if batch_dependent(predictor):
        return 1
    return max(1, min(max_batch, TOKENS_PER_RUN // predictor.max_length))


def load_model(name: str, path: Path, *, threads: int | None, backend: str, max_batch: int) -> ServedModel:
    """Verify and load one bundle (the same checks and messages as ``edgeclin predict``), then warm it up."""
    started = time.perf_counter()
    predictor = runtime.load(path, threads=threads, backend=backend)
    digest = "sha256:" + manifest_digest(path)
    texts_per_run = runs_of(predictor, max_batch)
    model = ServedModel(name, Path(path), predictor, digest, 0.0, texts_per_run)
    model.worker.submit(model.warm_up).result()
    model.load_seconds = time.perf_counter() - started
    log.info(f"model {name}: {path} ({predictor.task}, {predictor.describe_choice()}; {texts_per_run} text(s) "
             f"per run), loaded in {model.load_seconds:.2f} s")
    return model


def load_models(specs: list[tuple[str, Path]], *, threads: int | None, backend: str,
                max_batch: int) -> dict[str, ServedModel]:
    return {name: load_model(name, path, threads=threads, backend=backend, max_batch=max_batch)
            for name, path in specs}
