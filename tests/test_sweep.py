"""Sweeps on a tiny random BERT; presets and --init random for the paper's architectures."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgeclin import sweep as sweep_module
from edgeclin.errors import EdgeclinError
from edgeclin.sweep import run_sweep

# a few optimizer steps per cell: the grid's bookkeeping is under test, not accuracy
FAST = dict(epochs=1, max_steps=2, batch_size=16, max_length=32, precision="fp32", lr=5e-3)


@pytest.fixture(scope="module")
def grid(tiny_bert, demo_folder, tmp_path_factory):
    """full and lora on the tiny BERT, two seeds: the reference sweep that several tests read."""
    out = tmp_path_factory.mktemp("sweep") / "grid"
    result = run_sweep([str(tiny_bert)], ["full", "lora"], output=out, data=str(demo_folder), seeds=2,
                       progress=False, **FAST)
    return result


def test_grid_writes_runs_and_report(grid, tiny_bert):
    out, short = grid.output, tiny_bert.name
    for method in ("full", "lora"):
        for seed in (0, 1):
            assert (out / "runs" / f"{short}-{method}-seed{seed}" / "metrics.json").is_file()
    summary = json.loads((out / "sweep.json").read_text())
    task = summary["tasks"]["single_label_classification"]
    assert task["metric"] == "macro_f1"
    rows = {row["method"]: row for row in task["rows"]}
    assert set(rows) == {"full", "lora"}
    lora, full = rows["lora"], rows["full"]
    assert lora["seeds_ok"] == [0, 1] and lora["test_std"] is not None
    assert lora["gap_to_full_points"] == pytest.approx(lora["test_mean"] - full["test_mean"])
    assert full["gap_to_full_points"] == 0
    assert lora["trainable_params"] < full["trainable_params"] == full["model_params"]
    assert 0 < lora["adapter_bytes"] < full["adapter_bytes"]  # adapter alone vs the whole model
    assert lora["train_seconds"] > 0 and lora["samples_per_second"] > 0 and lora["peak_rss_mb"] > 0
    assert summary["environment"]["versions"]["torch"] and summary["environment"]["cores"]
    assert summary["config"]["train_options"]["max_steps"] == 2

    with (out / "sweep.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == sweep_module.CSV_COLUMNS
    assert {r["method"] for r in table} == {"full", "lora"}
    assert all(r["metric"] == "macro_f1" and r["gap_to_full_points"] != "" for r in table)
    markdown = (out / "sweep.md").read_text()
    assert "| model | params | method | trainable" in markdown and "Δ full" in markdown and "±" in markdown
    from edgeclin.hardware import environment

    assert f"ISA flags {', '.join(environment()['isa']) or 'none recorded'} (" in markdown  # every table names them
    for plot in ("metric_vs_trainable_params.png", "metric_vs_model_size.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_trains_only_missing_cell(grid, tiny_bert, demo_folder, monkeypatch):
    import edgeclin.training as training

    out, short = grid.output, tiny_bert.name
    victim = out / "runs" / f"{short}-lora-seed1"
    shutil.rmtree(victim)
    kept = out / "runs" / f"{short}-full-seed0" / "metrics.json"
    before = kept.stat().st_mtime_ns
    trained = []
    real_train = training.train

    def counting(config=None, **kwargs):
        trained.append(kwargs.get("resume") or config.output)
        return real_train(config, **kwargs)

    monkeypatch.setattr(training, "train", counting)
    run_sweep([str(tiny_bert)], "full,lora", output=out, data=str(demo_folder), seeds=2, progress=False, **FAST)
    assert trained == [str(victim)]
    assert (victim / "metrics.json").is_file() and kept.stat().st_mtime_ns == before


def test_interrupted_cell_resumes(tiny_bert, demo_folder, tmp_path, monkeypatch):
    """A cell stopped after its first epoch continues from it on the rerun."""
    import edgeclin.training as training

    options = {**FAST, "epochs": 2, "max_steps": None, "limit": 32}
    real_save, calls = training._save_epoch, {"n": 0}

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:  # after epoch 1 of the first cell
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_epoch", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_sweep([str(tiny_bert)], ["lora"], output=tmp_path, data=str(demo_folder), progress=False, **options)
    partial = tmp_path / "runs" / f"{tiny_bert.name}-lora-seed0.partial"
    assert partial.is_dir()
    monkeypatch.setattr(training, "_save_epoch", real_save)
    result = run_sweep([str(tiny_bert)], ["lora"], output=tmp_path, data=str(demo_folder), progress=False,
                       **options)
    cell = result.summary["cells"][0]
    assert cell["status"] == "ok" and cell["how"] == "resumed" and not partial.exists()


def test_failed_cell_is_recorded_and_sweep_continues(tiny_bert, demo_folder, tmp_path, monkeypatch):
    from edgeclin import methods

    def refuse(*args):
        raise EdgeclinError("prefix tuning works on bert models only, not testbert")

    monkeypatch.setitem(methods.METHODS, "prefix", methods.Method("prefix", False, True, refuse))
    result = run_sweep([str(tiny_bert)], ["full", "prefix"], output=tmp_path, data=str(demo_folder),
                       progress=False, **FAST)
    statuses = {c["method"]: c["status"] for c in result.summary["cells"]}
    assert statuses == {"full": "ok", "prefix": "failed"}
    failed = result.summary["failed"]
    assert failed[0]["method"] == "prefix" and "bert models only" in failed[0]["reason"]
    assert "bert models only" in (tmp_path / "sweep.md").read_text()
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "failed"]


def test_a_second_command_grows_the_grid_and_the_report_covers_both(tiny_bert, demo_folder, tmp_path):
    from transformers import AutoTokenizer, BertForSequenceClassification

    smaller = tmp_path / "tiny-bert-1-layer"  # the grid's other model: one layer fewer, same vocabulary
    BertForSequenceClassification.from_pretrained(tiny_bert, num_hidden_layers=1).save_pretrained(smaller)
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(smaller)
    out = tmp_path / "grid"
    run_sweep([str(tiny_bert)], ["full"], output=out, data=str(demo_folder), progress=False, **FAST)
    result = run_sweep([str(smaller)], ["full", "lora"], output=out, data=str(demo_folder), progress=False, **FAST)

    rows = result.summary["tasks"]["single_label_classification"]["rows"]
    # every cell of the folder, smallest model first
    assert [(r["model"], r["method"]) for r in rows] == [(smaller.name, "full"), (smaller.name, "lora"),
                                                         (tiny_bert.name, "full")]
    assert rows[0]["model_params"] < rows[2]["model_params"]
    assert result.summary["config"]["models"] == [str(tiny_bert), str(smaller)]
    earlier = next(c for c in result.summary["cells"] if c["model"] == tiny_bert.name)
    assert earlier["status"] == "ok" and earlier["how"] == "done earlier"
    assert tiny_bert.name in (out / "sweep.md").read_text()


def test_a_collapsed_cell_is_marked_in_every_table(grid, tiny_bert, tmp_path):
    out = tmp_path / "grid"
    shutil.copytree(grid.output, out)
    for path in (out / "runs").glob("*/metrics.json"):  # lora seed 1 collapsed, the rest healthy
        reason = "every prediction is the class 'a'" if path.parent.name.endswith("lora-seed1") else None
        path.write_text(json.dumps({**json.loads(path.read_text()), "degenerate": reason}))
    cells = [sweep_module.Cell(str(tiny_bert), tiny_bert.name, m, s) for m in ("full", "lora") for s in (0, 1)]
    summary = {**grid.summary, **sweep_module.collect(out, cells, {})}
    rows = {r["method"]: r for r in summary["tasks"]["single_label_classification"]["rows"]}
    assert rows["lora"]["seeds_collapsed"] == [1] and rows["full"]["seeds_collapsed"] == []
    sweep_module.write_report(out, summary)
    lora_line = next(line for line in (out / "sweep.md").read_text().splitlines() if "| lora |" in line)
    assert lora_line.endswith("| 2, **1 collapsed** |")
    table = {r["method"]: r for r in csv.DictReader((out / "sweep.csv").open())}
    assert table["lora"]["seeds_collapsed"] == "1" and table["full"]["seeds_collapsed"] == "0"


def test_other_settings_into_the_same_folder_are_refused(grid, tiny_bert, demo_folder):
    with pytest.raises(EdgeclinError, match=r"other settings.*max_steps"):
        run_sweep([str(tiny_bert)], ["full"], output=grid.output, data=str(demo_folder), progress=False,
                  **{**FAST, "max_steps": 3})


def test_bad_sweep_options_fail_before_training(tmp_path):
    with pytest.raises(EdgeclinError, match="unknown method"):
        run_sweep(["minilm-l6"], ["lora", "dora"], output=tmp_path)
    with pytest.raises(EdgeclinError, match="not a sweep-wide"):
        run_sweep(["minilm-l6"], ["lora"], output=tmp_path, method="full")
    assert not (tmp_path / "runs").exists()


def test_search_without_optuna_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # "import optuna" now raises ImportError
    with pytest.raises(EdgeclinError, match=r"--search needs Optuna.*edgeclin\[sweep\]"):
        run_sweep(["minilm-l6"], ["lora"], output=tmp_path, search=2)
    assert not (tmp_path / "runs").exists()


def test_search_picks_best_trial_as_cell(tiny_bert, demo_folder, tmp_path):
    import optuna  # noqa: F401  (installed by make test through the "sweep" extra: a missing one fails)
    result = run_sweep([str(tiny_bert)], ["lora"], output=tmp_path, data=str(demo_folder), search=2,
                       progress=False, **FAST)
    found = result.summary["search"][f"{tiny_bert.name}-lora"]
    assert len(found["trials"]) == 2 and found["best"] is not None
    assert set(found["best"]) == {"lr", "lora_r", "lora_alpha"}
    assert 5e-4 <= found["best"]["lr"] <= 5e-2  # the default x0.1 .. x10
    cell = tmp_path / "runs" / f"{tiny_bert.name}-lora-seed0"
    config = json.loads((cell / "run.json").read_text())["config"]
    assert {k: config[k] for k in found["best"]} == found["best"]
    assert "Search" in (tmp_path / "sweep.md").read_text()


def test_presets_resolve_with_a_clear_offline_error(monkeypatch):
    from edgeclin.models import PRESETS, resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert PRESETS["bio-mobilebert"] == "nlpie/bio-mobilebert"
    with pytest.raises(EdgeclinError) as error:
        resolve_model("tiny-biobert")
    message = str(error.value)
    assert "nlpie/tiny-biobert" in message and "--model <local folder>" in message and "--init random" in message
    assert resolve_model("minilm-l6").source == "builtin"


# the paper's parameter counts for a 2-label classifier (../shared/MODELS.md), with the
# vocabulary of the built-in uncased tokenizer standing in for the cased ones offline
@pytest.mark.parametrize("preset,published", [("tiny-biobert", 13.9e6), ("bio-mobilebert", 24.6e6),
                                              ("distil-biobert", 65.8e6), ("biobert", 108.3e6)])
def test_random_init_presets_train_offline(preset, published, demo_folder, tmp_path_factory, monkeypatch):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from edgeclin.models import PRESET_ARCHITECTURES, PRESETS
    from edgeclin.training import TrainConfig, train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # shared by the four cases, so a rerun of the module reuses the built folders
    monkeypatch.setenv("EDGECLIN_CACHE", str(tmp_path_factory.getbasetemp() / "edgeclin-cache"))
    exact = AutoConfig.for_model(**PRESET_ARCHITECTURES[PRESETS[preset]])
    with torch.device("meta"):  # parameter count without allocating weights
        count = sum(p.numel() for p in AutoModelForSequenceClassification.from_config(exact).parameters())
    assert count == pytest.approx(published, rel=0.005)

    out = tmp_path_factory.mktemp("random") / preset
    result = train(TrainConfig(model=preset, init="random", method="lora", data=str(demo_folder), limit=8,
                               max_steps=2, batch_size=4, max_length=16, precision="fp32", progress=False,
                               output=str(out), allow_degenerate=True))
    assert result.metrics["init"] == "random"
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["init"] == "random"
    init = record["resolved"]["init"]
    assert init["init"] == "random" and "all-MiniLM-L6-v2" in init["tokenizer"]
    assert init["model_type"] == PRESET_ARCHITECTURES[PRESETS[preset]]["model_type"]
    base = record["resolved"]["base_model"]
    assert json.loads((Path(base) / "config.json").read_text())["vocab_size"] == 30522


def test_random_init_base_is_reproducible(tmp_path, monkeypatch):
    """merge/export find the adapter's random base again: same folder, and rebuilt identically."""
    from safetensors.torch import load_file

    from edgeclin.models import resolve_model

    monkeypatch.setenv("EDGECLIN_CACHE", str(tmp_path))
    first = resolve_model("minilm-l6", init="random")
    weights = load_file(os.path.join(first.path, "model.safetensors"))
    shutil.rmtree(first.path)
    again = resolve_model("minilm-l6", init="random")
    assert again.path == first.path
    rebuilt = load_file(os.path.join(again.path, "model.safetensors"))
    assert all((weights[k] == rebuilt[k]).all() for k in weights)
    with pytest.raises(EdgeclinError, match="unknown --init"):
        resolve_model("minilm-l6", init="zeros")


def test_cli_sweep(tiny_bert, demo_folder, tmp_path):
    from edgeclin.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["sweep", "--models", str(tiny_bert), "--methods", "lora", "--data",
                                  str(demo_folder), "--max-steps", "1", "--max-length", "32", "--precision", "fp32",
                                  "--quiet", "-o", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    assert "| model | params | method" in result.output and "sweep written to" in result.output
    result = runner.invoke(main, ["sweep", "--models", "x", "--methods", "nope", "-o", str(tmp_path / "t")])
    assert result.exit_code == 2 and "edgeclin: error: unknown method 'nope'" in result.output
    assert "Rerun to resume" in " ".join(runner.invoke(main, ["sweep", "--help"]).output.split())


def test_the_search_centres_on_the_rate_train_would_fill(tiny_bert, demo_folder, tmp_path):
    """A 110M model's full fine-tune is searched around its base-size rate, not the small models' one."""
    from transformers import BertConfig

    from edgeclin.defaults import BASE_SIZE, defaults_for
    from edgeclin.models import encoder_size
    from edgeclin.sweep import Cell, _default_lr

    base = tmp_path / "bert-base-shaped"
    BertConfig().save_pretrained(base)  # BERT-base's shape; no weights are read
    assert encoder_size(str(base)) > BASE_SIZE > encoder_size(str(tiny_bert))
    full, lora = defaults_for("full"), defaults_for("lora")
    assert _default_lr(Cell(str(base), "base", "full", 0), str(demo_folder), {}) == full.base_size_lr
    assert _default_lr(Cell(str(tiny_bert), "tiny", "full", 0), str(demo_folder), {}) == full.lr != full.base_size_lr
    assert _default_lr(Cell(str(base), "base", "lora", 0), str(demo_folder), {}) == lora.lr
