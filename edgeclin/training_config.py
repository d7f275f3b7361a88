"""Every option of a training run, with its checks: saved whole in the run record (``run.json``)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from edgeclin.errors import EdgeclinError
from edgeclin.schema import DEFAULT_MAX_LENGTH, TRUNCATION_STRATEGIES, Columns, InputFormat

DEFAULT_MODEL = "all-MiniLM-L6-v2"
SCHEDULES = ("linear", "cosine", "constant_with_warmup")


@dataclass
class TrainConfig:
    model: str = DEFAULT_MODEL
    init: str = "pretrained"  # or "random": the architecture only, for latency work (models.py)
    data: str | None = None  # folder, or None/"builtin:demo" for the built-in synthetic notes
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
    # None: the method's default for the task (edgeclin/defaults.py), filled once the data is read
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float = 0.1
    target_modules: str | None = None
    num_virtual_tokens: int = 10  # prefix, prompt and P-tuning
    epochs: int | None = None
    max_steps: int | None = None
    lr: float | None = None
    lr_auto: bool = False  # --lr auto: a range test around lr (or the table's default) picks the rate (lr_range.py)
    # the task head's rate (the classifier, and what else trains in full beside an adapter); None: the
    # method's default for the task, which is --lr unless the defaults table gives the head its own
    head_lr: float | None = None
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    schedule: str = "linear"
    max_grad_norm: float | None = 1.0  # gradient clipping; None or 0: off
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = DEFAULT_MAX_LENGTH
    truncation: str = "head"
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"
    early_stopping_patience: int | None = None
    allow_degenerate: bool = False  # finish with exit 0 although the best epoch predicts one answer for all
    output: str | None = None
    overwrite: bool = False
    progress: bool = True

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Tolerant of keys it does not know (a record written by another edgeclin version)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def columns(self) -> Columns:
        return Columns(self.text_col, self.label_col, self.text_pair_col, label_sep=self.label_sep)

    @property
    def input_format(self) -> InputFormat:
        return InputFormat(self.max_length, self.truncation, bool(self.text_pair_col))

    def check(self) -> None:
        from edgeclin.methods import get_method

        get_method(self.method)
        if self.truncation not in TRUNCATION_STRATEGIES:
            raise EdgeclinError(f"--truncation must be one of {', '.join(TRUNCATION_STRATEGIES)}")
        if self.schedule not in SCHEDULES:
            raise EdgeclinError(f"--schedule must be one of {', '.join(SCHEDULES)}")
        for name in ("batch_size", "grad_accum", "num_virtual_tokens"):
            if getattr(self, name) < 1:
                raise EdgeclinError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("epochs", "lora_r", "lora_alpha", "max_steps", "limit", "early_stopping_patience"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise EdgeclinError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_length < 8:
            raise EdgeclinError("--max-length must be at least 8")
        for name in ("lr", "head_lr"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise EdgeclinError(f"--{name.replace('_', '-')} must be above 0 (at 0 nothing trains)")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise EdgeclinError("--max-grad-norm must not be negative (0 turns clipping off)")
        if not 0 <= self.warmup_ratio <= 1:
            raise EdgeclinError("--warmup-ratio must be between 0 and 1")
        if not 0 <= self.lora_dropout < 1:
            raise EdgeclinError("--lora-dropout must be in [0, 1)")
