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
        "--batch-size", "8", "-o", str(out), "--quiet", "--allow-degenerate",
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
    assert p["trainable_percent"] < 1.5 and p["total"] > 22_000_000  # 0.69% LoRA, 0.65% pooler, the classifier
    assert 0.0 <= metrics["test"]["macro_f1"] <= 1.0
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert "pooler.dense" in adapter["modules_to_save"] and adapter["task_type"] == "SEQ_CLS"
    assert "pooler.dense" not in adapter["target_modules"]
    labels = json.loads((out / "labels.json").read_text())["labels"]
    assert "Orthopedic" in labels and labels == sorted(labels)


def test_ade_train_merge_export_predict(tmp_path, monkeypatch):
    """The whole path on the built-in model: bundle predictions match the PyTorch model's."""
    import numpy as np

    from edgeclin import runtime
    from edgeclin.data import Columns, read_split
    from edgeclin.export import export
    from edgeclin.merge import merge

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = shared_dataset("ade_corpus")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--limit", "64", "--max-length", "64",
                                       "--max-steps", "6", "--batch-size", "16", "-o", str(run), "--quiet",
                                       "--allow-degenerate"])
    assert result.exit_code == 0, (result.output, result.exception)
    merged = merge(run, tmp_path / "merged")
    assert json.loads((merged / "merge.json").read_text())["max_abs_logit_diff"] <= 1e-4

    fp32 = export(run, tmp_path / "fp32", quiet=True)
    int8 = export(merged, tmp_path / "int8", int8=True, max_drop=100.0, quiet=True,
                  eval_data=None)
    # the merged folder carries the run's record, so it is gated on the same test split
    assert int8.manifest["gate"]["eval_examples"] == fp32.manifest["gate"]["eval_examples"] == 64
    assert (tmp_path / "int8" / "model.onnx").stat().st_size < 0.35 * (merged / "model.safetensors").stat().st_size

    out = tmp_path / "pred.csv"
    test_file = tmp_path / "test.csv"
    examples = read_split(data / "test.csv", "test", Columns()).examples[:50]
    import csv

    with test_file.open("w", newline="") as handle:
        csv.writer(handle).writerows([("text", "label"), *((e.text, e.label) for e in examples)])
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "int8"), "--data", str(test_file), "-o", str(out)])
    assert result.exit_code == 0, result.output

    # PyTorch reference: the merged model through transformers
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    texts = [e.text for e in examples]
    with torch.no_grad():
        reference = torch.softmax(model(**tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                                    max_length=64)).logits, -1).numpy()
    # pinned: "auto" may pick a bf16 engine that export measured faster on this CPU (AMX)
    fp32_probs = runtime.load(tmp_path / "fp32", backend="onnxruntime").predict(texts).probabilities
    assert np.abs(fp32_probs - reference).max() < 1e-4
    import csv as csv_module

    predicted = [row["label"] for row in csv_module.DictReader(out.open())]
    labels = json.loads((merged / "labels.json").read_text())["labels"]
    agreement = np.mean([p == labels[i] for p, i in zip(predicted, reference.argmax(1), strict=True)])
    assert agreement >= 0.9


def test_sentence_pairs_end_to_end_on_nli4ct(tmp_path, monkeypatch):
    """Premise + statement pairs, read from the text_pair column without an option: the long premise is
    trimmed first, through export and predict."""
    from edgeclin.export import export

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = shared_dataset("nli4ct")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--limit", "32",
                                       "--max-length", "96", "--max-steps", "3", "--batch-size", "8", "-o", str(run),
                                       "--quiet", "--allow-degenerate"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads((run / "run.json").read_text())["resolved"]["pair_column_found"] == "text_pair"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["truncation"]["train"]["truncated"] > 0
    bundle = export(run, tmp_path / "bundle", int8=True, max_drop=100.0, quiet=True)
    assert bundle.manifest["text_pair"] is True and bundle.manifest["columns"]["text_pair"] == "text_pair"
    out = tmp_path / "pred.jsonl"
    result = CliRunner().invoke(main, ["predict", str(bundle.bundle), "--data", str(data / "valid.csv"), "-o",
                                       str(out)])
    assert result.exit_code == 0, result.output
    first = json.loads(out.read_text().splitlines()[0])
    assert first["text_pair"] and first["label"] in ("Entailment", "Contradiction")
