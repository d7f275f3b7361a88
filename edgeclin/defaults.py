"""The training defaults of each method for each kind of task, and the measurement each one rests on.

An option the user leaves out (``None`` in ``TrainConfig``) is filled from here once the data has
told the task, so a NER run gets NER settings without any option. The run record keeps what was
filled and why (``run.json``: ``resolved.defaults``). Every value here comes from a script in
``benchmarks/``; ``tests/test_defaults.py`` holds this table to those results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from edgeclin.errors import EdgeclinError

ANY_TASK = "*"
DEFAULT_METHOD = "lora"  # train's --method default: its values head each option's --help
FIELDS = ("lr", "head_lr", "epochs", "target_modules", "lora_r", "lora_alpha")  # the options a default may fill
LORA_FIELDS = ("target_modules", "lora_r", "lora_alpha")  # meaningful for LoRA only
# Parameters from which a model is "base size" (BERT-base, MPNet-base: about 110M) and takes its method's
# base_size_lr: the models measured below it are 17M-33M, above it 110M; nothing in between was measured
BASE_SIZE = 60_000_000


@dataclass(frozen=True)
class Defaults:
    lr: float
    why: str  # the measurement behind these values (a benchmarks/ results file)
    epochs: int = 4
    target_modules: str = "attention"
    lora_r: int = 8
    lora_alpha: int = 16
    head_lr: float | None = None  # None: the head trains at ``lr`` like the rest
    base_size_lr: float | None = None  # the rate for models of BASE_SIZE parameters and more; None: ``lr``
    base_size_why: str = ""

    def values(self, parameters: int | None = None) -> dict:
        """The options this entry fills, for a model of ``parameters`` (None: of unknown size)."""
        values = {name: value for name, value in asdict(self).items() if name in FIELDS and value is not None}
        if self.has_base_size_rate(parameters):
            values["lr"] = self.base_size_lr
        return values

    def has_base_size_rate(self, parameters: int | None) -> bool:
        """Does a model of ``parameters`` take this entry's base-size rate?"""
        return self.base_size_lr is not None and parameters is not None and parameters >= BASE_SIZE

    def reason(self, parameters: int | None = None, lr_filled: bool = True) -> str:
        """Why these values: the base-size measurement where it chose the filled rate, else the general one."""
        if lr_filled and self.has_base_size_rate(parameters):
            return f"{parameters / 1e6:.0f}M parameters (base size, {BASE_SIZE / 1e6:.0f}M and more): " + \
                self.base_size_why
        return self.why


SEARCH = "benchmarks/results/search_defaults.md"
ROBUST = "benchmarks/results/search_robust_defaults.md"
PEFT = "benchmarks/results/search_peft_defaults.md"
BASE = "benchmarks/results/search_base_size_defaults.md"
BASE_NER = "benchmarks/results/search_base_size_ner_defaults.md"
DEFAULTS: dict[tuple[str, str], Defaults] = {
    # a 110M model's full fine-tune collapsed at the small models' 2e-4 (benchmarks/results/grid_ade)
    ("full", ANY_TASK): Defaults(2e-4, f"best mean validation macro-F1 of 1e-4/2e-4/4e-4 ({SEARCH}); the head "
                                       f"at 2e-3 was better on mtsamples and ade_corpus but collapsed on nli4ct "
                                       f"({ROBUST})",
                                 base_size_lr=5e-5, base_size_why=f"mpnet-base's full fine-tune collapsed at 2e-4 "
                                                                  f"on ade_corpus and learned at 1e-4 and best at "
                                                                  f"5e-5 ({BASE})"),
    # NER keeps 2e-4 at 110M too: on mpnet-base it beat 5e-5 (validation entity F1 71.0 vs 69.3, BASE_NER)
    ("full", "token_classification"): Defaults(2e-4, f"NER: the head at 2e-3 had the best worst case ({ROBUST}), "
                                                     f"at 110M too ({BASE_NER})", head_lr=2e-3),
    # the best worst case over datasets and seeds, with clipping: 4e-3 (the best mean of the first search,
    # without clipping) collapsed on nli4ct and trailed on ade_corpus
    ("lora", ANY_TASK): Defaults(2e-3, f"best worst case over mtsamples, ade_corpus and nli4ct and their seeds, "
                                       f"no collapse ({ROBUST}); r8 a16 on attention from {SEARCH}"),
    # token tagging needs the feed-forward layers and more steps: 81.0 entity F1 against the full
    # fine-tune's 82.5 on ncbi_disease, where the classification defaults reached 76.4
    ("lora", "token_classification"): Defaults(2e-3, "NER: 81.0 entity F1 vs 82.5 for the full fine-tune on "
                                                     "ncbi_disease (benchmarks/results/confirm_ner.md); 4e-3 "
                                                     f"collapsed ({ROBUST})",
                                               epochs=6, target_modules="all-linear", lora_r=16, lora_alpha=32),
    # IA3 and the virtual-token methods learn once the pooler trains in full (edgeclin/methods.py); prompt
    # tuning's tokens also need a rate far above their head's: at one rate for both they stayed put
    ("ia3", ANY_TASK): Defaults(1e-2, f"best worst case of 1e-2 and 3e-2 (head 2e-3) on mtsamples and "
                                      f"ade_corpus ({PEFT})"),
    ("prefix", ANY_TASK): Defaults(1e-2, f"Taylor et al. 2024's rate; leaves the majority class ({PEFT})"),
    ("prompt", ANY_TASK): Defaults(3e-2, f"leaves the majority class with tokens started from the vocabulary "
                                         f"({PEFT}); at the paper's 1e-3 it did not", head_lr=2e-3),
    ("ptuning", ANY_TASK): Defaults(3e-3, f"best worst case of 1e-3 and 3e-3 on mtsamples and ade_corpus ({PEFT})"),
}


def defaults_for(method: str, task: str = ANY_TASK) -> Defaults:
    """The defaults of ``method`` on ``task`` (a task strategy's name), or the method's general ones."""
    try:
        return DEFAULTS.get((method, task)) or DEFAULTS[(method, ANY_TASK)]
    except KeyError:
        raise EdgeclinError(f"no training defaults for method {method!r}") from None


def fill_defaults(config, task: str, parameters: int | None = None):
    """``config`` with every option left as None filled for ``method`` on ``task`` and a model of
    ``parameters``, and the record of what was filled and why (empty when the user gave every option)."""
    chosen = defaults_for(config.method, task)
    filled = {name: value for name, value in chosen.values(parameters).items() if getattr(config, name) is None}
    shown = {name: value for name, value in filled.items() if config.method == "lora" or name not in LORA_FIELDS}
    config = replace(config, **filled)
    if not shown:
        return config, {}
    record = {"method": config.method, "task": task, "applied": shown,
              "why": chosen.reason(parameters, lr_filled="lr" in shown)}
    return config, record | ({"parameters": parameters} if parameters is not None else {})


def describe(name: str, methods: tuple[str, ...] | None = None) -> str:
    """One option's defaults for ``--help``, from the table: e.g. ``4 (lora on NER 6)``."""
    rows = {key: _shown(getattr(d, name)) + _base_size_note(d, name) for key, d in DEFAULTS.items()
            if methods is None or key[0] in methods}
    general = [value for key, value in rows.items() if key[1] == ANY_TASK]
    base = rows.get((DEFAULT_METHOD, ANY_TASK)) or max(general, key=general.count)  # the default method's first
    # a method's general value where it is not the common one; a task's own where it is not its method's
    special = [f"{_who(key)} {value}" for key, value in rows.items()
               if value != (base if key[1] == ANY_TASK else rows.get((key[0], ANY_TASK)))]
    return base + (f" ({'; '.join(special)})" if special else "")


def _who(key: tuple[str, str]) -> str:
    """``lora``, or ``lora on NER`` for a task's own entry."""
    from edgeclin.tasks import TASKS

    method, task_name = key
    return method if task_name == ANY_TASK else f"{method} on {TASKS[task_name].short_name}"


def _base_size_note(defaults: Defaults, name: str) -> str:
    if name != "lr" or defaults.base_size_lr is None:
        return ""
    return f", {_shown(defaults.base_size_lr)} at {BASE_SIZE / 1e6:.0f}M+ parameters"


def _shown(value) -> str:
    if value is None:  # an optional field left to follow another (head_lr: the same as --lr)
        return "--lr"
    return f"{value:.1e}".replace(".0e", "e").replace("e-0", "e-") if isinstance(value, float) else str(value)
