"""``edgeclin sweep``: the paper's grid (models x methods x seeds), one training run per cell.

Every cell is an ordinary run folder, ``<out>/runs/<model>-<method>-seed<k>/``, written by
``edgeclin.training.train`` in this process. A rerun of the same command skips finished
cells, resumes interrupted ones from their last epoch and retries failed ones, so a sweep
can be stopped at any time. The report (``sweep.md``, ``sweep.csv``, ``sweep.json`` and
two plots) is rebuilt from the run folders at the end of every invocation, and covers every
cell that any invocation into the folder asked for: a grid can grow by models or methods.

The metric in the table is each run's own selection metric on its test split
(``metrics.json["selection_metric"]``: macro-F1 for single-label classification, micro-F1
for multi-label, entity F1 for NER), averaged over seeds.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import shutil
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from edgeclin.artifacts import METRICS, RUN_RECORD, PartialRun, partial_dir
from edgeclin.defaults import ANY_TASK, defaults_for
from edgeclin.errors import EdgeclinError
from edgeclin.files import OutputLock, atomic_file, read_json, safe_name, write_json
from edgeclin.logs import get_logger
from edgeclin.methods import get_method
from edgeclin.models import INITS

log = get_logger(__name__)

DEFAULT_METHODS = ("full", "lora", "ia3", "prefix", "prompt", "ptuning")
# TrainConfig fields the sweep sets per cell; every other field is a sweep-wide option
CELL_FIELDS = ("model", "method", "seed", "output", "overwrite", "progress", "data")
SETTINGS = "sweep_settings.json"  # what a rerun into the same folder must agree with
CELLS = "sweep_cells.json"  # every cell any invocation asked for: the report covers the whole folder
# --search: learning rate log-uniform in [default x 0.1, default x 10] (train's default for the model's size);
# LoRA also rank and alpha
LR_FACTORS = (0.1, 10.0)
LORA_RANKS = (4, 8, 16)
LORA_ALPHAS = (8, 16, 32)


@dataclass(frozen=True)
class Cell:
    model: str  # as given (built-in name, preset, folder or hub id)
    short: str  # the model's name in folder names and tables
    method: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.short}-{self.method}-seed{self.seed}"


@dataclass
class SweepResult:
    output: Path
    summary: dict  # the content of sweep.json


def short_name(model: str) -> str:
    return safe_name(model)


def _split(items) -> list[str]:
    if isinstance(items, str):
        items = items.split(",")
    return [item.strip() for item in items if item and item.strip()]


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise EdgeclinError("--search needs Optuna, which is not installed: pip install 'edgeclin[sweep]' "
                            "(or pip install optuna), or run the grid without --search") from None
    return optuna


def _check_options(models: list[str], methods: list[str], seeds: int, search: int, train_options: dict) -> dict:
    """Fail before any work; return the options that differ from train's defaults."""
    from edgeclin.training_config import TrainConfig

    if not models:
        raise EdgeclinError("--models is empty: give one or more models, comma-separated")
    if not methods:
        raise EdgeclinError("--methods is empty")
    for method in methods:
        if student_layers(method) is None:
            get_method(method)
    if len(set(methods)) != len(methods):
        raise EdgeclinError("--methods names a method twice")
    if seeds < 1:
        raise EdgeclinError("--seeds must be at least 1")
    if search < 0:
        raise EdgeclinError("--search must be 0 (off) or a number of trials")
    if search and any(student_layers(m) for m in methods):
        raise EdgeclinError("--search tunes the training methods; distill-K cells use the defaults of distill")
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for key in train_options:
        if key not in defaults or key in CELL_FIELDS:
            raise EdgeclinError(f"{key!r} is not a sweep-wide training option")
    if train_options.get("init", "pretrained") not in INITS:
        raise EdgeclinError(f"unknown --init {train_options['init']!r} (choose from {', '.join(INITS)})")
    if search:
        require_optuna()
    shorts = [short_name(m) for m in models]
    if len(set(shorts)) != len(shorts):
        raise EdgeclinError(f"two models share a folder name ({', '.join(shorts)}): give them distinct names")
    # an option given at its default is no setting of its own (the CLI passes --init pretrained)
    return {k: v for k, v in train_options.items() if v != defaults[k]}


@dataclass
class SweepRun:
    """One invocation of a sweep: where it writes, its settings, and what each cell did."""

    out: Path
    data: str | None
    train_options: dict
    search: int
    progress: bool
    statuses: dict
    searches: dict

    def say(self, line: str) -> None:
        if self.progress:
            log.info(line)


def run_sweep(models, methods=DEFAULT_METHODS, *, output: str | Path, data: str | None = None, seeds: int = 1,
              search: int = 0, progress: bool = True, **train_options) -> SweepResult:
    """Train every (model, method, seed) cell into ``output``/runs and write the report.

    ``models`` and ``methods`` are lists or comma-separated strings; ``seeds`` runs seeds
    0 .. seeds-1. ``train_options`` are ``TrainConfig`` fields shared by every cell
    (``epochs``, ``limit``, ``max_length``, ``init`` ...). ``search`` > 0 first tunes the
    learning rate (and LoRA's rank and alpha) of each (model, method) with that many Optuna
    trials on the validation metric, then trains the cells with the best setting.
    """
    from edgeclin.training_config import TrainConfig

    models, methods = _split(models), _split(methods)
    train_options = _check_options(models, methods, seeds, search, train_options)
    if data and Path(data).exists():
        data = str(Path(data).resolve())  # the settings check and the run records compare absolute paths
    TrainConfig(model=models[0], method=methods[0], data=data, **train_options).check()  # fail before any work
    out = Path(output)
    settings = {"data": data, "train_options": dict(sorted(train_options.items())), "search": search}
    lock = OutputLock(out)  # one sweep at a time in a folder: two would train the same cells
    lock.acquire()
    try:
        _check_settings(out, settings)
        cells = [Cell(m, short_name(m), method, seed) for m in models for method in methods for seed in range(seeds)]
        every_cell = _remember_cells(out, cells)
        sweep = SweepRun(out, data, train_options, search, progress, {}, {})
        started, peak_reset = time.time(), _run_cells(sweep, cells)
    finally:
        lock.release()
    summary = collect(out, every_cell, sweep.statuses)
    summary["config"] = {"models": _unique(c.model for c in every_cell),
                         "methods": _unique(c.method for c in every_cell),
                         "seeds": sorted(_unique(c.seed for c in every_cell)), "output": str(out), **settings}
    summary["environment"] = _environment(search > 0)
    summary["memory_note"] = MEMORY_NOTES[peak_reset]
    summary["search"] = sweep.searches
    summary["wall_seconds_this_invocation"] = time.time() - started
    write_report(out, summary)
    return SweepResult(output=out, summary=summary)


def _run_cells(sweep: SweepRun, cells: list[Cell]) -> bool:
    """Every cell in turn; returns whether peak memory could be reset for each."""
    peak_reset = True
    try:
        for index, cell in enumerate(cells, 1):
            peak_reset = _run_cell(sweep, cells, cell, f"cell {index}/{len(cells)}") and peak_reset
    except KeyboardInterrupt:
        sweep.say(f"\nsweep interrupted: finished cells are kept in {sweep.out / 'runs'}; run the same command "
                  "again to continue (an interrupted cell resumes from its last finished epoch)")
        raise
    return peak_reset


MEMORY_NOTES = {
    True: "peak_rss_mb: the sweep process's peak resident memory during each cell (its high-water mark is reset "
          "before each cell)",
    False: "peak_rss_mb: this system could not reset the process's memory high-water mark, so a cell's peak "
           "includes earlier cells in the same invocation"}


def _searched_overrides(sweep: SweepRun, cells: list[Cell], cell: Cell) -> dict | None:
    """The setting the search found for the cell's (model, method), searching first if needed; None: it failed."""
    key = f"{cell.short}-{cell.method}"
    if key not in sweep.searches:
        pending = [c for c in cells if (c.short, c.method) == (cell.short, cell.method) and not _finished(sweep.out, c)]
        sweep.searches[key] = (_search(sweep.out, cell, sweep.data, sweep.train_options, sweep.search,
                                       sweep.progress, sweep.say) if pending else _read_search(sweep.out, key))
    found = sweep.searches[key]
    if found.get("best") is None:
        return None
    if cell.seed == found.get("seed") and not _finished(sweep.out, cell):
        _adopt_trial(sweep.out, cell, found["best_folder"])
    return found["best"]


def _run_cell(sweep: SweepRun, cells: list[Cell], cell: Cell, position: str) -> bool:
    """Train (or skip, or resume) one cell; returns whether peak memory could be reset for it."""
    overrides: dict = {}
    if sweep.search:
        overrides = _searched_overrides(sweep, cells, cell)
        if overrides is None:
            reason = sweep.searches[f"{cell.short}-{cell.method}"].get("reason", "search found nothing")
            sweep.statuses[cell.name] = {"status": "failed", "reason": reason}
            sweep.say(f"{position}: {cell.short} {cell.method} seed {cell.seed}: failed ({reason})")
            return True
    what = "" if not overrides else " (" + _describe_params(overrides) + ")"
    if _finished(sweep.out, cell):
        sweep.say(f"{position}: {cell.short} {cell.method} seed {cell.seed}{what}: done earlier")
        sweep.statuses[cell.name] = {"status": "ok", "how": "done earlier"}
        return True
    sweep.say(f"{position}: {cell.short} {cell.method} seed {cell.seed}{what}")
    reset = _reset_peak_memory()
    try:
        how = _train_cell(sweep.out, cell, sweep.data, {**sweep.train_options, **overrides}, sweep.progress)
        sweep.statuses[cell.name] = {"status": "ok", "how": how}
    except Exception as exc:
        reason = _reason(exc)
        sweep.statuses[cell.name] = {"status": "failed", "reason": reason}
        if not isinstance(exc, EdgeclinError):  # unexpected: keep the traceback for a bug report
            (sweep.out / "runs" / f"{cell.name}.error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        sweep.say(f"{position} failed, the sweep continues: {reason}")
    finally:
        _release_memory()
    return reset


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if isinstance(exc, EdgeclinError) else f"{type(exc).__name__}: {text}"


def _check_settings(out: Path, settings: dict) -> None:
    """A sweep folder holds one set of settings: cells trained otherwise would not be comparable."""
    path = out / SETTINGS
    if path.is_file():
        previous = read_json(path)
        if previous != json.loads(json.dumps(settings)):
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            old, new = previous.get("train_options", {}), settings["train_options"]
            options = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            detail = ", ".join(options) if options else ", ".join(changed)
            raise EdgeclinError(f"{out} holds a sweep with other settings ({detail} differ: see {path}); "
                                "add models, methods or seeds freely, but for other settings use another -o")
    else:
        (out / "runs").mkdir(parents=True, exist_ok=True)
        write_json(path, settings)


def _unique(items) -> list:
    return list(dict.fromkeys(items))


def _remember_cells(out: Path, cells: list[Cell]) -> list[Cell]:
    """The folder's cells so far plus this invocation's, recorded for the next one.

    A grid grows over invocations (say every method on the small models, then full and
    LoRA alone on the 110M one), and its report should show all of it, not the last command.
    """
    path = out / CELLS
    earlier = [Cell(**c) for c in read_json(path)["cells"]] if path.is_file() else []
    every_cell = _unique([*earlier, *cells])
    write_json(path, {"cells": [asdict(c) for c in every_cell]})
    return every_cell


def _finished(out: Path, cell: Cell) -> bool:
    return (out / "runs" / cell.name / METRICS).is_file()


def _cell_config(out: Path, cell: Cell, data, options: dict, progress: bool):
    from edgeclin.training_config import TrainConfig

    # a collapsed cell is a result of the grid (marked in the table), not a reason to stop it
    return TrainConfig(model=cell.model, method=cell.method, seed=cell.seed, data=data,
                       output=str(out / "runs" / cell.name), overwrite=True, progress=progress,
                       **{"allow_degenerate": True, **options})


DISTILL_PREFIX = "distill-"  # distill-K: a K-layer student of the same model's LoRA cell (same seed)


def student_layers(method: str) -> int | None:
    """K of a ``distill-K`` method name, or None for a training method."""
    if not method.startswith(DISTILL_PREFIX):
        return None
    try:
        layers = int(method.removeprefix(DISTILL_PREFIX))
    except ValueError:
        raise EdgeclinError(f"unknown method {method!r}: distill-K needs a number of layers, e.g. distill-3") from None
    if layers < 1:
        raise EdgeclinError(f"{method}: a student needs at least one layer")
    return layers


def _distill_cell(out: Path, cell: Cell, data, options: dict, progress: bool, layers: int) -> str:
    """A K-layer student of the LoRA cell of the same model and seed (which is trained first if need be)."""
    from edgeclin import training
    from edgeclin.distill import distill

    teacher = Cell(cell.model, cell.short, "lora", cell.seed)
    if not _finished(out, teacher):
        _train_cell(out, teacher, data, options, progress)
    folder = out / "runs" / cell.name
    partial = PartialRun(folder)
    if partial.path.is_dir() and partial.finished_epoch() and partial.state().get("job", {}).get("kind") == "distill":
        training.train(resume=folder, progress=progress)
        return "resumed"
    passed = {k: v for k, v in options.items() if k in ("epochs", "max_steps", "batch_size", "precision", "device")}
    distill(out / "runs" / teacher.name, folder, layers=layers, seed=cell.seed, overwrite=True, progress=progress,
            allow_degenerate=True, **passed)
    return "distilled"


def _train_cell(out: Path, cell: Cell, data, options: dict, progress: bool) -> str:
    """Train one cell: resume its interrupted run when the settings match, else start afresh."""
    from edgeclin import training

    if student_layers(cell.method) is not None:
        return _distill_cell(out, cell, data, options, progress, student_layers(cell.method))
    config = _cell_config(out, cell, data, options, progress)
    folder = Path(config.output)
    if training.can_resume(folder, config):
        training.train(resume=folder, progress=progress)
        return "resumed"
    training.train(config)  # overwrite=True: clears a partial run that cannot be resumed
    return "trained"


def _reset_peak_memory() -> bool:
    """Start each cell's peak-memory count afresh: the cells share one process.

    Writing 5 to /proc/self/clear_refs resets Linux's VmHWM, which training reports as peak RSS.
    """
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    except Exception:
        pass
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _release_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


# --- hyperparameter search -------------------------------------------------------------------

def _describe_params(params: dict) -> str:
    names = {"lr": "lr", "lora_r": "r", "lora_alpha": "alpha"}
    return ", ".join(f"{names.get(k, k)} {v:.2g}" if isinstance(v, float) else f"{names.get(k, k)} {v}"
                     for k, v in params.items())


def _valid_score(metrics: dict) -> float:
    """The validation selection metric at the best epoch: what the search maximises."""
    metric = metrics.get("selection_metric", "macro_f1")
    best = next(e for e in metrics["epochs"] if e["epoch"] == metrics["best_epoch"])
    return float(best["valid"][metric])


def _default_lr(cell: Cell, data: str | None, options: dict) -> float:
    """The rate train fills for the cell: its method's default for the task and for the model's size."""
    from edgeclin.models import encoder_size, resolve_model

    size = encoder_size(resolve_model(cell.model, init=options.get("init") or "pretrained").path)
    return defaults_for(cell.method, _task_name(data, options)).values(size)["lr"]


def _task_name(data: str | None, options: dict) -> str:
    """The task of the sweep's data (its training file's header), for the task's default learning rate."""
    from edgeclin.data import detect_task, find_split_files
    from edgeclin.training_config import TrainConfig

    if data is None or not Path(data).is_dir():
        return ANY_TASK  # the built-in demo notes: single-label, the general defaults
    config = TrainConfig(**options)
    return detect_task(find_split_files(Path(data))["train"], config.columns, config.multi_label).name


def _search(out: Path, first: Cell, data, options: dict, trials: int, progress: bool, say) -> dict:
    """Optuna over the learning rate (LoRA: also rank and alpha), one run folder per trial.

    Finished trials are replayed into a fresh study on a rerun, so the search resumes too.
    Trials train with the sweep's first seed; the best trial's run becomes that seed's cell.
    """
    optuna = require_optuna()
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    from edgeclin.training import train
    from edgeclin.training_config import TrainConfig

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    key = f"{first.short}-{first.method}"
    folder = out / "search" / key
    folder.mkdir(parents=True, exist_ok=True)
    base_lr = options.get("lr") or _default_lr(first, data, options)
    distributions = {"lr": FloatDistribution(base_lr * LR_FACTORS[0], base_lr * LR_FACTORS[1], log=True)}
    if first.method == "lora":
        distributions["lora_r"] = CategoricalDistribution(LORA_RANKS)
        distributions["lora_alpha"] = CategoricalDistribution(LORA_ALPHAS)

    records: dict[int, dict] = {}
    for k in range(trials):
        trial_dir = folder / f"trial{k}"
        if (trial_dir / METRICS).is_file():
            config = read_json(trial_dir / RUN_RECORD)["config"]
            params = {name: config[name] for name in distributions}
            records[k] = {"trial": k, "params": params, "value": _valid_score(read_json(trial_dir / METRICS)),
                          "status": "ok", "folder": str(trial_dir)}
    # a sampler seeded by how much history it replays: a resumed search does not re-propose trial 0
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=len(records)))
    for record in records.values():
        study.add_trial(create_trial(params=record["params"], distributions=distributions, value=record["value"]))
    for k in range(trials):
        if k in records:
            continue
        trial = study.ask(distributions)
        params = dict(trial.params)
        trial_dir = folder / f"trial{k}"
        say(f"search {key} trial {k + 1}/{trials}: {_describe_params(params)}")
        _reset_peak_memory()
        try:
            result = train(TrainConfig(**{"allow_degenerate": True, **options, **params}, model=first.model,
                                       method=first.method, seed=first.seed, data=data, output=str(trial_dir),
                                       overwrite=True, progress=progress))
            value = _valid_score(result.metrics)
            study.tell(trial, value)
            records[k] = {"trial": k, "params": params, "value": value, "status": "ok", "folder": str(trial_dir)}
        except Exception as exc:
            study.tell(trial, state=TrialState.FAIL)
            records[k] = {"trial": k, "params": params, "value": None, "status": "failed", "reason": _reason(exc)}
            say(f"search {key} trial {k + 1} failed: {_reason(exc)}")
        finally:
            _release_memory()
    done = [r for r in records.values() if r["status"] == "ok"]
    found = {"trials": [records[k] for k in sorted(records)], "seed": first.seed, "space": {
        "lr": [base_lr * LR_FACTORS[0], base_lr * LR_FACTORS[1], "log-uniform"],
        **({"lora_r": list(LORA_RANKS), "lora_alpha": list(LORA_ALPHAS)} if first.method == "lora" else {})}}
    if done:
        best = max(done, key=lambda r: (r["value"], -r["trial"]))  # ties: the earlier trial
        found.update(best=best["params"], best_trial=best["trial"], best_value=best["value"],
                     best_folder=best["folder"])
        say(f"search {key}: best validation score {100 * best['value']:.1f} with {_describe_params(best['params'])}")
    else:
        found.update(best=None, reason="every search trial failed: " + "; ".join(
            sorted({r.get("reason", "") for r in records.values()})))
    write_json(folder / "search.json", found)
    return found


def _read_search(out: Path, key: str) -> dict:
    path = out / "search" / key / "search.json"
    return read_json(path) if path.is_file() else {"best": {}, "note": "cells were finished before"}


def _adopt_trial(out: Path, cell: Cell, trial_folder: str) -> None:
    """The best trial was trained exactly as this cell would be: copy it instead of training again."""
    from edgeclin.files import OutputFolder

    target = out / "runs" / cell.name
    with OutputFolder(target, overwrite=True) as folder:
        shutil.copytree(trial_folder, folder.staging, dirs_exist_ok=True)
        record = read_json(folder.staging / RUN_RECORD)
        record["config"]["output"] = str(target)
        record["search_trial"] = trial_folder
        write_json(folder.staging / RUN_RECORD, record)
        shutil.rmtree(partial_dir(target), ignore_errors=True)  # this sweep's own interrupted cell
        folder.publish()


# --- the report -------------------------------------------------------------------------------

def _weights_bytes(folder: Path) -> int:
    """Bytes of the saved weights: the adapter for PEFT methods, the whole model for full."""
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def _cell_row(out: Path, cell: Cell, status: dict | None) -> dict:
    row = {"cell": cell.name, "model": cell.short, "model_spec": cell.model, "method": cell.method,
           "seed": cell.seed}
    folder = out / "runs" / cell.name
    if not (folder / METRICS).is_file():
        if status is None:
            row.update(status="not run", reason="not trained yet (rerun the command that asked for it)")
        else:
            row.update(status="failed", reason=status.get("reason", ""))
        return row
    metrics = read_json(folder / METRICS)
    record = read_json(folder / RUN_RECORD) if (folder / RUN_RECORD).is_file() else {}
    config = record.get("config", {})
    metric = metrics.get("selection_metric", "macro_f1")
    test_value = metrics.get("test", {}).get(metric)
    training, parameters = metrics.get("training", {}), metrics.get("parameters", {})
    row.update(
        status="ok", how=(status or {}).get("how", "done earlier"), folder=str(folder),
        task=metrics.get("task", "single_label_classification"), metric=metric,
        test=None if test_value is None else float(test_value), valid=_valid_score(metrics),
        init=metrics.get("init", config.get("init", "pretrained")),
        total_params=parameters.get("total"), trainable_params=parameters.get("trainable"),
        trainable_percent=parameters.get("trainable_percent"), adapter_bytes=_weights_bytes(folder),
        train_seconds=training.get("wall_seconds"), samples_per_second=training.get("samples_per_second"),
        optimizer_steps=training.get("optimizer_steps"), lr=training.get("lr"),
        peak_rss_mb=metrics.get("memory", {}).get("peak_rss_mb"),
        cuda_max_allocated_mb=metrics.get("memory", {}).get("cuda_max_allocated_mb"),
        collapsed=metrics.get("degenerate"),  # why its best epoch looks degenerate, or None
    )
    if cell.method == "lora":
        row.update(lora_r=config.get("lora_r"), lora_alpha=config.get("lora_alpha"))
    return row


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def collect(out: Path, cells: list[Cell], statuses: dict[str, dict]) -> dict:
    """Per-cell rows from the run folders, and per task the (model, method) table over seeds."""
    rows = [_cell_row(out, cell, statuses.get(cell.name)) for cell in cells]
    tasks: dict[str, dict] = {}
    pairs = _unique((c.short, c.method) for c in cells)
    failed = []
    for model, method in pairs:
        mine = [r for r in rows if (r["model"], r["method"]) == (model, method)]
        ok = [r for r in mine if r["status"] == "ok"]
        problems = [r for r in mine if r["status"] != "ok"]
        if not ok:
            failed.append({"model": model, "method": method, "status": problems[0]["status"],
                           "seeds": [r["seed"] for r in problems],
                           "reason": "; ".join(dict.fromkeys(r.get("reason", "") for r in problems))})
            continue
        for task in dict.fromkeys(r["task"] for r in ok):
            group = [r for r in ok if r["task"] == task]
            values = [r["test"] for r in group if r["test"] is not None]
            entry = {
                "model": model, "method": method, "init": group[0]["init"], "lr": _mean(r["lr"] for r in group),
                "lora_r": group[0].get("lora_r"), "lora_alpha": group[0].get("lora_alpha"),
                "total_params": group[0]["total_params"], "trainable_params": group[0]["trainable_params"],
                "trainable_percent": group[0]["trainable_percent"], "adapter_bytes": group[0]["adapter_bytes"],
                "train_seconds": _mean(r["train_seconds"] for r in group),
                "samples_per_second": _mean(r["samples_per_second"] for r in group),
                "peak_rss_mb": max((r["peak_rss_mb"] for r in group if r["peak_rss_mb"] is not None), default=None),
                # in points (percent), like the gap
                "test_mean": 100 * statistics.fmean(values) if values else None,
                "test_std": 100 * statistics.stdev(values) if len(values) > 1 else None,
                "test_values": [100 * v for v in values],
                "seeds_ok": [r["seed"] for r in group],
                "seeds_failed": [r["seed"] for r in problems],
                "seeds_collapsed": [r["seed"] for r in group if r.get("collapsed")],
                "failures": [r.get("reason", "") for r in problems],
            }
            task_entry = tasks.setdefault(task, {"metric": group[0]["metric"], "rows": []})
            task_entry["rows"].append(entry)
    for task_entry in tasks.values():
        # the model's size: its smallest total over methods (full has exactly the model's
        # parameters; adapters add their own on top)
        sizes: dict[str, int] = {}
        for entry in task_entry["rows"]:
            if entry["total_params"] is not None and student_layers(entry["method"]) is None:
                sizes[entry["model"]] = min(sizes.get(entry["model"], entry["total_params"]), entry["total_params"])
        full = {e["model"]: e["test_mean"] for e in task_entry["rows"] if e["method"] == "full"}
        for entry in task_entry["rows"]:
            entry["model_params"] = sizes.get(entry["model"])
            reference = full.get(entry["model"])
            entry["gap_to_full_points"] = (entry["test_mean"] - reference
                                           if reference is not None and entry["test_mean"] is not None else None)
        # smallest model first, as the paper lays out its grid (the sort is stable: methods keep their order)
        task_entry["rows"].sort(key=lambda e: e["model_params"] or float("inf"))
    return {"cells": rows, "tasks": tasks, "failed": failed}


def _environment(with_optuna: bool) -> dict:
    from importlib import metadata

    from edgeclin.hardware import environment
    from edgeclin.provenance import library_versions

    versions = library_versions()
    if with_optuna:
        versions["optuna"] = metadata.version("optuna")
    from edgeclin.provenance import git_commit

    return {**environment(), "versions": versions, "git_commit": git_commit()}


CSV_COLUMNS = ("task", "metric", "model", "model_params", "method", "init", "lr", "lora_r", "lora_alpha",
               "trainable_params", "trainable_percent", "adapter_bytes", "train_seconds", "samples_per_second",
               "peak_rss_mb", "test_mean", "test_std", "gap_to_full_points", "seeds_ok", "seeds_failed",
               "seeds_collapsed", "status", "reason")


def _write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_report(out: Path, summary: dict) -> None:
    """sweep.json, sweep.csv, sweep.md and per task two PNG plots, each file replaced atomically."""
    write_json(out / "sweep.json", summary)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for task, task_entry in summary["tasks"].items():
        for entry in task_entry["rows"]:
            row = {**entry, "task": task, "metric": task_entry["metric"], "status": "ok",
                   "seeds_ok": len(entry["seeds_ok"]), "seeds_failed": len(entry["seeds_failed"]),
                   "seeds_collapsed": len(entry["seeds_collapsed"]),
                   "reason": "; ".join(entry["failures"])}
            writer.writerow(["" if row.get(c) is None else row[c] for c in CSV_COLUMNS])
    for entry in summary["failed"]:
        row = {**entry, "seeds_ok": 0, "seeds_failed": len(entry["seeds"])}
        writer.writerow(["" if row.get(c) is None else row[c] for c in CSV_COLUMNS])
    _write_text(out / "sweep.csv", buffer.getvalue())
    _write_text(out / "sweep.md", report_markdown(summary))
    for task in summary["tasks"]:
        plot(summary, task, out, prefix="" if len(summary["tasks"]) == 1 else f"{task}-")


def _count(n) -> str:
    if n is None:
        return ""
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def _size(n) -> str:
    if n is None:
        return ""
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _num(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def report_markdown(summary: dict) -> str:
    config, env = summary["config"], summary["environment"]
    options = ", ".join(f"{k} {v}" for k, v in config["train_options"].items()) or "training defaults"
    lines = ["# edgeclin sweep", "",
             f"Data: {config['data'] or 'built-in demo notes'}; models: {', '.join(config['models'])}; "
             f"methods: {', '.join(config['methods'])}; seeds: {', '.join(map(str, config['seeds']))}; "
             f"options: {options}" + (f"; learning-rate search: {config['search']} trials per model and method"
                                      if config["search"] else "") + ".",
             f"Machine: {env['cpu']}, ISA flags {', '.join(env.get('isa') or []) or 'none recorded'} "
             f"({env['cores']} cores), GPU: {env['gpu'] or 'none'}; commit "
             f"{env['git_commit']}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v) + ".", ""]
    if any(e.get("init") == "random" for t in summary["tasks"].values() for e in t["rows"]):
        lines += ["**Random weights (--init random): the metric columns mean nothing. Use this table for "
                  "parameters, sizes, time and memory only.**", ""]
    for task, task_entry in summary["tasks"].items():
        metric = task_entry["metric"]
        lines += [f"## {task}: test {metric}", "",
                  f"Test {metric} in percent, mean ± standard deviation over seeds; Δ full: points against full "
                  "fine-tuning of the same model. Time, samples/s: training only (mean over seeds); "
                  "size: the saved weights (adapter, or whole model for full); collapsed: seeds whose best "
                  "epoch still looks degenerate (one class for every answer, or a training loss back above "
                  "its start).", "",
                  f"| model | params | method | trainable | trainable % | size | train s | samples/s | "
                  f"peak RSS MiB | test {metric} | Δ full | seeds |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for e in task_entry["rows"]:
            score = _num(e["test_mean"], ".1f") + (f" ± {e['test_std']:.1f}" if e["test_std"] is not None else "")
            gap = "ref." if e["method"] == "full" else _num(e["gap_to_full_points"], "+.1f")
            seeds = str(len(e["seeds_ok"])) + (f" ({len(e['seeds_failed'])} failed)" if e["seeds_failed"] else "")
            if e["seeds_collapsed"]:  # a majority-class answer, not a result of the method
                seeds += f", **{len(e['seeds_collapsed'])} collapsed**"
            lines.append(f"| {e['model']} | {_count(e['model_params'])} | {e['method']} | "
                         f"{_count(e['trainable_params'])} | {_num(e['trainable_percent'], '.2f')} | "
                         f"{_size(e['adapter_bytes'])} | {_num(e['train_seconds'], '.0f')} | "
                         f"{_num(e['samples_per_second'], '.1f')} | {_num(e['peak_rss_mb'], '.0f')} | {score} | "
                         f"{gap} | {seeds} |")
        lines.append("")
    if summary["failed"]:
        lines += ["## Failed or not run", "", "| model | method | seeds | reason |", "|---|---|---|---|"]
        for e in summary["failed"]:
            lines.append(f"| {e['model']} | {e['method']} | {', '.join(map(str, e['seeds']))} | "
                         f"{e['status']}: {e['reason']} |")
        lines.append("")
    for key, found in summary.get("search", {}).items():
        if found.get("best"):
            lines.append(f"Search {key}: best {_describe_params(found['best'])} (validation "
                         f"{100 * found['best_value']:.1f}) of {len(found['trials'])} trials.")
    lines += ["", summary["memory_note"] + "."]
    return "\n".join(lines) + "\n"


def plot(summary: dict, task: str, out: Path, prefix: str = "") -> None:
    """Test metric against trainable parameters, and against model size, one series per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task_entry = summary["tasks"][task]
    metric, rows = task_entry["metric"], [e for e in task_entry["rows"] if e["test_mean"] is not None]
    if not rows:
        return
    methods = list(dict.fromkeys(e["method"] for e in rows))
    for filename, x_key, xlabel, title in (
            ("metric_vs_trainable_params.png", "trainable_params", "trainable parameters (log)",
             f"test {metric} vs trainable parameters"),
            ("metric_vs_model_size.png", "model_params", "model parameters (log)",
             f"test {metric} vs model size")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for method in methods:
            points = sorted((e[x_key], e["test_mean"], e["test_std"] or 0.0, e["model"]) for e in rows
                            if e["method"] == method and e[x_key])
            if not points:
                continue
            xs, ys, errs = [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=method,
                        linestyle="-" if x_key == "model_params" else "none")
            if x_key == "trainable_params":
                for x, y, _, model in points:
                    ax.annotate(model, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set(xscale="log", xlabel=xlabel, ylabel=f"test {metric} (%)", title=title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        with atomic_file(out / f"{prefix}{filename}") as tmp:
            fig.savefig(tmp, dpi=120, format="png")
        plt.close(fig)
