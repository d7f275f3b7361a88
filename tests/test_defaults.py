"""Task-aware training defaults: what fills an option left out, what the run records, and that the table
in the code is the one the benchmarks measured."""

import json
from pathlib import Path

import pytest

from edgeclin.defaults import ANY_TASK, BASE_SIZE, DEFAULTS, FIELDS, defaults_for, describe, fill_defaults
from edgeclin.errors import EdgeclinError
from edgeclin.methods import METHODS
from edgeclin.tasks import MULTI_LABEL, TOKEN
from edgeclin.training import TrainConfig, train

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
BASE = "search_base_size_defaults"
GROUP_TASKS = {"NER": TOKEN, "multi-label": MULTI_LABEL}  # the search's task groups


def test_every_method_has_general_defaults():
    assert {method for method, task in DEFAULTS if task == ANY_TASK} == set(METHODS)
    with pytest.raises(EdgeclinError, match="no training defaults"):
        defaults_for("nonsense")


def test_ner_lora_takes_the_ner_settings_and_says_why():
    config, record = fill_defaults(TrainConfig(method="lora"), TOKEN)
    assert (config.target_modules, config.lora_r, config.lora_alpha, config.lr, config.epochs) == \
        ("all-linear", 16, 32, 2e-3, 6)
    assert record["task"] == TOKEN and "confirm_ner" in record["why"]
    assert set(record["applied"]) == set(defaults_for("lora", TOKEN).values()) == set(FIELDS) - {"head_lr"}


def test_given_options_are_kept_and_not_listed_as_defaults():
    config, record = fill_defaults(TrainConfig(method="lora", lr=1e-3, lora_r=4), TOKEN)
    assert config.lr == 1e-3 and config.lora_r == 4 and config.lora_alpha == 32
    assert "lr" not in record["applied"] and "lora_r" not in record["applied"]
    _, nothing = fill_defaults(TrainConfig(method="full", lr=1e-4, head_lr=1e-3, epochs=2, target_modules="qv",
                                           lora_r=8, lora_alpha=8), TOKEN)
    assert nothing == {}


def test_other_tasks_and_methods_take_the_general_defaults():
    config, record = fill_defaults(TrainConfig(method="lora"), "single_label_classification")
    assert (config.target_modules, config.lora_r, config.epochs) == ("attention", 8, 4)
    assert config.lr == defaults_for("lora").lr
    config, record = fill_defaults(TrainConfig(method="full"), TOKEN)
    assert config.lr == 2e-4 and config.epochs == 4
    assert set(record["applied"]) == {"lr", "head_lr", "epochs"}  # LoRA's options mean nothing to a full one
    assert config.head_lr == 2e-3 and fill_defaults(TrainConfig(method="full"), "single_label_classification")[
        0].head_lr is None


def test_a_base_size_model_takes_the_base_size_rate_and_says_why():
    """A 110M model's full fine-tune collapsed at the small models' rate: its size picks another."""
    full = defaults_for("full")
    config, record = fill_defaults(TrainConfig(method="full"), "single_label_classification", 110_000_000)
    assert config.lr == full.base_size_lr < full.lr
    assert record["parameters"] == 110_000_000 and "110M parameters" in record["why"] and BASE in record["why"]
    small, record = fill_defaults(TrainConfig(method="full"), "single_label_classification", BASE_SIZE - 1)
    assert small.lr == full.lr and record["why"] == full.why
    given, record = fill_defaults(TrainConfig(method="full", lr=1e-3), "single_label_classification", 110_000_000)
    assert given.lr == 1e-3 and record["why"] == full.why  # a rate the user gives is kept; no base-size reason
    lora, _ = fill_defaults(TrainConfig(method="lora"), "single_label_classification", 110_000_000)
    assert lora.lr == defaults_for("lora").lr  # LoRA's rate held at 110M (search_base_size_defaults)


def test_help_text_is_read_from_the_table():
    assert describe("lora_r", ("lora",)) == "8 (lora on NER 16)"
    assert describe("epochs") == "4 (lora on NER 6)"
    lr = describe("lr")
    assert lr.startswith(f"{_short(defaults_for('lora').lr)} (") and "lora" not in lr
    assert f"full 2e-4, {_short(defaults_for('full').base_size_lr)} at 60M+ parameters" in lr
    assert describe("head_lr") == "--lr (full on NER 2e-3; prompt 2e-3)"
    assert "lora on NER" not in lr  # NER's LoRA rate is LoRA's general one: not repeated
    assert "full on NER 2e-4;" in lr  # NER's full rate does not change with size


def test_ner_defaults_are_those_confirm_ner_measured():
    measured = json.loads((RESULTS / "confirm_ner.json").read_text())["runs"]
    lora, full = measured["lora"], measured["full"]
    chosen = defaults_for("lora", TOKEN)
    assert {name: lora["options"][name] for name in chosen.values()} == chosen.values()
    assert lora["test"]["f1"] >= 0.98 * full["test"]["f1"]  # the reason they are the defaults
    assert full["options"]["epochs"] == defaults_for("full", TOKEN).epochs and full["lr"] == defaults_for("full").lr


def test_full_default_is_the_searched_best():
    rows = json.loads((RESULTS / "search_defaults.json").read_text())
    scores: dict[str, list[float]] = {}
    for row in rows:
        if row["setting"].startswith("full lr") and "fp32" not in row["setting"]:
            scores.setdefault(row["setting"], []).append(row["valid_macro_f1"])
    best = max((s for s in scores if len(scores[s]) == 2), key=lambda s: sum(scores[s]))
    assert best == f"full lr{_short(defaults_for('full').lr)}"


def test_base_size_rates_are_the_base_size_search_choice():
    """The base-size rates are what the search on mpnet-base (110M) chose, and the small models' full
    fine-tune rate is one that collapsed there."""
    result = json.loads((RESULTS / "search_base_size_defaults.json").read_text())
    assert {row["model"] for row in result["rows"]} == {"mpnet-base"}
    assert result["chosen"]["full / classification"] == f"lr {_short(defaults_for('full').base_size_lr)}"
    assert result["chosen"]["lora / classification"] == f"lr {_short(defaults_for('lora').lr)}"
    small_rate = next(t for t in result["table"] if t["method"] == "full" and t["setting"] == "lr 2e-4")
    assert small_rate["collapsed"] > 0
    ner = json.loads((RESULTS / "search_base_size_ner_defaults.json").read_text())
    full_ner = defaults_for("full", TOKEN)
    assert ner["chosen"]["full / NER"] == f"lr {_short(full_ner.lr)} head {_short(full_ner.head_lr)}"
    assert full_ner.base_size_lr is None  # so NER's full fine-tune keeps its rate at every size
    config, _ = fill_defaults(TrainConfig(method="full"), TOKEN, 110_000_000)
    assert config.lr == full_ner.lr


@pytest.mark.parametrize("results", ["search_robust_defaults", "search_peft_defaults"])
def test_learning_rates_are_the_robust_search_choice(results):
    """Each method's learning rates per task group are the setting the robust search chose (best worst case):
    LoRA and full in one search, IA3 and the virtual-token methods in another."""
    result = json.loads((RESULTS / f"{results}.json").read_text())
    assert result["chosen"], "the search chose nothing"
    for key, setting in result["chosen"].items():
        method, group = key.split(" / ")
        chosen = defaults_for(method, GROUP_TASKS.get(group, ANY_TASK))
        head = f" head {_short(chosen.head_lr)}" if chosen.head_lr else ""
        assert setting == f"lr {_short(chosen.lr)}{head}", key
        rows = [t for t in result["table"] if (t["method"], t["group"]) == (method, group)]
        row = next(t for t in rows if t["setting"] == setting)
        assert row["collapsed"] == min(t["collapsed"] for t in rows) and row["failed"] == 0, key


def test_every_method_leaves_the_majority_class_at_its_defaults():
    """The issue's bar: at its defaults each method beats always answering the majority class by 10 points."""
    for results in ("search_robust_defaults", "search_peft_defaults"):
        result = json.loads((RESULTS / f"{results}.json").read_text())
        chosen = [r for r in result["rows"] if r["dataset"] in ("mtsamples", "ade_corpus")
                  and result["chosen"].get(f"{r['method']} / classification") == r["setting"]]
        assert {r["method"] for r in chosen} >= ({"lora", "full"} if "robust" in results else set(METHODS) - {
            "lora", "full"})
        for row in chosen:
            assert row["test"] - row["majority"] >= 0.10, row


def _short(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


def test_a_run_records_the_defaults_it_applied(tiny_bert, ner_folder, tmp_path):
    config = TrainConfig(model=str(tiny_bert), data=str(ner_folder), output=str(tmp_path / "n"), max_steps=2,
                         epochs=1, batch_size=8, max_length=32, progress=False, allow_degenerate=True)
    train(config)
    record = json.loads((tmp_path / "n" / "run.json").read_text())
    assert record["config"]["target_modules"] == "all-linear" and record["config"]["lora_r"] == 16
    assert record["resolved"]["defaults"]["applied"] == {"lr": 2e-3, "target_modules": "all-linear", "lora_r": 16,
                                                         "lora_alpha": 32}
    assert record["resolved"]["lr"] == 2e-3


def test_a_run_of_a_base_size_model_records_the_rate_its_size_chose(tiny_bert, demo_folder, tmp_path, monkeypatch):
    """The size comes from the loaded model: here a tiny one counts as base size."""
    monkeypatch.setattr("edgeclin.defaults.BASE_SIZE", 1000)
    config = TrainConfig(model=str(tiny_bert), data=str(demo_folder), output=str(tmp_path / "f"), method="full",
                         max_steps=1, epochs=1, batch_size=8, max_length=32, progress=False, allow_degenerate=True)
    train(config)
    record = json.loads((tmp_path / "f" / "run.json").read_text())
    assert record["config"]["lr"] == record["resolved"]["lr"] == defaults_for("full").base_size_lr
    assert record["resolved"]["defaults"]["parameters"] > 1000 and BASE in record["resolved"]["defaults"]["why"]
