"""edgeclin distill on tiny random teachers of each task type."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import write_csv

from edgeclin.artifacts import open_model_folder
from edgeclin.defaults import defaults_for
from edgeclin.distill import distill, layer_map, student_from_teacher, teacher_model
from edgeclin.errors import EdgeclinError
from edgeclin.training import TrainConfig, train

QUICK = dict(epochs=3, batch_size=8, lr=5e-3, precision="fp32", progress=False, allow_degenerate=True)


def test_layer_map_keeps_evenly_spaced_layers():
    assert layer_map(6, 3) == [0, 2, 4] and layer_map(6, 2) == [0, 3] and layer_map(12, 4) == [0, 3, 6, 9]
    assert layer_map(2, 1) == [0]
    with pytest.raises(EdgeclinError, match="fewer layers than the teacher"):
        layer_map(6, 6)


def test_the_student_starts_as_the_teachers_chosen_layers(lora_run):
    teacher = teacher_model(open_model_folder(lora_run.output))
    student = student_from_teacher(teacher, [1])
    assert student.config.num_hidden_layers == 1
    t, s = teacher.state_dict(), student.state_dict()
    assert all(torch.equal(s[k], t[k.replace(".layer.0.", ".layer.1.")]) for k in s if ".layer.0." in k)
    assert all(torch.equal(s[k], t[k]) for k in s if ".layer." not in k)  # embeddings, pooler, head
    ids = torch.randint(5, 50, (2, 9))
    assert not torch.allclose(student(input_ids=ids).logits, teacher(input_ids=ids).logits)


@pytest.fixture(scope="module")
def students(lora_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("students")
    return {"lora teacher": distill(lora_run.output, out / "s1", layers=1, **QUICK), "out": out}


def test_a_student_is_an_ordinary_run_with_its_teacher_recorded(students, lora_run):
    result = students["lora teacher"]
    names = {p.name for p in result.output.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "labels.json", "run.json", "metrics.json",
            "README.md"} <= names
    config = json.loads((result.output / "config.json").read_text())
    assert config["num_hidden_layers"] == 1
    job = json.loads((result.output / "run.json").read_text())["job"]
    assert job["teacher"] == str(lora_run.output) and job["student_layers"] == [0] and job["temperature"] == 2.0
    assert result.metrics["distill"]["teacher_test"] == lora_run.metrics["test"]
    assert result.metrics["parameters"]["trainable"] == result.metrics["parameters"]["total"]  # full, by default
    losses = [e["train_loss"] for e in result.metrics["epochs"]]
    assert losses[-1] < losses[0]  # the distillation loss goes down


def test_a_student_of_a_lora_teacher_exports_and_predicts(students, demo_folder, tmp_path):
    from edgeclin import runtime
    from edgeclin.export import export

    bundle = export(students["lora teacher"].output, tmp_path / "bundle", int8=True, max_drop=100.0, quiet=True)
    texts = ["chest pain radiating to the left arm", "knee pain after a fall"]
    assert len(runtime.load(bundle.bundle).predict(texts).labels) == 2


def test_interrupted_distillation_resumes_to_the_same_result(lora_run, tmp_path, monkeypatch):
    import edgeclin.training as training

    reference = distill(lora_run.output, tmp_path / "ref", layers=1, **QUICK).metrics
    real, calls = training._save_epoch, {"n": 0}

    def stop_after_first(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_epoch", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        distill(lora_run.output, tmp_path / "cut", layers=1, **QUICK)
    monkeypatch.setattr(training, "_save_epoch", real)
    resumed = train(resume=tmp_path / "cut").metrics  # `edgeclin train --resume` continues a distillation
    assert resumed["distill"]["teacher"] == str(lora_run.output)
    assert resumed["test"] == pytest.approx(reference["test"])
    assert [e["train_loss"] for e in resumed["epochs"]] == pytest.approx([e["train_loss"]
                                                                         for e in reference["epochs"]])


@pytest.mark.parametrize("kind", ["ner_folder", "multilabel_folder"])
def test_students_of_every_task_type(request, tiny_bert, tmp_path, kind):
    folder = request.getfixturevalue(kind)
    teacher = train(TrainConfig(model=str(tiny_bert), data=str(folder), multi_label=kind == "multilabel_folder",
                                method="full", max_length=32, output=str(tmp_path / "teacher"), **QUICK))
    unlabelled = tmp_path / ("more.jsonl" if kind == "ner_folder" else "more.csv")
    if kind == "ner_folder":
        unlabelled.write_text("".join(json.dumps({"tokens": ["no", "asthma", "today"]}) + "\n" for _ in range(10)))
    else:
        write_csv(unlabelled, [("raised troponin and wheeze",)] * 10, header=("text",))
    student = distill(teacher.output, tmp_path / "student", layers=1, unlabelled=unlabelled,
                      trim_vocab=kind == "ner_folder", **QUICK)  # NER's teacher reads per-piece ids: mapped back
    assert student.metrics["task"] == teacher.metrics["task"]
    assert student.metrics["distill"]["unlabelled_rows"] == 10
    assert student.metrics["test"][student.metrics["selection_metric"]] is not None


def test_hidden_loss_and_lora_students(lora_run, tmp_path):
    result = distill(lora_run.output, tmp_path / "h", layers=1, hidden_loss=True, method="lora", **QUICK)
    assert (result.output / "adapter_config.json").exists() and result.metrics["distill"]["hidden_loss"]
    assert result.metrics["parameters"]["trainable"] < result.metrics["parameters"]["total"]


def test_a_trimmed_student_reads_its_notes_as_the_teacher_and_exports(lora_run, demo_folder, tmp_path):
    import csv

    from edgeclin import runtime
    from edgeclin.export import export
    from edgeclin.models import load_tokenizer

    result = distill(lora_run.output, tmp_path / "trim", layers=1, trim_vocab=True, hidden_loss=True, **QUICK)
    teacher, student = load_tokenizer(str(lora_run.output)), load_tokenizer(str(result.output))
    vocabulary = result.metrics["distill"]["vocabulary"]
    assert vocabulary["student"] == len(student) < vocabulary["teacher"] == len(teacher)
    note = "chest pain radiating to the left arm"
    assert student.tokenize(note) == teacher.tokenize(note)
    with (demo_folder / "test.csv").open(encoding="utf-8") as handle:
        test = [row["text"] for row in csv.DictReader(handle)]
    unseen = sum(any(piece not in student.get_vocab() for piece in teacher.tokenize(text)[:48 - 2]) for text in test)
    assert vocabulary["test_rows"] == len(test) and vocabulary["test_rows_read_otherwise"] == unseen > 0
    assert json.loads((result.output / "config.json").read_text())["vocab_size"] == len(student)
    bundle = export(result.output, tmp_path / "bundle", int8=True, max_drop=100.0, quiet=True)
    assert len(runtime.load(bundle.bundle).predict([note, "knee pain after a fall"]).labels) == 2


def test_the_teacher_of_a_trimmed_student_reads_its_own_ids(lora_run, tmp_path):
    """Same teacher outputs (logits, hidden states) with and without a cut vocabulary: student ids are mapped back."""
    from dataclasses import replace

    import numpy as np

    from edgeclin.distill import DistillConfig, DistillJob, _hidden_loss, teacher_config

    config = teacher_config(lora_run.output, output=str(tmp_path / "x"), **QUICK)
    jobs = [DistillJob(DistillConfig(str(lora_run.output), layers=1, hidden_loss=True, trim_vocab=trim))
            for trim in (False, True)]
    setups = [job.prepare(replace(config)) for job in jobs]
    kept = jobs[1].vocabulary.kept
    assert kept != tuple(range(len(kept)))  # ids do move, so a missing mapping would show
    assert setups[0].encoded["train"].input_ids != setups[1].encoded["train"].input_ids
    for plain, cut in zip(jobs[0].teacher_logits, jobs[1].teacher_logits, strict=True):
        np.testing.assert_allclose(plain, cut, atol=1e-5)
    losses = []
    for job, setup in zip(jobs, setups, strict=True):
        batch = setup.task.batch(setup.encoded["train"], [0, 1, 2, 3], setup.pad_id, setup.token_types)
        zeros = torch.zeros(*batch["input_ids"].shape, job.teacher.config.hidden_size)
        losses.append(_hidden_loss(job.teacher, batch, (zeros, zeros), [0], job._to_teacher).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_bad_distillation_options(lora_run, tiny_bert, tmp_path):
    with pytest.raises(EdgeclinError, match="not both"):
        distill(lora_run.output, tmp_path / "x", layers=1, student=str(tiny_bert))
    with pytest.raises(EdgeclinError, match="not of --student"):
        distill(lora_run.output, tmp_path / "x", student=str(tiny_bert), trim_vocab=True)
    with pytest.raises(EdgeclinError, match="--alpha"):
        distill(lora_run.output, tmp_path / "x", alpha=2.0)
    with pytest.raises(EdgeclinError, match="fewer layers than the teacher"):
        distill(lora_run.output, tmp_path / "x", layers=2, **QUICK)
    result = CliRunner().invoke(__import__("edgeclin.cli", fromlist=["main"]).main,
                                ["distill", str(lora_run.output), "--temperature", "0", "-o", str(tmp_path / "y")])
    assert result.exit_code == 2 and not (tmp_path / "y").exists()


def test_lr_auto_runs_its_range_test_on_the_distillation_loss(lora_run, tmp_path):
    result = CliRunner().invoke(__import__("edgeclin.cli", fromlist=["main"]).main,
                                ["distill", str(lora_run.output), "--layers", "1", "--lr", "auto", "--max-steps", "2",
                                 "--allow-degenerate", "--quiet", "-o", str(tmp_path / "auto")])
    assert result.exit_code == 0, result.output
    resolved = json.loads((tmp_path / "auto" / "run.json").read_text())["resolved"]
    test = resolved["lr_range_test"]
    assert test["base_lr"] == defaults_for("full").lr  # the student trains in full
    assert resolved["lr"] == pytest.approx(test["lr"]) == pytest.approx(test["base_lr"] * test["chosen"])


def test_a_student_must_share_the_tokenizer(lora_run, tmp_path):
    from edgeclin.models import resolve_model

    other = resolve_model("minilm-l6").path  # the built-in model: another vocabulary than the tiny BERT's
    with pytest.raises(EdgeclinError, match="another tokenizer than the teacher"):
        distill(lora_run.output, tmp_path / "x", student=other, **QUICK)
    assert not (tmp_path / "x").exists()


def test_sweep_distils_each_models_lora_cell(tiny_bert, demo_folder, tmp_path):
    from edgeclin.sweep import run_sweep

    result = run_sweep([str(tiny_bert)], ["full", "lora", "distill-1"], output=tmp_path, data=str(demo_folder),
                       progress=False, epochs=1, max_steps=2, batch_size=16, max_length=32, precision="fp32")
    rows = {r["method"]: r for r in result.summary["tasks"]["single_label_classification"]["rows"]}
    assert set(rows) == {"full", "lora", "distill-1"}
    assert rows["distill-1"]["total_params"] < rows["full"]["total_params"] == rows["full"]["model_params"]
    assert rows["distill-1"]["model_params"] == rows["full"]["total_params"]  # the model's size, not the student's
    record = json.loads((tmp_path / "runs" / f"{tiny_bert.name}-distill-1-seed0" / "run.json").read_text())
    assert record["job"]["teacher"].endswith(f"{tiny_bert.name}-lora-seed0")
    with pytest.raises(EdgeclinError, match="distill-K needs a number of layers"):
        run_sweep([str(tiny_bert)], ["distill-x"], output=tmp_path / "bad")
