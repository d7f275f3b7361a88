"""End to end on the embedded all-MiniLM-L6-v2 and a slice of real clinical notes (offline)."""

import json

import pytest
from click.testing import CliRunner
from conftest import shared_dataset

from edgeclin.cli import main

pytestmark = pytest.mark.e2e


def test_train_lora_on_mtsamples_slice(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = shared_dataset("mtsamples")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "train", "--data", str(data), "--limit", "48", "--max-length", "64", "--max-steps", "4",
        "--batch-size", "8", "-o", str(out), "--quiet",
    ])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "test macro-F1" in result.output

    metrics = json.loads((out / "metrics.json").read_text())
    record = json.loads((out / "run.json").read_text())
    assert record["resolved"]["model_source"] == "builtin"
    assert record["config"]["model"] == "all-MiniLM-L6-v2" and record["config"]["method"] == "lora"
    assert record["config"]["lora_r"] == 8 and record["resolved"]["lr"] > 0
    assert metrics["training"]["optimizer_steps"] == 4
    # MTSamples notes are long: nearly all of them exceed 64 tokens, and the run says so
    assert metrics["truncation"]["train"]["truncated"] >= 40
    p = metrics["parameters"]
    assert p["trainable_percent"] < 1.0 and p["total"] > 22_000_000
    assert 0.0 <= metrics["test"]["macro_f1"] <= 1.0
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert "pooler.dense" in adapter["target_modules"] and adapter["task_type"] == "SEQ_CLS"
    labels = json.loads((out / "labels.json").read_text())["labels"]
    assert "Orthopedic" in labels and labels == sorted(labels)
