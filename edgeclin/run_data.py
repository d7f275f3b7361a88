"""A trained model's own data: the same rows (and subsample) it was trained and tested on.

Merge, export and bench check models on real inputs; this finds them from the run record,
or from ``--eval-data``, and keeps the rows a model with these labels can be scored on.
"""

from __future__ import annotations

from pathlib import Path

from edgeclin.artifacts import RunFolder
from edgeclin.data import load_dataset
from edgeclin.errors import EdgeclinError
from edgeclin.tasks import get_task


def run_examples(run: RunFolder, split: str, eval_data: str | Path | None = None) -> list:
    """A split of the run's own data (same subsample as in training), or of ``eval_data``."""
    if eval_data is not None and not Path(eval_data).is_dir():
        raise EdgeclinError(f"--eval-data {eval_data}: no such data folder")
    if eval_data is None and run.record is None:
        raise EdgeclinError(f"{run.path} has no run.json to find its data: pass --eval-data DIR")
    config = run.config
    try:
        if eval_data is not None:
            dataset = load_dataset(eval_data, columns=run.columns, check=False, task=run.task)
        else:
            dataset = load_dataset(config.data, train=config.train_file, valid=config.valid_file,
                                   test=config.test_file, columns=run.columns, skip_bad_rows=config.skip_bad_rows,
                                   limit=config.limit, seed=config.seed, check=False, task=run.task)
    except EdgeclinError as exc:
        hint = "" if eval_data is not None else "; pass --eval-data DIR"
        raise EdgeclinError(f"cannot read the data to check against ({exc}){hint}") from None
    return get_task(run.task).scorable(dataset.splits[split].examples, run.labels)
