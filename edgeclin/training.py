"""``edgeclin train``: fine-tune an encoder (LoRA, full or another PEFT method).

The task (``edgeclin.tasks``) comes from the data: single- and multi-label classification of
texts or text pairs, and token classification (NER). The loop is plain PyTorch driven by
``accelerate``, so the same code runs on a CPU, one GPU, or several GPUs under
``accelerate launch`` (data parallel) without changes.

A run is built in ``<output>.partial/`` and renamed to ``<output>`` only when complete; after
each finished epoch the partial folder holds a snapshot (``artifacts.PartialRun``) that
``--resume`` continues from, reaching the same result as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from edgeclin.artifacts import (
    METRICS,
    LabelsFile,
    PartialRun,
    Resolved,
    RunRecord,
    partial_dir,
)
from edgeclin.data import DEMO_DATA, describe, documented_pair_column, load_dataset
from edgeclin.defaults import FIELDS as DEFAULTED_FIELDS
from edgeclin.defaults import fill_defaults
from edgeclin.encoding import EncodedSplit, length_sorted_batches
from edgeclin.errors import EdgeclinError
from edgeclin.files import OutputFolder, OutputLock, check_output_free, read_json, replace_folder, safe_name, write_json
from edgeclin.hardware import environment, peak_rss_mb, resolve_device, resolve_precision
from edgeclin.methods import get_method
from edgeclin.model_card import run_card
from edgeclin.models import count_parameters, load_classifier_with_info, load_tokenizer, max_positions, resolve_model
from edgeclin.provenance import git_commit, library_versions
from edgeclin.tasks import get_task
from edgeclin.training_config import TrainConfig


@functools.cache
def _log():
    """This module's logger through accelerate's main-process adapter: each message once, from the main process
    (accelerate's state exists by the time anything is said), without the adapter's "[RANK 0]" prefix."""
    import logging

    from accelerate.logging import MultiProcessAdapter

    class MainProcessOnly(MultiProcessAdapter):
        def process(self, msg, kwargs):
            kwargs.setdefault("stacklevel", 2)
            return msg, kwargs

    return MainProcessOnly(logging.getLogger(__name__), {})


class DegenerateRun(EdgeclinError):
    """The run finished, but its best epoch predicts one answer for everything."""

    exit_code = 3


@dataclass
class TrainResult:
    output: Path
    metrics: dict = field(default_factory=dict)
    # rows in the test file's order: class probabilities; for NER the predicted tags per row
    test_probabilities: np.ndarray | list | None = None


@dataclass
class LoopState:
    """What the loop carries from epoch to epoch; saved in state.json so that --resume continues exactly."""

    epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = -1.0
    best_degenerate: bool = True  # until an epoch that is not
    bad_epochs: int = 0
    train_seconds: float = 0.0
    samples_seen: int = 0
    stopped_early: bool = False
    best_threshold: float | None = None  # multi-label: tuned on validation at the best epoch
    initial_loss: float | None = None  # mean loss of the first steps: a loss back above it means divergence
    scheduler: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict) -> LoopState:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class Job:
    """What kind of run this is: plain training here; ``edgeclin.distill`` adds a teacher. A job prepares the run
    (data, model) and gives the training loss of a batch; the loop, snapshots and records are the same for all."""

    kind = "train"

    @classmethod
    def from_description(cls, described: dict) -> Job:
        return cls()

    def describe(self) -> dict:
        """What ``--resume`` needs to rebuild this job (saved in each epoch's state)."""
        return {"kind": self.kind}

    def prepare(self, config: TrainConfig) -> Setup:
        return prepare_run(config, self)

    def loss(self, model, batch: dict, indices):
        """The loss of one batch (``indices``: the rows of the training split it holds)."""
        return model(**batch).loss

    def record(self, setup: Setup) -> dict:
        """What the run record keeps about the job (empty for plain training)."""
        return {}


# A prompt encoder's own weights, in snapshots only: peft's adapter file holds what the encoder
# outputs (P-tuning's MLP already applied), which is right for inference but not for a model that
# goes on running the encoder (the test of the best epoch, a resumed run).
PROMPT_ENCODER = "prompt_encoder.safetensors"
JOB_MODULES = {"distill": "edgeclin.distill"}  # kind -> the module that defines (and registers) its Job
JOBS: dict[str, type[Job]] = {"train": Job}


def job_from(described: dict | None) -> Job:
    """The job of an interrupted run, from its saved state."""
    import importlib

    described = described or {"kind": "train"}
    if described["kind"] not in JOBS and described["kind"] in JOB_MODULES:
        importlib.import_module(JOB_MODULES[described["kind"]])
    if described["kind"] not in JOBS:
        raise EdgeclinError(f"cannot resume a {described['kind']!r} run with this edgeclin")
    return JOBS[described["kind"]].from_description(described)


@dataclass
class Setup:
    """Everything a run needs, prepared (and checked) before any folder is written."""

    config: TrainConfig
    dataset: object
    encoded: dict[str, EncodedSplit]
    tokenizer: object
    model: object
    resolved: Resolved
    trainable: int
    total: int
    job: Job = field(default_factory=Job)
    new_weights: list[str] = field(default_factory=list)  # weights that started random: part of the head

    task = property(lambda self: get_task(self.dataset.task))
    pad_id = property(lambda self: self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
    token_types = property(lambda self: "token_type_ids" in self.tokenizer.model_input_names)  # DistilBERT: none


def default_run_dir(model: str, method: str, root: Path = Path("runs")) -> Path:
    return root / f"{safe_name(model)}-{method}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(config: TrainConfig | None = None, *, resume: str | Path | None = None, progress: bool | None = None,
          job: Job | None = None, **options) -> TrainResult:
    """Fine-tune a classifier and write a run folder; returns its path and metrics.

    Either pass a ``TrainConfig`` or its fields as keywords: ``train(data="...", method="full")``.
    ``resume`` continues an interrupted run from its last finished epoch, with its own options
    (``progress`` may be changed). ``job``: another kind of run on the same loop (``edgeclin.distill``).
    """
    if resume is not None:
        return _resume(Path(resume), progress)
    config = config or TrainConfig(**options)
    config.check()
    # absolute data paths in the run record: merge and export find the data from anywhere
    for name in ("data", "train_file", "valid_file", "test_file"):
        value = getattr(config, name)
        if value and value != DEMO_DATA and Path(value).exists():
            setattr(config, name, str(Path(value).resolve()))
    if not config.output and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # each process would pick its own time-stamped default folder
        raise EdgeclinError("with several processes (accelerate launch), give the run folder with -o/--output")
    output = Path(config.output) if config.output else default_run_dir(config.model, config.method)
    config.output = str(output)
    check_output_free(output, config.overwrite)
    OutputLock(output).check_free()  # a run to the same folder in progress: say so, not "interrupted"
    work = partial_dir(output)
    if work.exists() and not config.overwrite:
        raise EdgeclinError(f"{work} holds an interrupted run: continue it with --resume {output}, "
                            "or start afresh with --overwrite")
    return _run(config, output, None, job or Job())


def can_resume(output: Path, config: TrainConfig) -> bool:
    """Does ``output`` have an interrupted run with these options (all but where and how it reports)?"""
    stored = PartialRun(output).stored_config() if partial_dir(output).is_dir() else None
    ignored = ("output", "overwrite", "progress")
    # an option left to its default (None) matches the value the run filled in for it
    return stored is not None and all(getattr(stored, k) == v or (v is None and k in DEFAULTED_FIELDS)
                                      for k, v in asdict(config).items() if k not in ignored)


def _resume(path: Path, progress: bool | None) -> TrainResult:
    partial = PartialRun.of(path.resolve())
    OutputLock(partial.output).check_free()  # in use: say so; left by a killed run: cleared
    snapshot = partial.finished_epoch() if partial.path.exists() else None
    if snapshot is None:
        if (partial.output / METRICS).exists():
            raise EdgeclinError(f"{partial.output} is a finished run; nothing to resume")
        if partial.path.exists():
            raise EdgeclinError(f"nothing to resume: {partial.path} has no finished epoch (it was stopped during "
                                f"the first); start again with --overwrite -o {partial.output}")
        raise EdgeclinError(f"nothing to resume: {partial.path} has no finished epoch")
    state = partial.state()
    config = TrainConfig.from_dict(state["config"])
    started = RunRecord.read(partial.path)
    if started is not None:  # saved before the defaults table filled these: what the run started with
        config.lr = config.lr if config.lr is not None else started.resolved.lr
        config.head_lr = config.head_lr if config.head_lr is not None else started.resolved.head_lr or config.lr
    if progress is not None:
        config.progress = progress
    return _run(config, partial.output, LoopState.from_dict(state), job_from(state.get("job")))


def load_run_data(config: TrainConfig):
    """The run's dataset, and the config reading a file's documented pair column (and which one it found)."""
    config, pair_column_found = _with_pair_column(config)
    return config, _load_data(config), pair_column_found


def _load_data(config: TrainConfig):
    return load_dataset(config.data, train=config.train_file, valid=config.valid_file, test=config.test_file,
                        columns=config.columns, skip_bad_rows=config.skip_bad_rows, limit=config.limit,
                        seed=config.seed, multi_label=config.multi_label)


def _with_pair_column(config: TrainConfig) -> tuple[TrainConfig, str | None]:
    """The config reading the file's ``text_pair`` column as each example's second text, if it has one."""
    found = documented_pair_column(config.data, config.train_file, config.columns, config.multi_label)
    return (config, None) if found is None else (replace(config, text_pair_col=found), found)


def prepare_run(config: TrainConfig, job: Job | None = None) -> Setup:
    """Data, tokenizer and model: everything that can fail on the user's input fails here, before any write."""
    method = get_method(config.method)
    device = resolve_device(config.device)
    config, dataset, pair_column_found = load_run_data(config)
    task = get_task(dataset.task)
    model_ref = resolve_model(config.model, init=config.init)
    _set_seed(config.seed)
    tokenizer = load_tokenizer(model_ref.path)
    loaded = load_classifier_with_info(model_ref.path, dataset.labels, task=task.name)
    # the task and the model's size are known only now
    config, defaults = fill_defaults(config, task.name, count_parameters(loaded.model)[1])
    encoded = {name: task.encode(tokenizer, split.examples, dataset.label2id, config.input_format)
               for name, split in dataset.splits.items()}
    _check_max_length(loaded.model.config.to_dict(), config.max_length)
    model = method.prepare(loaded.model, config, task=task, new_weights=loaded.new_weights)
    trainable, total = count_parameters(model)
    resolved = Resolved(model_path=model_ref.path, model_source=model_ref.source, init=model_ref.init,
                        lr=config.lr, head_lr=config.head_lr, device=device, defaults=defaults,
                        precision=resolve_precision(config.precision, device), labels=dataset.labels, task=task.name,
                        base_model=model_ref.path if method.saves_adapter else None,
                        max_grad_norm=config.max_grad_norm or None, pair_column_found=pair_column_found)
    return Setup(config, dataset, encoded, tokenizer, model, resolved, trainable, total, job or Job(),
                 new_weights=list(loaded.new_weights))


def _set_seed(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def _check_max_length(model_config: dict, max_length: int) -> None:
    positions = max_positions(model_config)
    if positions is not None and max_length > positions:
        raise EdgeclinError(f"--max-length {max_length} is longer than the model takes ({positions} tokens)")


def _report_data(setup: Setup) -> None:
    """Say what was dropped and what was cut, before training starts: warnings, shown even when quiet."""
    if setup.resolved.pair_column_found:
        _log().info(f"reading column {setup.resolved.pair_column_found!r} as the second text of each pair "
                    f"(--text-pair-col names another)")
    for split in setup.dataset.splits.values():
        if split.skipped_rows:
            _log().warning(f"{split.source}: skipped {split.skipped_rows} bad rows (--skip-bad-rows)")
    cut = {name: enc.truncated for name, enc in setup.encoded.items() if enc.truncated}
    if cut:
        counts = ", ".join(f"{name} {n} of {len(setup.encoded[name])}" for name, n in cut.items())
        config = setup.config
        _log().warning(f"inputs longer than {config.max_length} tokens, cut ({config.truncation}): {counts}")


class Precision:
    """Mixed precision by torch's own autocast (and a gradient scaler for fp16).

    Not through accelerate's ``mixed_precision``: accelerate keeps it in a process-wide state
    that cannot change, and ``train()`` is called again in one process with other settings
    (sweeps, tests).
    """

    def __init__(self, precision: str, device: str) -> None:
        import torch

        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device) if precision == "fp16" else None

    def autocast(self):
        import torch

        return torch.autocast(device_type=self.device, dtype=self.dtype) if self.dtype else contextlib.nullcontext()

    def backward(self, accelerator, loss) -> None:
        accelerator.backward(self.scaler.scale(loss) if self.scaler else loss)

    def step(self, accelerator, model, optimizer, max_norm: float | None) -> float | None:
        """Clip (at an optimizer step) and step; returns the gradient norm before clipping."""
        if not accelerator.sync_gradients:  # accumulating: accelerate's optimizer skips the step
            optimizer.step()
            return None
        if self.scaler:
            self.scaler.unscale_(optimizer.optimizer)
        norm = accelerator.clip_grad_norm_(model.parameters(), max_norm or math.inf)
        if self.scaler:
            self.scaler.step(optimizer.optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        return float(norm)


@dataclass
class Trainer:
    """The prepared model, optimizer and schedule of one run, under accelerate."""

    setup: Setup
    accelerator: object
    model: object
    optimizer: object
    scheduler: object
    precision: Precision
    steps_per_epoch: int
    total_steps: int
    epochs: int

    @property
    def progress(self) -> bool:
        return self.setup.config.progress and self.accelerator.is_main_process

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)


def _trainer(setup: Setup) -> Trainer:
    import torch
    from accelerate import Accelerator
    from transformers import get_scheduler

    config = setup.config
    accelerator = Accelerator(cpu=setup.resolved.device == "cpu", gradient_accumulation_steps=config.grad_accum)
    optimizer = torch.optim.AdamW(parameter_groups(setup.model, setup.resolved.lr, setup.resolved.head_lr,
                                                   setup.new_weights), weight_decay=config.weight_decay)
    batches_per_epoch = math.ceil(len(setup.encoded["train"]) / config.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / accelerator.num_processes / config.grad_accum)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scale = accelerator.num_processes  # accelerate steps a prepared scheduler once per process per optimizer step
    scheduler = get_scheduler(config.schedule, optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps) *
                              scale, num_training_steps=total_steps * scale)
    model, optimizer, scheduler = accelerator.prepare(setup.model, optimizer, scheduler)
    setup.resolved.steps_per_epoch, setup.resolved.total_steps = steps_per_epoch, total_steps
    return Trainer(setup, accelerator, model, optimizer, scheduler, Precision(setup.resolved.precision,
                   setup.resolved.device), steps_per_epoch, total_steps, math.ceil(total_steps / steps_per_epoch))


def _auto_lr(setup: Setup) -> None:
    """``--lr auto``: a range test from the run's own start picks the rate; the head's follows in the same ratio
    unless the user set it. Each process of a multi-GPU run tests alike (same seed and batches) and rounds alike."""
    import itertools

    from accelerate import PartialState

    from edgeclin.lr_range import STEPS, run_range_test

    config, resolved = setup.config, setup.resolved
    device = PartialState().device
    model = setup.model.to(device)
    users_head_lr = config.head_lr is not None and "head_lr" not in resolved.defaults.get("applied", {})
    groups = parameter_groups(model, resolved.lr, resolved.head_lr, setup.new_weights)
    if len(groups) == 2 and users_head_lr:
        groups[1]["fixed"] = True
    batches = list(itertools.islice(_loader(setup, "train", config.batch_size, config.seed), STEPS))
    precision = Precision(resolved.precision, resolved.device)

    def loss_of(batch: dict):
        indices = batch["example_index"]
        inputs = {name: value.to(device) for name, value in batch.items() if name != "example_index"}
        with precision.autocast():
            return setup.job.loss(model, inputs, indices)

    try:
        test = run_range_test(model, batches, loss_of, groups, config.max_grad_norm)
    except ValueError as exc:
        raise EdgeclinError(f"--lr auto: {exc}; give --lr a number") from None
    base = resolved.lr
    record = test.as_record(base, None if users_head_lr else resolved.head_lr)
    head_lr = resolved.head_lr if users_head_lr else record["head_lr"]
    resolved.lr, resolved.head_lr, resolved.lr_range_test = record["lr"], head_lr, record
    setup.config = replace(config, lr=record["lr"], head_lr=head_lr)
    diverged = "it never diverged" if test.diverged_at is None else f"diverged at {base * test.diverged_at:.1e}"
    _log().info(f"--lr auto: {len(test.multipliers)} steps, the loss lowest at {base * test.at_minimum:.1e}, "
                f"{diverged}: training at {record['lr']:.1e}")


def parameter_groups(model, lr: float, head_lr: float | None, new_weights: list[str]) -> list[dict]:
    """The trainable parameters as the optimizer's groups: one at ``lr``, or, with ``head_lr``, the head
    apart. The head is what trains in full: peft's ``modules_to_save`` copies beside an adapter, and any
    weight that started random (so a full fine-tune's new classifier too)."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if head_lr is None or head_lr == lr:  # one group: as a state saved without a head rate holds
        return [{"params": [p for _, p in trainable], "lr": lr}]
    new = set(new_weights)
    is_head = [".modules_to_save." in name or name in new for name, _ in trainable]
    body = [p for (_, p), head in zip(trainable, is_head, strict=True) if not head]
    head = [p for (_, p), head in zip(trainable, is_head, strict=True) if head]
    return [group for group in ({"params": body, "lr": lr}, {"params": head, "lr": head_lr}) if group["params"]]


def _loader(setup: Setup, name: str, batch_size: int, shuffle_seed: int | None):
    """Shuffled batches (training) or length-sorted ones (evaluation: less padding), as a batch sampler,
    which accelerate knows how to shard across processes."""
    import torch
    from torch.utils.data import DataLoader

    split = setup.encoded[name]
    if shuffle_seed is None:
        batches = length_sorted_batches(split.lengths, batch_size)
    else:
        order = np.random.default_rng(shuffle_seed).permutation(len(split)).tolist()
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]

    def collate(indices: list[int]) -> dict:
        batch = setup.task.batch(split, indices, setup.pad_id, setup.token_types)
        batch["example_index"] = torch.tensor(indices)  # evaluation restores the file's order
        return batch

    return DataLoader(range(len(split)), batch_sampler=batches, collate_fn=collate)


def predict_scores(trainer: Trainer, name: str, desc: str) -> list[np.ndarray]:
    """Probabilities of every row of a split, in the split's own row order (NER: one (pieces, tags) per row)."""
    import torch
    from tqdm.auto import tqdm

    setup, accelerator = trainer.setup, trainer.accelerator
    loader = accelerator.prepare(_loader(setup, name, setup.config.batch_size * 2, None))
    lengths = setup.encoded[name].lengths
    trainer.model.eval()
    scores: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, leave=False, disable=not trainer.progress, file=sys.stderr):
            batch.pop("labels")
            indices = batch.pop("example_index")
            with trainer.precision.autocast():
                probs = setup.task.torch_scores(trainer.model(**batch).logits.float())
            if probs.dim() == 3:  # NER: processes' batches differ in width too
                probs = accelerator.pad_across_processes(probs, dim=1, pad_index=0)
            # processes may hold batches of different sizes: pad, gather, then drop the padding
            # (index -1) and the rows that accelerate repeated to even out the batches
            probs, indices = (accelerator.pad_across_processes(t, dim=0, pad_index=-1) for t in (probs, indices))
            probs, indices = accelerator.gather((probs, indices))
            for row, index in zip(probs.cpu().numpy(), indices.cpu().numpy().tolist(), strict=True):
                if index >= 0 and index not in scores:
                    scores[index] = row[:lengths[index]] if row.ndim == 2 else row
    return [scores[i] for i in range(len(scores))]


def _train_epoch(trainer: Trainer, state: LoopState, epoch: int) -> dict:
    """One pass over the training split (or until the last step); returns the epoch's loss and gradient record."""
    import torch
    from tqdm.auto import tqdm

    setup, accelerator, config = trainer.setup, trainer.accelerator, trainer.setup.config
    trainer.model.train()
    torch.manual_seed(config.seed + epoch)  # the epoch's own seed: a resumed run sees the same batches and dropout
    loader = accelerator.prepare(_loader(setup, "train", config.batch_size, config.seed + epoch))
    start, losses, norms = time.perf_counter(), [], []
    bar = tqdm(total=min(trainer.steps_per_epoch, trainer.total_steps - state.step),
               desc=f"epoch {epoch + 1}/{trainer.epochs}", disable=not trainer.progress, file=sys.stderr)
    for batch in loader:
        indices = batch.pop("example_index")
        with accelerator.accumulate(trainer.model):
            with trainer.precision.autocast():
                loss = setup.job.loss(trainer.model, batch, indices)
            trainer.precision.backward(accelerator, loss)
            norm = trainer.precision.step(accelerator, trainer.model, trainer.optimizer, config.max_grad_norm)
            trainer.scheduler.step()
            trainer.optimizer.zero_grad()
        losses.append(loss.detach().float().item())
        state.samples_seen += batch["input_ids"].shape[0] * accelerator.num_processes
        if norm is not None:
            norms.append(norm)
        if accelerator.sync_gradients:
            state.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            if state.step >= trainer.total_steps:
                break
    bar.close()
    state.train_seconds += time.perf_counter() - start
    if state.initial_loss is None:
        state.initial_loss = float(np.mean(losses[:10]))
    return {"train_loss": float(np.mean(losses)), "final_loss": float(np.mean(losses[-20:])),
            "epoch_seconds": time.perf_counter() - start, "grad_norm": _norm_record(norms, config.max_grad_norm)}


def _norm_record(norms: list[float], max_norm: float | None) -> dict:
    if not norms:
        return {}
    return {"mean": float(np.mean(norms)), "max": float(np.max(norms)), "steps": len(norms),
            "clipped_steps": int(sum(n > max_norm for n in norms)) if max_norm else 0}


def _degenerate(trainer: Trainer, state: LoopState, losses: dict, metrics: dict, predictions) -> str | None:
    """Why this epoch's model looks collapsed: one answer for everything, or a loss back above its start."""
    setup = trainer.setup
    reason = setup.task.degenerate(metrics, predictions, setup.dataset.labels)
    if reason is None and state.initial_loss is not None and losses["final_loss"] > state.initial_loss:
        reason = (f"training loss rose back to {losses['final_loss']:.3f}, above its start "
                  f"({state.initial_loss:.3f}): diverging")
    return reason


def is_better(state: LoopState, score: float, degenerate: str | None) -> bool:
    """Is an epoch with this validation score better than the best so far? A model that is not
    degenerate beats any that is (a majority-class model can score higher on skewed data)."""
    if state.best_epoch == 0:
        return True
    if bool(degenerate) != state.best_degenerate:
        return not degenerate
    return score > state.best_score


def _validate(trainer: Trainer, state: LoopState, epoch: int, losses: dict) -> bool:
    """Score the epoch on validation, record it, and decide whether it is the best so far."""
    setup = trainer.setup
    scores = predict_scores(trainer, "valid", "validating")
    metrics, predictions = setup.task.evaluate(setup.dataset.splits["valid"].examples, setup.encoded["valid"],
                                               scores, setup.dataset.labels, tune=True)
    degenerate = _degenerate(trainer, state, losses, metrics, predictions)
    state.history.append({"epoch": epoch + 1, "step": state.step, **losses, "valid": metrics,
                          "degenerate": degenerate})
    score = metrics[setup.task.selection_metric]
    improved = is_better(state, score, degenerate)
    if improved:
        state.best_epoch, state.best_score, state.bad_epochs = epoch + 1, score, 0
        state.best_threshold, state.best_degenerate = metrics.get("threshold"), bool(degenerate)
    else:
        state.bad_epochs += 1
    patience = setup.config.early_stopping_patience
    state.stopped_early = patience is not None and state.bad_epochs >= patience
    _say_epoch(trainer, epoch, losses, metrics, degenerate, improved)
    return improved


def _say_epoch(trainer: Trainer, epoch: int, losses: dict, metrics: dict, degenerate, improved: bool) -> None:
    if trainer.setup.config.progress:
        _log().info(f"epoch {epoch + 1}: train loss {losses['train_loss']:.4f}, "
                 f"valid {trainer.setup.task.headline(metrics)}" + (" (best)" if improved else ""))
    if degenerate:
        _log().warning(f"warning: epoch {epoch + 1} looks collapsed: {degenerate} (a lower --lr usually helps)")


def _save_model_folder(folder: Path, model, tokenizer, labels: LabelsFile) -> None:
    from safetensors.torch import save_file

    model.save_pretrained(folder, safe_serialization=True)
    encoder = _prompt_encoder(model)
    if encoder is not None:
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(folder / PROMPT_ENCODER))
    tokenizer.save_pretrained(folder)
    labels.write(folder)


def _prompt_encoder(model):
    """A prompt-learning peft model's encoders (an adapter name -> module dict); None for other models."""
    config = getattr(model, "active_peft_config", None)
    return model.prompt_encoder if config is not None and config.is_prompt_learning else None


def _load_trainable_state(model, folder: Path) -> None:
    """Load the weights a method trains (adapter or whole model) from a saved folder."""
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from peft.utils import set_peft_model_state_dict

        try:
            set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        except KeyError as exc:  # saved by an edgeclin that trained other layers (e.g. the pooler by LoRA)
            raise EdgeclinError(f"{folder}: the saved adapter lacks {exc}: it was saved by an edgeclin that "
                                "trained other layers; start the run again with --overwrite") from None
        encoder = _prompt_encoder(model)
        if encoder is not None and (folder / PROMPT_ENCODER).is_file():
            encoder.load_state_dict(load_file(str(folder / PROMPT_ENCODER)), strict=True)
    else:
        _, unexpected = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
        if unexpected:
            raise EdgeclinError(f"{folder}: weights do not match the model ({unexpected[:3]} ...)")


def _save_optimizer(path: Path, optimizer) -> None:
    """Optimizer state as safetensors + JSON (no pickle)."""
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors = {f"{pid}.{key}": value.contiguous() for pid, entry in state["state"].items()
               for key, value in entry.items()}
    save_file(tensors, str(path / "optimizer.safetensors"))
    write_json(path / "optimizer.json", {"param_groups": state["param_groups"]})


def _load_optimizer(path: Path, optimizer) -> None:
    from safetensors.torch import load_file

    state: dict[int, dict] = {}
    for name, value in load_file(str(path / "optimizer.safetensors")).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": read_json(path / "optimizer.json")["param_groups"]})


def _save_epoch(trainer: Trainer, partial: PartialRun, state: LoopState, improved: bool) -> None:
    """After an epoch, one snapshot swapped in whole: ``last/`` (loadable as is), ``best/``, loop state.

    Everything of an epoch changes together, so an interruption at any moment leaves either
    the previous epoch's snapshot or this one's, never a mix.
    """
    setup = trainer.setup
    threshold = state.history[-1]["valid"].get("threshold")
    labels = LabelsFile(setup.dataset.labels, setup.task.name, threshold)
    state.scheduler = trainer.scheduler.state_dict()  # plain numbers for transformers' schedules

    def fill(folder: Path) -> None:
        _save_model_folder(folder / "last", trainer.unwrapped, setup.tokenizer, labels)
        _link_tree(folder / "last" if improved else partial.snapshot / "best", folder / "best")
        _save_optimizer(folder, getattr(trainer.optimizer, "optimizer", trainer.optimizer))  # unwrap accelerate's
        write_json(folder / "state.json", {"config": asdict(setup.config), "job": setup.job.describe(),
                                           **asdict(state)})

    replace_folder(partial.snapshot, fill)


def _link_tree(source: Path, target: Path) -> None:
    """Hard links to ``source``'s files (an unchanged best epoch costs no copy)."""
    target.mkdir(parents=True)
    for item in source.iterdir():
        try:
            os.link(item, target / item.name)
        except OSError:  # file systems without hard links
            shutil.copy2(item, target / item.name)


def _record(trainer: Trainer) -> RunRecord:
    setup = trainer.setup
    return RunRecord(config=setup.config, resolved=setup.resolved, data=describe(setup.dataset),
                     versions=library_versions(), git_commit=git_commit(), environment=environment(),
                     processes=trainer.accelerator.num_processes, job=setup.job.record(setup))


def _restore(trainer: Trainer, partial: PartialRun, state: LoopState) -> None:
    _load_trainable_state(trainer.unwrapped, partial.snapshot / "last")
    _load_optimizer(partial.snapshot, trainer.optimizer)
    trainer.scheduler.load_state_dict(state.scheduler)
    if trainer.progress:
        _log().info(f"resuming {partial.output} after epoch {state.epoch} (step {state.step})")


def _epochs(trainer: Trainer, partial: PartialRun, state: LoopState, record: RunRecord) -> None:
    accelerator = trainer.accelerator
    for epoch in range(state.epoch, trainer.epochs):
        if state.stopped_early or state.step >= trainer.total_steps:
            break
        losses = _train_epoch(trainer, state, epoch)
        improved = _validate(trainer, state, epoch, losses)
        state.epoch = epoch + 1
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _save_epoch(trainer, partial, state, improved)
            record.write(partial.path)
        accelerator.wait_for_everyone()
        if state.stopped_early and trainer.progress:
            _log().info(f"early stopping: no better validation {trainer.setup.task.selection_metric} for "
                     f"{trainer.setup.config.early_stopping_patience} epochs")


def _metrics(trainer: Trainer, state: LoopState, test_metrics: dict) -> dict:
    setup, resolved = trainer.setup, trainer.setup.resolved
    memory = {"peak_rss_mb": peak_rss_mb()}
    if resolved.device == "cuda":
        import torch

        memory["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    best = state.history[state.best_epoch - 1] if state.best_epoch else {}
    job = setup.job.record(setup)
    return {**({setup.job.kind: job} if job else {}),
        "task": setup.task.name, "init": setup.config.init,  # "random": accuracy means nothing
        "selection_metric": setup.task.selection_metric, "epochs": state.history, "best_epoch": state.best_epoch,
        "degenerate": best.get("degenerate"), "test": test_metrics,
        "parameters": {"trainable": int(setup.trainable), "total": int(setup.total),
                       "trainable_percent": 100.0 * setup.trainable / setup.total},
        "training": {"wall_seconds": state.train_seconds,
                     "samples_per_second": state.samples_seen / max(state.train_seconds, 1e-9),
                     "optimizer_steps": state.step, "epochs_run": len(state.history), "device": resolved.device,
                     "precision": resolved.precision, "processes": trainer.accelerator.num_processes,
                     "lr": resolved.lr, "max_grad_norm": resolved.max_grad_norm},
        "memory": memory,
        "truncation": {"max_length": setup.config.max_length, "strategy": setup.config.truncation,
                       **{name: {"truncated": e.truncated, "total": len(e)} for name, e in setup.encoded.items()}},
    }


def _test_best(trainer: Trainer, partial: PartialRun, state: LoopState) -> tuple[dict, object]:
    """The best epoch's weights on the test split (multi-label: at the threshold tuned on validation)."""
    setup = trainer.setup
    _load_trainable_state(trainer.unwrapped, partial.snapshot / "best")
    scores = predict_scores(trainer, "test", "testing")
    test_metrics, predictions = setup.task.evaluate(setup.dataset.splits["test"].examples, setup.encoded["test"],
                                                    scores, setup.dataset.labels, state.best_threshold)
    return _metrics(trainer, state, test_metrics), predictions


def _publish(trainer: Trainer, partial: PartialRun, out: OutputFolder, record: RunRecord, metrics: dict) -> None:
    for item in (partial.snapshot / "best").iterdir():
        if item.name != PROMPT_ENCODER:  # for snapshots only: the published adapter is peft's own
            shutil.move(str(item), partial.path / item.name)
    shutil.rmtree(partial.snapshot)
    record.write(partial.path)
    write_json(partial.path / METRICS, metrics)
    (partial.path / "README.md").write_text(run_card(record, metrics), encoding="utf-8")  # not peft's placeholder
    out.publish()
    if trainer.progress:
        _summary_table(metrics, partial.output)


def _output_slot(trainer: Trainer, partial: PartialRun):
    """The main process holds the output (a lock) and publishes it; the others only compute."""
    if not trainer.accelerator.is_main_process:
        return contextlib.nullcontext()
    return OutputFolder(partial.output, trainer.setup.config.overwrite, staging=partial.path)


def _start_work_folder(partial: PartialRun, fresh: bool) -> None:
    if fresh and partial.path.exists():  # --overwrite of an interrupted run: only now, inputs are sound
        shutil.rmtree(partial.path)
    partial.path.mkdir(parents=True, exist_ok=True)


def _run(config: TrainConfig, output: Path, state: LoopState | None, job: Job) -> TrainResult:
    setup = job.prepare(config)
    fresh = state is None
    if fresh and setup.config.lr_auto:
        _auto_lr(setup)
    trainer = _trainer(setup)
    _report_data(setup)
    partial = PartialRun(output)
    state = state or LoopState()
    if not fresh:
        _restore(trainer, partial, state)
        started = RunRecord.read(partial.path)  # its options are filled by now: keep what the start filled
        if started:
            setup.resolved.defaults, setup.resolved.lr_range_test = (started.resolved.defaults,
                                                                     started.resolved.lr_range_test)
    record = _record(trainer)
    with _output_slot(trainer, partial) as out:
        if out is not None:
            _start_work_folder(partial, fresh)
        trainer.accelerator.wait_for_everyone()
        try:
            _epochs(trainer, partial, state, record)
        except BaseException as exc:  # interrupted or failed: keep a finished epoch, else leave nothing
            _after_failure(trainer, partial, exc)
            raise
        metrics, predictions = _test_best(trainer, partial, state)
        if trainer.accelerator.is_main_process:
            _publish(trainer, partial, out, record, metrics)
    trainer.accelerator.wait_for_everyone()
    _refuse_degenerate(metrics, output, config)
    return TrainResult(output=output, metrics=metrics, test_probabilities=predictions)


def _after_failure(trainer: Trainer, partial: PartialRun, exc: BaseException) -> None:
    if not trainer.accelerator.is_main_process:
        return
    if partial.finished_epoch() is not None:
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed ({type(exc).__name__})"
        _log().warning(f"\n{what}: the last finished epoch is in {partial.snapshot / 'last'}; "
                    f"continue with: edgeclin train --resume {partial.output}")
    else:
        shutil.rmtree(partial.path, ignore_errors=True)


def _refuse_degenerate(metrics: dict, output: Path, config: TrainConfig) -> None:
    if metrics.get("degenerate") and not config.allow_degenerate:
        raise DegenerateRun(f"the model collapsed: at its best epoch ({metrics['best_epoch']}) "
                            f"{metrics['degenerate']}. The run is in {output} for inspection; try a lower --lr, "
                            "or accept it with --allow-degenerate")


def _summary_table(metrics: dict, output: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}"

    columns = get_task(metrics["task"]).display_columns
    table = Table(title=f"edgeclin train: {output}")
    table.add_column("split")
    for _, heading in columns:
        table.add_column(heading, justify="right")
    for epoch in metrics["epochs"]:
        flag = " [collapsed]" if epoch.get("degenerate") else ""
        table.add_row(f"valid (epoch {epoch['epoch']}){flag}", *(pct(epoch["valid"].get(key)) for key, _ in columns))
    table.add_row(f"[bold]test (best epoch {metrics['best_epoch']})",
                  *(pct(metrics["test"].get(key)) for key, _ in columns))
    console = Console(stderr=True)
    console.print(table)
    p, tr = metrics["parameters"], metrics["training"]
    console.print(f"trainable parameters {p['trainable']:,} of {p['total']:,} ({p['trainable_percent']:.2f}%), "
                  f"training {tr['wall_seconds']:.0f} s ({tr['samples_per_second']:.1f} samples/s, {tr['precision']}), "
                  f"peak RSS {metrics['memory']['peak_rss_mb']:.0f} MiB")
    if metrics.get("init") == "random":
        console.print("[bold]random weights (--init random)[/]: the scores above mean nothing; time, memory and "
                      "sizes are what this run measures")
