"""Training on a tiny random BERT: run folder, head survival, determinism, resume."""

import json

import numpy as np
import pytest
import torch

from edgeclin.artifacts import partial_dir
from edgeclin.errors import EdgeclinError
from edgeclin.training import TrainConfig, train


def config(tiny_bert, demo_folder, output, **overrides):
    options = dict(model=str(tiny_bert), data=str(demo_folder), output=str(output), epochs=2, batch_size=16,
                   max_length=48, precision="fp32", progress=False, lr=5e-3, allow_degenerate=True)
    options.update(overrides)
    return TrainConfig(**options)


def load_predictions(run_dir, texts):
    """Reload a run folder the way a user would and return its logits."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    record = json.loads((run_dir / "run.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(run_dir)
    if (run_dir / "adapter_config.json").exists():
        base = AutoModelForSequenceClassification.from_pretrained(
            record["resolved"]["base_model"], num_labels=len(record["resolved"]["labels"]),
            ignore_mismatched_sizes=True)
        base.eval()
        model = PeftModel.from_pretrained(base, run_dir)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(run_dir)
    model.eval()
    with torch.no_grad():
        inputs = tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                           max_length=record["config"]["max_length"])
        return model(**inputs).logits


def train_interrupted(monkeypatch, function: str, on_call: int, run_config) -> None:
    """Train with ``edgeclin.training.<function>`` raising KeyboardInterrupt on its ``on_call``-th call."""
    import edgeclin.training as train_module

    real, calls = getattr(train_module, function), {"n": 0}

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == on_call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, function, interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(run_config)
    monkeypatch.setattr(train_module, function, real)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_run_folder_is_complete_and_reloads(tiny_bert, demo_folder, tmp_path, method):
    output = tmp_path / "run"
    result = train(config(tiny_bert, demo_folder, output, method=method))
    assert result.output == output and not partial_dir(output).exists()
    names = {p.name for p in output.iterdir()}
    weights = {"adapter_model.safetensors", "adapter_config.json"} if method == "lora" else {"model.safetensors"}
    assert weights | {"tokenizer.json", "labels.json", "run.json", "metrics.json"} <= names
    assert "epoch" not in names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)  # safetensors only

    metrics = json.loads((output / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2 and metrics["best_epoch"] in (1, 2)
    assert set(metrics["test"]) == {"accuracy", "macro_f1", "weighted_f1", "auroc"}
    assert metrics["truncation"]["train"]["truncated"] > 0  # demo notes exceed 48 tokens
    p = metrics["parameters"]
    assert 0 < p["trainable"] < p["total"] if method == "lora" else p["trainable"] == p["total"]
    assert metrics["memory"]["peak_rss_mb"] > 0 and metrics["training"]["samples_per_second"] > 0
    record = json.loads((output / "run.json").read_text())
    assert record["config"]["method"] == method and record["versions"]["torch"]
    assert record["environment"]["cpu"] and record["resolved"]["labels"] == json.loads(
        (output / "labels.json").read_text())["labels"]

    # the trained head survives saving: reloaded with plain transformers/peft, the run
    # predicts exactly what training measured on its test split
    from edgeclin.data import Columns, read_split

    tests = read_split(demo_folder / "test.csv", "test", Columns()).examples
    logits = load_predictions(output, [e.text for e in tests])
    assert torch.allclose(torch.softmax(logits, -1), torch.from_numpy(result.test_probabilities), atol=1e-5)


def test_training_learns(tmp_path, tiny_bert):
    """A separable task: a model whose head or adapters did not train stays at chance."""
    from conftest import write_csv

    rows = [(f"patient reports {w} {w} today", label) for w, label in (("cough", "lung"), ("pain", "bone"))] * 40
    for name in ("train", "valid", "test"):
        write_csv(tmp_path / "easy" / f"{name}.csv", rows)
    for method, lr in (("lora", 1e-2), ("full", 3e-3)):
        metrics = train(config(tiny_bert, tmp_path / "easy", tmp_path / method, method=method, lr=lr,
                               epochs=4, batch_size=8)).metrics
        assert metrics["test"]["accuracy"] > 0.9, (method, metrics["test"])


def test_same_seed_same_result(tiny_bert, demo_folder, tmp_path):
    first = train(config(tiny_bert, demo_folder, tmp_path / "a", epochs=1)).metrics
    second = train(config(tiny_bert, demo_folder, tmp_path / "b", epochs=1)).metrics
    assert first["test"] == second["test"]
    assert first["epochs"][0]["train_loss"] == second["epochs"][0]["train_loss"]


def test_interrupted_run_keeps_last_epoch_and_resumes_to_the_same_result(tiny_bert, demo_folder, tmp_path,
                                                                          monkeypatch):
    reference = train(config(tiny_bert, demo_folder, tmp_path / "reference", epochs=3)).metrics

    output = tmp_path / "interrupted"
    train_interrupted(monkeypatch, "predict_scores", 2, config(tiny_bert, demo_folder, output, epochs=3))

    work = partial_dir(output)
    assert not output.exists() and (work / "epoch" / "last" / "adapter_model.safetensors").exists()
    assert json.loads((work / "epoch" / "state.json").read_text())["epoch"] == 1
    with pytest.raises(EdgeclinError, match="holds an interrupted run"):
        train(config(tiny_bert, demo_folder, output, epochs=3))

    # as saved before every option was filled in: the learning rate the run started with still applies
    state = json.loads((work / "epoch" / "state.json").read_text())
    (work / "epoch" / "state.json").write_text(json.dumps({**state, "config": {**state["config"], "lr": None}}))

    resumed = train(resume=output).metrics
    assert output.exists() and not work.exists()
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3] and resumed["training"]["lr"] == 5e-3
    defaults = [json.loads((folder / "run.json").read_text())["resolved"]["defaults"]
                for folder in (output, tmp_path / "reference")]
    assert defaults[0] == defaults[1] and set(defaults[0]["applied"]) == {"target_modules", "lora_r", "lora_alpha"}
    assert resumed["test"] == pytest.approx(reference["test"])
    assert resumed["epochs"][2]["train_loss"] == pytest.approx(reference["epochs"][2]["train_loss"], rel=1e-5)


def test_the_head_trains_at_its_own_rate_and_resumes_with_it(tiny_bert, demo_folder, tmp_path, monkeypatch):
    """Prompt tuning's default gives the head (pooler and classifier) its own rate: two optimizer groups,
    recorded, and an interrupted run resumes to the same result."""
    options = dict(method="prompt", lr=None, epochs=2, num_virtual_tokens=4)
    reference = train(config(tiny_bert, demo_folder, tmp_path / "reference", **options)).metrics
    record = json.loads((tmp_path / "reference" / "run.json").read_text())["resolved"]
    assert (record["lr"], record["head_lr"]) == (3e-2, 2e-3) and "head_lr" in record["defaults"]["applied"]
    output = tmp_path / "interrupted"
    train_interrupted(monkeypatch, "predict_scores", 2, config(tiny_bert, demo_folder, output, **options))
    groups = json.loads((partial_dir(output) / "epoch" / "optimizer.json").read_text())["param_groups"]
    assert sorted(g["initial_lr"] for g in groups) == [2e-3, 3e-2]
    resumed = train(resume=output).metrics
    assert resumed["test"] == pytest.approx(reference["test"])


def test_max_steps_and_early_stopping(tiny_bert, demo_folder, tmp_path):
    metrics = train(config(tiny_bert, demo_folder, tmp_path / "steps", epochs=5, max_steps=3)).metrics
    assert metrics["training"]["optimizer_steps"] == 3 and len(metrics["epochs"]) == 1
    # lr 1e-12: validation never improves after epoch 1, so patience 1 stops after epoch 2
    metrics = train(config(tiny_bert, demo_folder, tmp_path / "early", epochs=5, lr=1e-12,
                           early_stopping_patience=1)).metrics
    assert len(metrics["epochs"]) == 2 and metrics["best_epoch"] == 1


def test_data_parallel_training_under_a_launcher(tiny_bert, demo_folder, tmp_path):
    """Two processes (torchrun, as `accelerate launch` uses on GPUs) train one run, no code changes."""
    import os
    import subprocess
    import sys

    output = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd = [*torchrun, "-m", "edgeclin", "train", "--model", str(tiny_bert), "--data", str(demo_folder),
           "--epochs", "2", "--precision", "fp32", "--device", "cpu", "--max-length", "48", "-o", str(output),
           "--quiet", "--allow-degenerate"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("test macro-F1") == 1  # one summary, from the main process
    metrics = json.loads((output / "metrics.json").read_text())
    record = json.loads((output / "run.json").read_text())
    assert record["processes"] == 2
    assert metrics["training"]["optimizer_steps"] == 2 * 3  # 96 rows / 16 per batch / 2 processes
    single = train(config(tiny_bert, demo_folder, tmp_path / "single", epochs=2, lr=None)).metrics
    assert single["training"]["optimizer_steps"] == 2 * 6
    # the gathered evaluation saw each of the 40 test rows once: a single process scoring the
    # saved model agrees exactly
    from edgeclin.data import Columns, read_split
    from edgeclin.metrics import classification_metrics

    tests = read_split(demo_folder / "test.csv", "test", Columns()).examples
    probabilities = torch.softmax(load_predictions(output, [e.text for e in tests]), -1).numpy()
    labels = json.loads((output / "labels.json").read_text())["labels"]
    rescored = classification_metrics([labels.index(e.label) for e in tests], probabilities)
    assert rescored == pytest.approx(metrics["test"])
    # without -o, every process would invent its own folder name: refused
    proc = subprocess.run([*torchrun, "-m", "edgeclin", "train", "--model", str(tiny_bert), "--data",
                           str(demo_folder), "--max-length", "48"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0 and "give the run folder with -o" in proc.stderr


def test_python_api_and_max_length_bound(tiny_bert, demo_folder, tmp_path):
    import edgeclin

    result = edgeclin.train(model=str(tiny_bert), data=str(demo_folder), output=str(tmp_path / "api"), epochs=1,
                            max_length=48, precision="fp32", progress=False, allow_degenerate=True)
    assert (result.output / "metrics.json").exists() and isinstance(edgeclin.TrainConfig(), edgeclin.TrainConfig)
    with pytest.raises(EdgeclinError, match="longer than the model takes \\(512 tokens\\)"):
        edgeclin.train(model=str(tiny_bert), data=str(demo_folder), output=str(tmp_path / "long"), max_length=600,
                       progress=False)
    assert not (tmp_path / "long").exists() and not (tmp_path / "long.partial").exists()


def test_interruption_while_saving_an_epoch_resumes_cleanly(tiny_bert, demo_folder, tmp_path, monkeypatch):
    """Ctrl-C in the middle of writing epoch 2: epoch 1's snapshot stays whole and resumes exactly."""
    reference = train(config(tiny_bert, demo_folder, tmp_path / "reference", epochs=3)).metrics
    output = tmp_path / "run"
    # the second save: epoch 2's weights are written by now, its state is not
    train_interrupted(monkeypatch, "_save_optimizer", 2, config(tiny_bert, demo_folder, output, epochs=3))
    work = partial_dir(output)
    assert json.loads((work / "epoch" / "state.json").read_text())["epoch"] == 1
    assert not (work / "epoch.tmp").exists()
    resumed = train(resume=output).metrics
    assert resumed["test"] == pytest.approx(reference["test"])
    assert [e["train_loss"] for e in resumed["epochs"]] == pytest.approx([e["train_loss"] for e in reference["epochs"]])


def test_gradients_are_clipped_and_recorded(tiny_bert, demo_folder, tmp_path):
    """A huge learning rate on a tiny model stays finite: every step's norm is clipped at --max-grad-norm."""
    metrics = train(config(tiny_bert, demo_folder, tmp_path / "clip", epochs=1, lr=5.0, method="full",
                           max_grad_norm=0.5)).metrics
    norms = metrics["epochs"][0]["grad_norm"]
    assert norms["steps"] == metrics["training"]["optimizer_steps"] == 6 and norms["max"] > 0.5
    assert 0 < norms["clipped_steps"] <= norms["steps"] and metrics["training"]["max_grad_norm"] == 0.5
    assert all(np.isfinite(e["train_loss"]) for e in metrics["epochs"])
    record = json.loads((tmp_path / "clip" / "run.json").read_text())
    assert record["config"]["max_grad_norm"] == 0.5 and record["resolved"]["max_grad_norm"] == 0.5
    unclipped = train(config(tiny_bert, demo_folder, tmp_path / "off", epochs=1, lr=5.0, method="full",
                             max_grad_norm=0)).metrics
    assert unclipped["epochs"][0]["grad_norm"]["clipped_steps"] == 0 and unclipped["training"]["max_grad_norm"] is None


def test_a_collapsed_run_does_not_end_silently(tiny_bert, demo_folder, tmp_path):
    from edgeclin.training import DegenerateRun

    # lr 1e-12: the random head does not move, so every prediction is the same class
    with pytest.raises(DegenerateRun, match=r"collapsed.*every prediction is the class") as error:
        train(config(tiny_bert, demo_folder, tmp_path / "flat", epochs=1, lr=1e-12, allow_degenerate=False))
    assert error.value.exit_code == 3
    metrics = json.loads((tmp_path / "flat" / "metrics.json").read_text())  # kept for inspection
    assert metrics["degenerate"].startswith("every prediction is the class")
    assert metrics["epochs"][0]["degenerate"] == metrics["degenerate"]
    accepted = train(config(tiny_bert, demo_folder, tmp_path / "ok", epochs=1, lr=1e-12, allow_degenerate=True))
    assert accepted.metrics["degenerate"]


def test_a_healthy_run_is_not_called_degenerate(tmp_path, tiny_bert):
    from conftest import write_csv

    rows = [(f"patient reports {w} {w} today", label) for w, label in (("cough", "lung"), ("pain", "bone"))] * 40
    for name in ("train", "valid", "test"):
        write_csv(tmp_path / "easy" / f"{name}.csv", rows)
    metrics = train(config(tiny_bert, tmp_path / "easy", tmp_path / "run", method="full", lr=3e-3, epochs=4,
                           batch_size=8, allow_degenerate=False)).metrics
    assert metrics["degenerate"] is None and metrics["epochs"][-1]["degenerate"] is None


def test_the_best_epoch_is_never_a_collapsed_one_when_another_is_not():
    from edgeclin.training import LoopState, is_better

    collapsed_best = LoopState(best_epoch=1, best_score=0.6, best_degenerate=True)
    assert is_better(collapsed_best, 0.3, degenerate=None)  # a real model beats any collapsed one
    assert is_better(collapsed_best, 0.7, degenerate="one class") and not is_better(collapsed_best, 0.5, "one class")
    healthy_best = LoopState(best_epoch=1, best_score=0.6, best_degenerate=False)
    assert not is_better(healthy_best, 0.9, degenerate="one class")
    assert is_better(healthy_best, 0.7, degenerate=None) and not is_better(healthy_best, 0.6, degenerate=None)
    assert is_better(LoopState(), 0.0, degenerate="one class")  # the first epoch is always the best so far


def test_an_adapter_saved_with_other_trained_layers_is_refused_in_one_line(tmp_path):
    """An interrupted run saved by an edgeclin that LoRA'd the pooler (it now trains in full) cannot resume:
    a clear error, not peft's KeyError."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from edgeclin.methods import get_method
    from edgeclin.training import _load_trainable_state
    from tests.test_methods import tiny_model

    model = get_method("lora").prepare(tiny_model("bert"), TrainConfig(method="lora"))
    state = {k: v for k, v in get_peft_model_state_dict(model).items() if "pooler" not in k}
    save_file(state, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(EdgeclinError, match="saved by an edgeclin that trained other layers"):
        _load_trainable_state(model, tmp_path)
