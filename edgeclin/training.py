"""``edgeclin train``: fine-tune an encoder (LoRA, full or another PEFT method).

Tasks (``edgeclin.tasks``): single- and multi-label classification of texts or text pairs,
and token classification (NER); the data decides which.

The loop is plain PyTorch driven by ``accelerate``, so the same code runs on a CPU, one
GPU, or several GPUs under ``accelerate launch`` (data parallel) without changes.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeclin import runs
from edgeclin.data import DEMO_DATA, Columns, load_dataset
from edgeclin.encoding import TRUNCATION_STRATEGIES, EncodedSplit, encode_examples, pad_batch
from edgeclin.errors import EdgeclinError
from edgeclin.hardware import environment, peak_rss_mb, resolve_device, resolve_precision
from edgeclin.methods import get_method
from edgeclin.metrics import task_metrics, tune_threshold
from edgeclin.models import DEFAULT_MODEL, load_classifier, load_tokenizer, resolve_model
from edgeclin.tasks import DISPLAY_COLUMNS, MULTI_LABEL, SELECTION_METRIC, TOKEN, headline, word_tags


@dataclass
class TrainConfig:
    """Every option of a training run; saved in the run record."""

    model: str = DEFAULT_MODEL
    init: str = "pretrained"  # or "random": the architecture only, for latency work (models.py)
    data: str | None = None  # folder, or None/"demo" for the built-in synthetic notes
    train_file: str | None = None
    valid_file: str | None = None
    test_file: str | None = None
    text_col: str = "text"
    label_col: str = "label"
    text_pair_col: str | None = None
    multi_label: bool = False  # the label column holds several labels
    label_sep: str = ";"  # between the labels of a multi-label CSV cell
    skip_bad_rows: bool = False
    limit: int | None = None
    method: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    target_modules: str = "attention"
    num_virtual_tokens: int = 10  # prefix, prompt and P-tuning
    epochs: int = 4
    max_steps: int | None = None
    lr: float | None = None  # None: the method's default
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    schedule: str = "linear"
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 256
    truncation: str = "head"
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    early_stopping_patience: int | None = None
    output: str | None = None
    overwrite: bool = False
    progress: bool = True

    def check(self) -> None:
        get_method(self.method)
        if self.truncation not in TRUNCATION_STRATEGIES:
            raise EdgeclinError(f"--truncation must be one of {', '.join(TRUNCATION_STRATEGIES)}")
        for name in ("epochs", "batch_size", "grad_accum", "lora_r"):
            if getattr(self, name) < 1:
                raise EdgeclinError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_length < 8:
            raise EdgeclinError("--max-length must be at least 8")
        if self.max_steps is not None and self.max_steps < 1:
            raise EdgeclinError("--max-steps must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise EdgeclinError("--limit must be at least 1")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise EdgeclinError("--early-stopping-patience must be at least 1")
        if self.lr is not None and self.lr < 0:
            raise EdgeclinError("--lr must not be negative")
        if not 0 <= self.warmup_ratio <= 1:
            raise EdgeclinError("--warmup-ratio must be between 0 and 1")
        if not 0 <= self.lora_dropout < 1:
            raise EdgeclinError("--lora-dropout must be in [0, 1)")
        if self.num_virtual_tokens < 1:
            raise EdgeclinError("--num-virtual-tokens must be at least 1")


@dataclass
class TrainResult:
    output: Path
    metrics: dict = field(default_factory=dict)
    # rows in the test file's order: class probabilities; for NER the predicted tags per row
    test_probabilities: np.ndarray | list | None = None


def _set_seed(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def _count_parameters(model) -> tuple[int, int]:
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def _batches(split: EncodedSplit, batch_size: int, shuffle_seed: int | None) -> list[list[int]]:
    order = np.arange(len(split))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(split))
    else:  # evaluation: length-sorted batches waste less on padding
        order = np.argsort(split.lengths, kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def _loader(split: EncodedSplit, batch_size: int, pad_id: int, shuffle_seed: int | None, token_types: bool = True):
    import torch
    from torch.utils.data import DataLoader

    batches = _batches(split, batch_size, shuffle_seed)
    def collate(indices: list[int]) -> dict:
        batch = pad_batch(split, indices, pad_id, token_types)
        batch["example_index"] = torch.tensor(indices)  # evaluation restores the file's order
        return batch

    # batches are formed here (shuffled, or length-sorted for evaluation) and handed over as a
    # batch sampler, which accelerate knows how to shard across processes
    return DataLoader(range(len(split)), batch_sampler=batches, collate_fn=collate)


def predict_scores(model, loader, accelerator, task: str, lengths: list[int], progress: bool, desc: str) -> list:
    """Probabilities of every row of a split, in the split's own row order.

    Classification: one (classes,) array per row; NER: one (pieces, tags) array per row.
    """
    import torch
    from tqdm.auto import tqdm

    model.eval()
    scores: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, file=sys.stderr):
            batch.pop("labels")
            indices = batch.pop("example_index")
            with accelerator.autocast():
                logits = model(**batch).logits.float()
            probs = torch.sigmoid(logits) if task == MULTI_LABEL else torch.softmax(logits, dim=-1)
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


def split_metrics(task: str, examples: list, encoded: EncodedSplit, scores: list, labels: list[str],
                  threshold: float | None = None, tune: bool = False) -> tuple[dict, object]:
    """Metrics of a split's scores, and the predictions they were computed from.

    Multi-label: ``tune`` (validation only) picks the threshold on these scores; otherwise the
    given ``threshold`` (tuned on validation) is required, so test never tunes its own.
    """
    if task == TOKEN:
        predictions = [word_tags(s, w, len(e.tokens), labels)
                       for s, w, e in zip(scores, encoded.word_ids, examples, strict=True)]
        return task_metrics(task, examples, predictions, labels), predictions
    probabilities = np.stack(scores)
    if task == MULTI_LABEL and tune:
        threshold = tune_threshold(np.array(encoded.labels) > 0.5, probabilities)
    elif task == MULTI_LABEL and threshold is None:
        raise ValueError("multi-label test metrics need the threshold tuned on validation")
    return task_metrics(task, examples, probabilities, labels, threshold), probabilities


def _save_model_folder(folder: Path, model, tokenizer, labels: list[str], label_info: dict | None = None) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    runs.write_json(folder / runs.LABELS, {"labels": labels, **(label_info or {})})


def _load_trainable_state(model, folder: Path) -> None:
    """Load the weights a method trains (adapter or whole model) from a saved folder."""
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from peft.utils import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
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
    runs.write_json(path / "optimizer.json", {"param_groups": state["param_groups"]})


def _load_optimizer(path: Path, optimizer) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(path / "optimizer.safetensors"))
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = runs.read_json(path / "optimizer.json")["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


SNAPSHOT = "epoch"  # inside <output>.partial/: last/, best/, optimizer and loop state of one epoch


def _save_epoch(work: Path, model, tokenizer, labels: list[str], improved: bool, optimizer, loop_state: dict,
                label_info: dict) -> None:
    """After an epoch, one snapshot swapped in whole: ``last/`` (loadable as is), ``best/``, loop state.

    Everything of an epoch changes together, so an interruption at any moment leaves either
    the previous epoch's snapshot or this one's, never a mix.
    """
    previous = work / SNAPSHOT

    def save(folder: Path) -> None:
        _save_model_folder(folder / "last", model, tokenizer, labels, label_info)
        if improved:
            _link_tree(folder / "last", folder / "best")
        else:  # unchanged best: hard links to the previous snapshot's files, no copy
            _link_tree(previous / "best", folder / "best")
        _save_optimizer(folder, getattr(optimizer, "optimizer", optimizer))  # unwrap accelerate's
        runs.write_json(folder / "state.json", loop_state)

    runs.save_folder_atomically(previous, save)


def _link_tree(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for item in source.iterdir():
        try:
            os.link(item, target / item.name)
        except OSError:  # file systems without hard links
            shutil.copy2(item, target / item.name)


def _snapshot(work: Path) -> Path | None:
    """The last complete epoch snapshot (recovering one left mid-swap by a crash)."""
    current, old = work / SNAPSHOT, work / (SNAPSHOT + ".old")
    if not current.exists() and old.exists():
        os.replace(old, current)
    return current if (current / "state.json").exists() else None


def _report_data(dataset, encoded: dict[str, EncodedSplit], config: TrainConfig) -> None:
    """Say what was dropped and what was cut, before training starts (never silently)."""
    for split in dataset.splits.values():
        if split.skipped_rows:
            print(f"{split.source}: skipped {split.skipped_rows} bad rows (--skip-bad-rows)", file=sys.stderr)
    cut = {name: enc.truncated for name, enc in encoded.items() if enc.truncated}
    if cut:
        counts = ", ".join(f"{name} {n} of {len(encoded[name])}" for name, n in cut.items())
        print(f"inputs longer than {config.max_length} tokens, cut ({config.truncation}): {counts}", file=sys.stderr)


def _label_info(task: str, threshold: float | None) -> dict:
    """What labels.json records besides the label names: the task, and multi-label's threshold."""
    return {"task": task, **({"threshold": threshold} if task == MULTI_LABEL else {})}


def _check_max_length(model_config, max_length: int) -> None:
    positions = getattr(model_config, "max_position_embeddings", None)
    if positions is None:
        return
    # RoBERTa-style models number positions from padding_idx + 1
    offset = (model_config.pad_token_id or 0) + 1 if model_config.model_type in ("roberta", "mpnet", "camembert",
                                                                                 "xlm-roberta") else 0
    if max_length > positions - offset:
        raise EdgeclinError(f"--max-length {max_length} is longer than the model takes ({positions - offset} tokens)")


def _summary_table(metrics: dict, output: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}"

    columns = DISPLAY_COLUMNS[metrics["task"]]
    table = Table(title=f"edgeclin train: {output}")
    table.add_column("split")
    for _, heading in columns:
        table.add_column(heading, justify="right")
    for epoch in metrics["epochs"]:
        v = epoch["valid"]
        table.add_row(f"valid (epoch {epoch['epoch']})", *(pct(v.get(key)) for key, _ in columns))
    t = metrics["test"]
    table.add_row(f"[bold]test (best epoch {metrics['best_epoch']})", *(pct(t.get(key)) for key, _ in columns))
    console = Console(stderr=True)
    console.print(table)
    p, tr = metrics["parameters"], metrics["training"]
    console.print(
        f"trainable parameters {p['trainable']:,} of {p['total']:,} ({p['trainable_percent']:.2f}%), "
        f"training {tr['wall_seconds']:.0f} s ({tr['samples_per_second']:.1f} samples/s, {tr['precision']}), "
        f"peak RSS {metrics['memory']['peak_rss_mb']:.0f} MiB"
    )
    if metrics.get("init") == "random":
        console.print("[bold]random weights (--init random)[/]: the scores above mean nothing; time, memory and "
                      "sizes are what this run measures")


def train(config: TrainConfig | None = None, *, resume: str | Path | None = None, **options) -> TrainResult:
    """Fine-tune a classifier and write a run folder; returns its path and metrics.

    Either pass a ``TrainConfig`` or its fields as keywords: ``train(data="...", method="full")``.
    ``resume`` continues an interrupted run from its last finished epoch.
    """
    if resume is not None:
        return _resume(Path(resume))
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
    output = Path(config.output) if config.output else runs.default_run_dir(config.model, config.method)
    config.output = str(output)
    runs.check_output_free(output, config.overwrite)
    return _run(config, output, runs.partial_dir(output), state=None)


def _resume(path: Path) -> TrainResult:
    path = path.resolve()
    output = path.with_name(path.name.removesuffix(".partial")) if path.name.endswith(".partial") else path
    work = runs.partial_dir(output)
    snapshot = _snapshot(work) if work.exists() else None
    if snapshot is None:
        if output.exists() and (output / runs.METRICS).exists():
            raise EdgeclinError(f"{output} is a finished run; nothing to resume")
        raise EdgeclinError(f"nothing to resume: {work} has no finished epoch")
    state = runs.read_json(snapshot / "state.json")
    config = TrainConfig(**state["config"])
    return _run(config, output, work, state=state)


def _run(config: TrainConfig, output: Path, work: Path, state: dict | None) -> TrainResult:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    method = get_method(config.method)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    lr = config.lr if config.lr is not None else method.default_lr

    # Everything that can fail on the user's input fails here, before any folder is written.
    dataset = load_dataset(
        config.data, train=config.train_file, valid=config.valid_file, test=config.test_file,
        columns=Columns(config.text_col, config.label_col, config.text_pair_col),
        skip_bad_rows=config.skip_bad_rows, limit=config.limit, seed=config.seed,
        multi_label=config.multi_label, label_separator=config.label_sep,
    )
    task = dataset.task
    selection_metric = SELECTION_METRIC[task]
    resolved = resolve_model(config.model, init=config.init)
    _set_seed(config.seed)
    tokenizer = load_tokenizer(resolved.path)
    label2id = dataset.label2id
    encoded = {
        name: encode_examples(tokenizer, split.examples, label2id, config.max_length, config.truncation, task)
        for name, split in dataset.splits.items()
    }
    if config.progress:
        _report_data(dataset, encoded, config)
    model = load_classifier(resolved.path, dataset.labels, task=task)
    _check_max_length(model.config, config.max_length)
    model = method.prepare(model, config)
    trainable, total = _count_parameters(model)

    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    # accelerate keeps one global state per process; reset it (keeping the distributed
    # setup) so that train() can be called again in the same process with other settings
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=mixed, cpu=device == "cpu",
                              gradient_accumulation_steps=config.grad_accum)
    progress = config.progress and accelerator.is_main_process
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    token_types = "token_type_ids" in tokenizer.model_input_names  # DistilBERT has none

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=config.weight_decay)
    batches_per_epoch = math.ceil(len(encoded["train"]) / config.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / accelerator.num_processes / config.grad_accum)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    epochs = math.ceil(total_steps / steps_per_epoch)
    # accelerate steps a prepared scheduler once per process for each optimizer step
    scale = accelerator.num_processes
    scheduler = get_scheduler(config.schedule, optimizer,
                              num_warmup_steps=int(config.warmup_ratio * total_steps) * scale,
                              num_training_steps=total_steps * scale)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model)

    history: list[dict] = []
    best_epoch, best_score, bad_epochs, step, start_epoch, train_seconds, samples_seen = 0, -1.0, 0, 0, 0, 0.0, 0
    best_threshold = None  # multi-label: the decision threshold tuned on validation at the best epoch
    if state is not None:
        _load_trainable_state(unwrapped, work / SNAPSHOT / "last")
        _load_optimizer(work / SNAPSHOT, optimizer)
        history, best_epoch, best_score = state["history"], state["best_epoch"], state["best_score"]
        bad_epochs, step, start_epoch = state["bad_epochs"], state["step"], state["epoch"]
        train_seconds, samples_seen = state["train_seconds"], state["samples_seen"]
        best_threshold = state.get("best_threshold")
        scheduler.load_state_dict(state["scheduler"])
        if progress:
            print(f"resuming {output} after epoch {start_epoch} (step {step})", file=sys.stderr)

    valid_loader = accelerator.prepare(_loader(encoded["valid"], config.batch_size * 2, pad_id, None, token_types))
    record = {
        "config": asdict(config),
        "resolved": {"model_path": resolved.path, "model_source": resolved.source, "init": resolved.init, "lr": lr,
                     "device": device, "precision": precision, "labels": dataset.labels, "task": task,
                     "base_model": resolved.path if method.saves_adapter else None,
                     "steps_per_epoch": steps_per_epoch, "total_steps": total_steps},
        "data": dataset.describe(),
        "versions": runs.library_versions(),
        "git_commit": runs.git_commit(),
        "environment": environment(),
        "processes": accelerator.num_processes,
    }
    if accelerator.is_main_process:
        if state is None and work.exists():  # --overwrite of an interrupted run: only now, inputs are sound
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    finished = state is not None and state.get("stopped_early", False)
    try:
        for epoch in range(start_epoch, epochs):
            if finished or step >= total_steps:
                break
            model.train()
            # the epoch's own seed: a resumed run sees the same batches and dropout masks
            torch.manual_seed(config.seed + epoch)
            loader = accelerator.prepare(_loader(encoded["train"], config.batch_size, pad_id, config.seed + epoch,
                                                 token_types))
            epoch_start, losses = time.perf_counter(), []
            bar = tqdm(total=min(steps_per_epoch, total_steps - step), desc=f"epoch {epoch + 1}/{epochs}",
                       disable=not progress, file=sys.stderr)
            for batch in loader:
                batch.pop("example_index")
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    accelerator.backward(loss)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                losses.append(loss.detach().float().item())
                samples_seen += batch["input_ids"].shape[0] * accelerator.num_processes
                if accelerator.sync_gradients:
                    step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
                    if step >= total_steps:
                        break
            bar.close()
            train_seconds += time.perf_counter() - epoch_start
            valid_scores = predict_scores(model, valid_loader, accelerator, task, encoded["valid"].lengths,
                                          progress, "validating")
            valid_metrics, _ = split_metrics(task, dataset.splits["valid"].examples, encoded["valid"],
                                             valid_scores, dataset.labels, tune=True)
            history.append({"epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)),
                            "epoch_seconds": time.perf_counter() - epoch_start, "valid": valid_metrics})
            score = valid_metrics[selection_metric]
            improved = score > best_score
            if improved:
                best_epoch, best_score, bad_epochs = epoch + 1, score, 0
                best_threshold = valid_metrics.get("threshold")
            else:
                bad_epochs += 1
            patience = config.early_stopping_patience
            finished = patience is not None and bad_epochs >= patience
            if progress:
                print(f"epoch {epoch + 1}: train loss {history[-1]['train_loss']:.4f}, "
                      f"valid {headline(task, valid_metrics)}"
                      + (" (best)" if improved else ""), file=sys.stderr)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                loop_state = {
                    "config": asdict(config), "epoch": epoch + 1, "step": step, "history": history,
                    "best_epoch": best_epoch, "best_score": best_score, "bad_epochs": bad_epochs,
                    "train_seconds": train_seconds, "samples_seen": samples_seen, "stopped_early": finished,
                    "scheduler": scheduler.state_dict(),  # plain numbers for transformers' schedules
                    "best_threshold": best_threshold,
                }
                _save_epoch(work, unwrapped, tokenizer, dataset.labels, improved, optimizer, loop_state,
                            _label_info(task, valid_metrics.get("threshold")))
                runs.write_json(work / runs.RUN_RECORD, record)
            accelerator.wait_for_everyone()
            if finished:
                if progress:
                    print(f"early stopping: no better validation {selection_metric} for {patience} epochs",
                          file=sys.stderr)
                break
    except BaseException as exc:  # interrupted or failed: keep a finished epoch, else leave nothing
        if accelerator.is_main_process:
            if _snapshot(work) is not None:
                what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed ({type(exc).__name__})"
                print(f"\n{what}: the last finished epoch is in {work / SNAPSHOT / 'last'}; "
                      f"continue with: edgeclin train --resume {output}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
        raise

    # Test the best epoch's weights.
    _load_trainable_state(unwrapped, work / SNAPSHOT / "best")
    test_loader = accelerator.prepare(_loader(encoded["test"], config.batch_size * 2, pad_id, None, token_types))
    test_scores = predict_scores(model, test_loader, accelerator, task, encoded["test"].lengths, progress, "testing")
    # multi-label: the threshold tuned on validation at the best epoch, never one tuned on test
    test_metrics, test_probabilities = split_metrics(task, dataset.splits["test"].examples, encoded["test"],
                                                     test_scores, dataset.labels, best_threshold)
    memory = {"peak_rss_mb": peak_rss_mb()}
    if device == "cuda":
        memory["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    metrics = {
        "task": task,
        "init": config.init,  # "random": accuracy means nothing
        "selection_metric": selection_metric,
        "epochs": history,
        "best_epoch": best_epoch,
        "test": test_metrics,
        "parameters": {"trainable": int(trainable), "total": int(total),
                       "trainable_percent": 100.0 * trainable / total},
        "training": {"wall_seconds": train_seconds, "samples_per_second": samples_seen / max(train_seconds, 1e-9),
                     "optimizer_steps": step, "epochs_run": len(history), "device": device,
                     "precision": precision, "processes": accelerator.num_processes, "lr": lr},
        "memory": memory,
        "truncation": {
            "max_length": config.max_length, "strategy": config.truncation,
            **{name: {"truncated": enc.truncated, "total": len(enc)} for name, enc in encoded.items()},
        },
    }
    if accelerator.is_main_process:
        for item in (work / SNAPSHOT / "best").iterdir():
            shutil.move(str(item), work / item.name)
        shutil.rmtree(work / SNAPSHOT)
        runs.write_json(work / runs.RUN_RECORD, record)
        runs.write_json(work / runs.METRICS, metrics)
        runs.publish(work, output, config.overwrite)
        if progress:
            _summary_table(metrics, output)
    accelerator.wait_for_everyone()
    return TrainResult(output=output, metrics=metrics, test_probabilities=test_probabilities)
