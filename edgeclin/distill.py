"""``edgeclin distill``: a smaller student learns the task from a fine-tuned teacher.

The teacher is a run folder (a LoRA adapter is merged in memory, in fp32) or a merged / HF
folder. The student is, by default, the teacher's own architecture with K of its layers —
evenly spaced, the first included, as DistilBERT was initialised — and with the teacher's
embeddings, pooler and head; or ``--student MODEL``, any model that shares the teacher's
tokenizer. The loss mixes the temperature-scaled KL to the teacher's outputs (times T²,
Hinton et al. 2015) with the task loss on the gold labels (``alpha`` weighs the first); NER
distils each word's first piece, multi-label each label's sigmoid. ``--unlabelled FILE`` adds
in-domain notes without labels, which only the distillation term sees. The teacher's outputs
are computed once, before training. ``--trim-vocab`` cuts a built student's vocabulary to the
pieces of the user's notes (``edgeclin.vocabulary``): most of a small model's file is its
word-embedding table.

The student trains on ``edgeclin.training``'s loop (a ``Job``), so its run folder, record,
metrics, snapshots and ``--resume`` are those of any run, and it exports, predicts and benches
like one.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from edgeclin.artifacts import open_model_folder
from edgeclin.encoding import EncodedSplit
from edgeclin.errors import EdgeclinError
from edgeclin.files import safe_name, temporary_sibling
from edgeclin.logs import get_logger
from edgeclin.training import JOBS, Job, Setup, TrainResult, prepare_run, train
from edgeclin.training_config import TrainConfig
from edgeclin.vocabulary import Vocabulary, changed_rows, trim_embeddings, trim_tokenizer, used_pieces

log = get_logger(__name__)
LAYER_KEY = re.compile(r"\.layer\.(\d+)\.")  # encoder.layer.N. (BERT, RoBERTa, MPNet, MobileBERT), transformer.layer.N.
# the teacher's data and input settings, which a student shares unless told otherwise
DATA_FIELDS = ("data", "train_file", "valid_file", "test_file", "text_col", "label_col", "text_pair_col", "multi_label",
               "label_sep", "skip_bad_rows", "limit", "max_length", "truncation")


@dataclass(frozen=True)
class DistillConfig:
    teacher: str  # run folder, merged folder or HF classifier folder
    layers: int | None = None  # the student: K of the teacher's layers ...
    student: str | None = None  # ... or another model that shares the tokenizer
    temperature: float = 2.0
    alpha: float = 0.5  # weight of the distillation term; 1 - alpha on the gold labels
    hidden_loss: bool = False  # also match mapped layers' hidden states (a student built from the teacher)
    unlabelled: str | None = None  # extra notes without labels, for the distillation term only
    trim_vocab: bool = False  # cut a built student's vocabulary to the pieces of the training notes

    def __post_init__(self) -> None:
        if self.layers is not None and self.student is not None:
            raise EdgeclinError("give --layers K (the teacher's architecture, fewer layers) or --student MODEL, "
                                "not both")
        if self.layers is not None and self.layers < 1:
            raise EdgeclinError("--layers must be at least 1")
        if not self.temperature > 0:
            raise EdgeclinError("--temperature must be above 0")
        if not 0 <= self.alpha <= 1:
            raise EdgeclinError("--alpha must be between 0 (gold labels only) and 1 (teacher only)")
        if self.hidden_loss and self.student is not None:
            raise EdgeclinError("--hidden-loss maps the student's layers onto the teacher's: it needs a student "
                                "built from the teacher (--layers), not --student")
        if self.trim_vocab and self.student is not None:
            raise EdgeclinError("--trim-vocab cuts the vocabulary of a student built from the teacher (--layers), "
                                "not of --student")


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers, the first included: 6 -> 3 keeps 0, 2, 4 (DistilBERT's every other layer)."""
    if not 1 <= student_layers < teacher_layers:
        raise EdgeclinError(f"--layers {student_layers}: the student needs fewer layers than the teacher's "
                            f"{teacher_layers}, and at least one")
    return [int(i * teacher_layers / student_layers) for i in range(student_layers)]


def teacher_model(teacher):
    """The teacher in fp32, eval mode: a LoRA/IA3 adapter merged into its base in memory."""
    from edgeclin.torch_model import load_torch_model

    model = load_torch_model(teacher)
    return (model.merge_and_unload() if teacher.is_adapter else model).eval()


def student_from_teacher(teacher, layers: list[int]):
    """A copy of the teacher with only ``layers`` of its encoder: embeddings, pooler and head copied as they are."""
    import copy

    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)  # DistilBERT maps it to n_layers
    student = type(teacher)(config)
    kept = {}
    for key, value in teacher.state_dict().items():
        match = LAYER_KEY.search(key)
        if match is None:
            kept[key] = value
        elif int(match.group(1)) in layers:
            kept[key.replace(match.group(0), f".layer.{layers.index(int(match.group(1)))}.", 1)] = value
    missing, unexpected = student.load_state_dict(kept, strict=False)
    if missing or unexpected:
        raise EdgeclinError(f"cannot build a student of this architecture ({(missing or unexpected)[:2]} ...)")
    return student.eval()


def _teacher_signature(path: Path) -> str:
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json"))
    return hashlib.sha256(json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]).encode()
                          ).hexdigest()[:12]


def student_folder(teacher_run, model, tokenizer, layers: list[int], vocabulary: Vocabulary | None = None) -> Path:
    """The student's starting weights as a model folder in edgeclin's cache (a LoRA student needs its base on disk)."""
    from edgeclin.files import cache_dir

    cut = f"-vocab{len(vocabulary.kept)}-{vocabulary.digest}" if vocabulary else ""
    folder = cache_dir() / "students" / f"{safe_name(teacher_run.name)}-layers{'-'.join(map(str, layers))}{cut}-" \
        f"{_teacher_signature(teacher_run.path)}"
    if (folder / "edgeclin_student.json").is_file():
        return folder
    tmp = temporary_sibling(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    student = student_from_teacher(model, layers)
    if vocabulary:
        trim_embeddings(student, vocabulary)
        trim_tokenizer(tokenizer, vocabulary, tmp)
    else:
        tokenizer.save_pretrained(tmp)
    student.save_pretrained(tmp, safe_serialization=True)
    described = {"teacher": str(teacher_run.path), "layers": layers,
                 "vocabulary": vocabulary.describe() if vocabulary else None}
    (tmp / "edgeclin_student.json").write_text(json.dumps(described), encoding="utf-8")
    try:
        tmp.replace(folder)
    except OSError:  # another process built the same student first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


class DistillJob(Job):
    """Training a student: the teacher's outputs on every training row, and the mixed loss."""

    kind = "distill"

    def __init__(self, options: DistillConfig) -> None:
        self.options = options
        self.teacher_logits: list[np.ndarray] = []
        self.labelled_rows = 0
        self.teacher_info: dict = {}
        self.teacher = None  # kept for the hidden-state loss only
        self.vocabulary: Vocabulary | None = None  # a trimmed student's pieces, as the teacher's ids
        self._unlabelled: list | None = None  # read once: the vocabulary, its check and training all use them

    @classmethod
    def from_description(cls, described: dict) -> DistillJob:
        return cls(DistillConfig(**described["options"]))

    def describe(self) -> dict:
        return {"kind": self.kind, "options": asdict(self.options)}

    def prepare(self, config: TrainConfig) -> Setup:
        from edgeclin.models import load_tokenizer, resolve_model

        teacher_run = open_model_folder(self.options.teacher)
        model, tokenizer = teacher_model(teacher_run), load_tokenizer(str(teacher_run.path))
        layers = self._layers(model)
        if self.options.trim_vocab:
            self.vocabulary = self._used_pieces(config, tokenizer)
        config.model = str(student_folder(teacher_run, model, tokenizer, layers, self.vocabulary)) if layers else \
            resolve_model(self.options.student).path
        setup = prepare_run(config, self)
        self._check_student(setup, teacher_run, tokenizer)
        self._add_unlabelled(setup)
        self.teacher_logits = _logits(model, setup, self.vocabulary)
        self.teacher = model if self.options.hidden_loss else None
        self.teacher_info = {"teacher": str(teacher_run.path), "teacher_method": teacher_run.config.method,
                             "teacher_test": _recorded_test(teacher_run), "student_layers": layers,
                             "student": self.options.student, "unlabelled_rows": len(self.teacher_logits) -
                             self.labelled_rows, "vocabulary": self._vocabulary_record(setup, tokenizer),
                             **{k: v for k, v in asdict(self.options).items() if k != "teacher"}}
        self.bind(setup)
        return setup

    def _layers(self, model) -> list[int] | None:
        if self.options.student is not None:
            return None
        count = model.config.num_hidden_layers
        return layer_map(count, self.options.layers or max(1, count // 2))

    def _notes(self, dataset, task, config: TrainConfig) -> list[list]:
        """The notes the student learns from: every split but the test split's, and the unlabelled notes."""
        notes = [split.examples for name, split in dataset.splits.items() if name != "test"]
        return notes + ([self._unlabelled_examples(task, config)] if self.options.unlabelled else [])

    def _used_pieces(self, config: TrainConfig, tokenizer) -> Vocabulary:
        from edgeclin.tasks import get_task
        from edgeclin.training import load_run_data

        config, dataset, _ = load_run_data(config)
        task = get_task(dataset.task)
        return used_pieces(tokenizer, task, self._notes(dataset, task, config))

    def _check_student(self, setup: Setup, teacher_run, tokenizer) -> None:
        """The same labels; and the same tokens: the teacher's vocabulary, or a cut one that reads every note alike."""
        if setup.dataset.labels != teacher_run.labels:
            raise EdgeclinError(f"the data's labels differ from the teacher's ({len(setup.dataset.labels)} vs "
                                f"{len(teacher_run.labels)}): distil on the data the teacher was trained for")
        if self.vocabulary is None and setup.tokenizer.get_vocab() != tokenizer.get_vocab():
            raise EdgeclinError(f"the student {self.options.student} has another tokenizer than the teacher: a "
                                "student must read the same tokens")
        if self.vocabulary is not None and any(changed_rows(tokenizer, setup.tokenizer, self.vocabulary, setup.task,
                                                            notes)
                                               for notes in self._notes(setup.dataset, setup.task, setup.config)):
            raise EdgeclinError("--trim-vocab: the cut vocabulary reads some training notes otherwise than the "
                                "teacher; distil without --trim-vocab")

    def _vocabulary_record(self, setup: Setup, tokenizer) -> dict | None:
        """Both sizes, and how many test rows the student reads (within the max length) otherwise than the teacher."""
        if self.vocabulary is None:
            return None
        test = setup.dataset.splits.get("test")
        if test is None:
            return self.vocabulary.describe()
        changed = changed_rows(tokenizer, setup.tokenizer, self.vocabulary, setup.task, test.examples,
                               setup.config.input_format)
        return {**self.vocabulary.describe(), "test_rows": len(test.examples), "test_rows_read_otherwise": changed}

    def _unlabelled_examples(self, task, config: TrainConfig) -> list:
        if self._unlabelled is None:
            self._unlabelled = task.read_split(Path(self.options.unlabelled), "unlabelled",
                                               task.without_labels(config.columns), config.skip_bad_rows).examples
        return self._unlabelled

    def _add_unlabelled(self, setup: Setup) -> None:
        """Append the unlabelled notes to the training split (the gold loss skips them)."""
        train = setup.encoded["train"]
        self.labelled_rows = len(train)
        if not self.options.unlabelled:
            return
        task, config = setup.task, setup.config
        examples = self._unlabelled_examples(task, config)
        extra = task.encode(setup.tokenizer, examples, setup.dataset.label2id, config.input_format)
        setup.encoded["train"] = EncodedSplit(train.input_ids + extra.input_ids,
                                              train.token_type_ids + extra.token_type_ids, train.labels + extra.labels,
                                              train.truncated + extra.truncated, train.lengths + extra.lengths,
                                              train.word_ids + extra.word_ids)

    def loss(self, model, batch: dict, indices):
        import torch

        setup_task, split = self._task, self._split
        rows = indices.tolist()
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        output = model(**inputs, output_hidden_states=self.teacher is not None)
        logits = output.logits
        teacher = _stack([self.teacher_logits[i] for i in rows], logits.shape).to(logits.device, logits.dtype)
        mask = setup_task.distill_mask(split, rows, logits.shape[1] if logits.dim() == 3 else 0)
        kd = setup_task.distill_loss(logits, teacher, self.options.temperature, mask)
        labelled = torch.tensor([i < self.labelled_rows for i in rows], device=logits.device)
        loss = self.options.alpha * kd + (1 - self.options.alpha) * setup_task.gold_loss(logits, batch["labels"],
                                                                                          labelled)
        if self.teacher is not None:
            loss = loss + _hidden_loss(self.teacher, batch, output.hidden_states, self._layer_list, self._to_teacher)
        return loss

    def bind(self, setup: Setup) -> None:
        """What ``loss`` reads, once the run is set up."""
        self._task, self._split = setup.task, setup.encoded["train"]
        self._layer_list = self.teacher_info.get("student_layers") or []
        self._to_teacher = _id_map(self.vocabulary)

    def record(self, setup: Setup) -> dict:
        return self.teacher_info


def _stack(rows: list[np.ndarray], shape) -> object:
    """The teacher's logits of a batch, padded to the student's (NER rows differ in length)."""
    import torch

    if len(shape) == 2:
        return torch.from_numpy(np.stack(rows))
    out = np.zeros((len(rows), shape[1], shape[2]), dtype=np.float32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return torch.from_numpy(out)


def _id_map(vocabulary: Vocabulary | None):
    """The teacher's id of each student id, as a tensor (None: the same vocabulary)."""
    import torch

    return None if vocabulary is None else torch.from_numpy(vocabulary.to_teacher)


def _hidden_loss(teacher, batch: dict, student_states, layers: list[int], to_teacher=None):
    """Mean squared error between each student layer's output and the teacher layer it was copied from."""
    import torch
    import torch.nn.functional as F

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if to_teacher is not None:  # a cut vocabulary: the teacher reads its own ids of the same pieces
        inputs["input_ids"] = to_teacher.to(inputs["input_ids"].device)[inputs["input_ids"]]
    with torch.no_grad():
        teacher_states = teacher(**inputs, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].unsqueeze(-1).to(student_states[0].dtype)
    losses = [F.mse_loss(student_states[j + 1] * mask, teacher_states[i + 1] * mask) for j, i in enumerate(layers)]
    return torch.stack(losses).mean()


def _logits(model, setup: Setup, vocabulary: Vocabulary | None) -> list[np.ndarray]:
    """The teacher's logits of every training row (labelled and not), computed once, on the teacher's own ids."""
    from tqdm.auto import tqdm

    from edgeclin.torch_model import torch_logits

    split = setup.encoded["train"]
    log.info(f"teacher outputs for {len(split)} training rows ...")
    rows = [list(range(i, min(i + 64, len(split)))) for i in range(0, len(split), 64)]
    out = []
    for chunk in tqdm(rows, desc="teacher", disable=not setup.config.progress, leave=False):
        part = EncodedSplit([_teacher_ids(split.input_ids[i], vocabulary) for i in chunk],
                            [split.token_type_ids[i] for i in chunk],
                            [split.labels[i] for i in chunk], 0, [split.lengths[i] for i in chunk],
                            [split.word_ids[i] for i in chunk] if split.word_ids else [])
        out += torch_logits(model, part, setup.task.name, _teacher_ids([setup.pad_id], vocabulary)[0],
                            setup.token_types, batch_size=64)
    return [np.asarray(x, dtype=np.float32) for x in out]


def _teacher_ids(ids: list[int], vocabulary: Vocabulary | None) -> list[int]:
    return ids if vocabulary is None else vocabulary.to_teacher[ids].tolist()


def _recorded_test(run) -> dict | None:
    from edgeclin.files import read_json

    metrics = run.path / "metrics.json"
    return read_json(metrics).get("test") if metrics.exists() else None


def teacher_config(teacher: str | Path, **options) -> TrainConfig:
    """A student's training options: the teacher's data and input settings, the student's own the rest."""
    run = open_model_folder(teacher)
    inherited = {name: getattr(run.config, name) for name in DATA_FIELDS} if run.record else {}
    options = {"method": "full", **inherited, **{k: v for k, v in options.items() if v is not None}}
    if not run.record and options.get("data") is None and options.get("train_file") is None:
        raise EdgeclinError(f"{teacher} has no run record to find its data: give --data DIR")
    return TrainConfig(**options)


def distill(teacher: str | Path, output: str | Path | None = None, *, layers: int | None = None,
            student: str | None = None, temperature: float = 2.0, alpha: float = 0.5, hidden_loss: bool = False,
            unlabelled: str | Path | None = None, trim_vocab: bool = False, **train_options) -> TrainResult:
    """Train a student of ``teacher`` into ``output``; the other options are ``TrainConfig`` fields (the
    teacher's data and max length unless given)."""
    options = DistillConfig(str(Path(teacher).resolve()), layers, student, temperature, alpha, hidden_loss,
                            str(Path(unlabelled).resolve()) if unlabelled else None, trim_vocab)
    from edgeclin.training import default_run_dir

    config = teacher_config(teacher, output=str(output) if output else None, **train_options)
    config = replace(config, output=config.output or str(default_run_dir(str(teacher), f"distill{layers or ''}")))
    return train(config, job=DistillJob(options))


JOBS[DistillJob.kind] = DistillJob
