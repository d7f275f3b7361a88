"""Typed readers and writers of what edgeclin leaves on disk, one class per artifact.

- ``LabelsFile`` — ``labels.json``: label names in logit order, the task, multi-label's threshold.
- ``RunRecord`` — ``run.json``: every training option (``TrainConfig``), what was resolved from
  them, the data, versions and machine.
- ``RunFolder`` — a trained model on disk (an edgeclin run, a merged folder, or any Hugging
  Face classifier folder), with the one ``input_format`` every stage tokenises with.
- ``PartialRun`` — ``<output>.partial/``, a run being built, and its epoch snapshot layout.
- ``BundleManifest`` — an export bundle's ``manifest.json``.

Readers ignore keys they do not know (as peft's configs do) and keep them when rewriting;
defaults live here and nowhere else.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from edgeclin.errors import EdgeclinError
from edgeclin.files import read_json, write_json
from edgeclin.schema import Columns, InputFormat
from edgeclin.training_config import TrainConfig

RUN_RECORD = "run.json"
METRICS = "metrics.json"
LABELS = "labels.json"
MANIFEST = "manifest.json"
MODEL_CONFIG = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
RECORD_FORMAT = 1
BUNDLE_FORMAT = 1
PLAIN_FOLDER_MAX_LENGTH = 512  # a Hugging Face folder without a run record: up to the model's positions


def _known(cls, values: dict) -> tuple[dict, dict]:
    """Split ``values`` into the fields of dataclass ``cls`` and the rest."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}, {k: v for k, v in values.items() if k not in names}


@dataclass
class LabelsFile:
    labels: list[str]
    task: str = "single_label_classification"
    threshold: float | None = None  # multi-label decision threshold, tuned on validation

    def to_dict(self) -> dict:
        return {"labels": self.labels, "task": self.task,
                **({"threshold": self.threshold} if self.threshold is not None else {})}

    @classmethod
    def from_dict(cls, values: dict) -> LabelsFile:
        return cls(**_known(cls, values)[0])

    @classmethod
    def read(cls, folder: Path) -> LabelsFile | None:
        path = Path(folder) / LABELS
        return cls.from_dict(read_json(path)) if path.is_file() else None

    def write(self, folder: Path) -> None:
        write_json(Path(folder) / LABELS, self.to_dict())


@dataclass
class Resolved:
    """What a run's options resolved to on the machine that trained it."""

    model_path: str = ""
    model_source: str = ""
    init: dict = field(default_factory=lambda: {"init": "pretrained"})
    lr: float = 0.0
    head_lr: float | None = None  # the head's own rate (None: the same as lr)
    device: str = "cpu"
    precision: str = "fp32"
    labels: list[str] = field(default_factory=list)
    task: str = "single_label_classification"
    base_model: str | None = None  # the adapter's base weights (None: the run holds the whole model)
    steps_per_epoch: int = 0
    total_steps: int = 0
    max_grad_norm: float | None = None
    defaults: dict = field(default_factory=dict)  # which defaults applied, and why
    pair_column_found: str | None = None  # read as each example's second text though no option named it
    lr_range_test: dict = field(default_factory=dict)  # --lr auto: what the test saw and chose (lr_range.py)


@dataclass
class RunRecord:
    config: TrainConfig
    resolved: Resolved
    data: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    git_commit: str | None = None
    environment: dict = field(default_factory=dict)
    processes: int = 1
    job: dict = field(default_factory=dict)  # what kind of run, beyond training: e.g. distillation's teacher
    format_version: int = RECORD_FORMAT
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept on rewrite

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        values["config"], values["resolved"] = asdict(self.config), asdict(self.resolved)
        return {**self.extra, **values}

    @classmethod
    def from_dict(cls, values: dict) -> RunRecord:
        known, extra = _known(cls, values)
        known["config"] = TrainConfig.from_dict(known.get("config") or {})
        known["resolved"] = Resolved(**_known(Resolved, known.get("resolved") or {})[0])
        return cls(**known, extra={k: v for k, v in extra.items() if k != "extra"})

    @classmethod
    def read(cls, folder: Path) -> RunRecord | None:
        path = Path(folder) / RUN_RECORD
        return cls.from_dict(read_json(path)) if path.is_file() else None

    def write(self, folder: Path) -> None:
        write_json(Path(folder) / RUN_RECORD, self.to_dict())


SNAPSHOT = "epoch"  # inside <output>.partial/: last/, best/, state.json and the optimizer of one epoch


def partial_dir(output: Path) -> Path:
    return Path(output).with_name(Path(output).name + ".partial")


class PartialRun:
    """A run being built in ``<output>.partial/``; after each finished epoch its snapshot holds
    ``last/`` (a loadable model or adapter folder), ``best/``, the optimizer and ``state.json``."""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
        self.path = partial_dir(self.output)
        self.snapshot = self.path / SNAPSHOT

    @classmethod
    def of(cls, path: Path) -> PartialRun:
        """From the run's output folder or its ``.partial`` folder."""
        path = Path(path)
        return cls(path.with_name(path.name.removesuffix(".partial")) if path.name.endswith(".partial") else path)

    def finished_epoch(self) -> Path | None:
        """The last complete snapshot (recovering one left mid-swap by a crash), or None."""
        old = self.snapshot.with_name(SNAPSHOT + ".old")
        if not self.snapshot.exists() and old.exists():
            os.replace(old, self.snapshot)
        return self.snapshot if (self.snapshot / "state.json").exists() else None

    def state(self) -> dict:
        return read_json(self.snapshot / "state.json")

    def stored_config(self) -> TrainConfig | None:
        """The options of the interrupted run, or None when no epoch finished."""
        return TrainConfig.from_dict(self.state()["config"]) if self.finished_epoch() else None


@dataclass
class RunFolder:
    """A trained model on disk: an edgeclin run, a merged folder, or any HF classifier folder."""

    path: Path
    record: RunRecord | None  # run.json, when edgeclin wrote the folder
    label_file: LabelsFile
    is_adapter: bool
    model_config: dict = field(default_factory=dict)  # config.json (the base's, for an adapter run)

    labels = property(lambda self: self.label_file.labels)
    task = property(lambda self: self.label_file.task)
    threshold = property(lambda self: self.label_file.threshold)
    name = property(lambda self: self.path.resolve().name)

    @property
    def config(self) -> TrainConfig:
        """The training options (defaults for a folder edgeclin did not train)."""
        return self.record.config if self.record else TrainConfig()

    @property
    def input_format(self) -> InputFormat:
        """How inputs are tokenised for this model: as in training, else up to its positions."""
        if self.record is not None:
            return self.record.config.input_format
        from edgeclin.models import max_positions

        positions = max_positions(self.model_config) or PLAIN_FOLDER_MAX_LENGTH
        return InputFormat(min(PLAIN_FOLDER_MAX_LENGTH, positions))

    @property
    def columns(self) -> Columns:
        return self.config.columns


def open_model_folder(path: str | Path) -> RunFolder:
    path = Path(path).resolve()
    if not path.is_dir():
        raise EdgeclinError(f"no such folder: {path}")
    if (path / MANIFEST).is_file():
        raise EdgeclinError(f"{path} is an exported bundle, not a model folder; give the run it was exported from")
    is_adapter = (path / ADAPTER_CONFIG).exists()
    has_model = (path / MODEL_CONFIG).exists() and any(path.glob("*.safetensors"))
    if not is_adapter and not has_model:
        if (path / SNAPSHOT).exists() or path.name.endswith(".partial"):
            raise EdgeclinError(f"{path} is an unfinished run; finish it with edgeclin train --resume")
        raise EdgeclinError(f"{path} holds no model: expected an adapter ({ADAPTER_CONFIG}) or a model "
                            f"({MODEL_CONFIG} + *.safetensors)")
    record = RunRecord.read(path)
    model_config = read_json(path / MODEL_CONFIG) if (path / MODEL_CONFIG).exists() else {}
    return RunFolder(path, record, _labels_of(path, record, model_config, has_model), is_adapter, model_config)


def _labels_of(path: Path, record: RunRecord | None, model_config: dict, has_model: bool) -> LabelsFile:
    from edgeclin.tasks import task_of_model_config

    labels = LabelsFile.read(path)
    if labels is not None:
        return labels
    if not has_model:
        raise EdgeclinError(f"{path}: no {LABELS}")
    id2label = model_config.get("id2label")
    if id2label is None:  # transformers leaves the default (LABEL_0, LABEL_1) out of config.json
        from transformers import AutoConfig

        id2label = {str(k): v for k, v in AutoConfig.from_pretrained(path, trust_remote_code=False).id2label.items()}
    names = [id2label[k] for k in sorted(id2label, key=int)]
    task = record.resolved.task if record else task_of_model_config(model_config).name
    return LabelsFile(names, task)


@dataclass
class BundleManifest:
    """``manifest.json``: how a bundle was made, what it predicts, and the checksum of every file."""

    task: str
    labels: list[str]
    input: InputFormat
    columns: Columns
    pad_token_id: int = 0
    vocab_size: int | None = None
    model_type: str | None = None
    threshold: float | None = None
    source: dict = field(default_factory=dict)
    opset: int | None = None
    optimized: bool = False
    quantization: dict | None = None  # the chosen recipe's settings; None: the fp32 graph
    isa: str | None = None
    gate: dict = field(default_factory=dict)
    chosen: str = ""
    graphs: dict = field(default_factory=dict)  # the extra graphs carried for other engines (edgeclin.graphs)
    runtime: dict | None = None  # the backends measured at export (see selection.resolve_backend)
    files: dict = field(default_factory=dict)  # name -> {"bytes", "sha256"}
    timings: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    git_commit: str | None = None
    created: str = ""
    format_version: int = BUNDLE_FORMAT
    signature: dict | None = None  # HMAC of the content with a key the exporting hospital keeps
    manifest_sha256: str = ""  # of the canonical content: every value that decides a prediction
    extra: dict = field(default_factory=dict)

    def graph_precisions(self) -> dict[str, str]:
        """The graphs the bundle carries and the precision of each (file -> int8 | int8w | fp32)."""
        from edgeclin.engines import FP32_MODEL_FILE, MODEL_FILE

        graphs = {MODEL_FILE: "int8" if self.quantization else "fp32"}
        for file, graph in self.graphs.items():  # int8w: int8 weights, float compute
            graphs[file] = "int8w" if graph.get("weights") == "int8" else "fp32"
        if FP32_MODEL_FILE in self.files:
            graphs[FP32_MODEL_FILE] = "fp32"
        return graphs

    def to_dict(self) -> dict:
        """Format 1's flat layout: max_length, truncation and text_pair at the top level."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "input", "columns")}
        values.update(max_length=self.input.max_length, truncation=self.input.truncation,
                      text_pair=self.input.text_pair, columns=_columns_record(self.columns, self.task))
        for optional in ("threshold", "signature"):
            if values[optional] is None:
                del values[optional]
        return {**self.extra, **values}

    @classmethod
    def from_dict(cls, values: dict) -> BundleManifest:
        known, extra = _known(cls, values)
        fmt = {k: values[k] for k in ("max_length", "truncation", "text_pair") if k in values}
        for key in ("max_length", "truncation", "text_pair", "input"):
            extra.pop(key, None)
        known["input"] = InputFormat(**fmt)
        known["columns"] = _columns_of(values.get("columns") or {})
        return cls(**known, extra=extra)

    @classmethod
    def read(cls, folder: Path) -> BundleManifest:
        return cls.from_dict(read_json(Path(folder) / MANIFEST))

    def write(self, folder: Path, key: bytes | None = None) -> None:
        """Write with the digest of its content, signed with ``key`` when one is given."""
        content = {k: v for k, v in self.to_dict().items() if k not in UNSIGNED}
        content = json.loads(json.dumps(content, default=str))  # exactly what a reader will see
        self.signature = {"algorithm": "hmac-sha256", "value": sign(content, key)} if key else None
        self.manifest_sha256 = content_digest(content)
        write_json(Path(folder) / MANIFEST, self.to_dict())


UNSIGNED = ("manifest_sha256", "signature")  # the checks themselves


def manifest_digest(path: str | Path) -> str:
    """sha256 hex of a bundle's manifest.json: it lists every other file's sha256, so it names the bundle."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        raise EdgeclinError(f"{path} is not an edgeclin bundle (no {MANIFEST})")
    return hashlib.sha256(manifest.read_bytes()).hexdigest()


def content_digest(content: dict) -> str:
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()


def sign(content: dict, key: bytes) -> str:
    return hmac.new(key, canonical_json(content).encode(), hashlib.sha256).hexdigest()


def check_manifest(manifest: dict, where: Path, key: bytes | None = None) -> None:
    """The manifest as written by export: its digest matches, and its signature when a key is given."""
    content = {k: v for k, v in manifest.items() if k not in UNSIGNED}
    if not manifest.get("manifest_sha256"):
        raise EdgeclinError(f"{where}: the manifest has no digest (written by an older edgeclin?); export again")
    if not hmac.compare_digest(str(manifest["manifest_sha256"]), content_digest(content)):
        raise EdgeclinError(f"{where} has changed since export (its content no longer matches its digest)")
    if key is None:
        return
    signature = manifest.get("signature") or {}
    if signature.get("algorithm") != "hmac-sha256":
        raise EdgeclinError(f"{where} is not signed, but a signing key was given: it cannot be proven to be the "
                            "validated bundle")
    if not hmac.compare_digest(str(signature.get("value", "")), sign(content, key)):
        raise EdgeclinError(f"{where}: the signature does not match this key (signed with another key, or changed)")


def _columns_record(columns: Columns, task: str) -> dict:
    from edgeclin.tasks import get_task

    return get_task(task).columns_record(columns)


def _columns_of(record: dict) -> Columns:
    return Columns(text=record.get("text") or "text", label=record.get("label") or "label",
                   text_pair=record.get("text_pair"), tokens=record.get("tokens") or "tokens",
                   tags=record.get("tags") or "tags", label_sep=record.get("multi_label_separator") or ";")


def canonical_json(data) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
