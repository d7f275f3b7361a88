"""The built tasks feed the rest of edgeclin: train on every builder output (tiny model, a few
steps), and take a multi-label MIMIC run through export --int8 and predict."""

import csv
import json

import builder_fixtures as fixtures
import pytest

from edgeclin.builders.i2b2 import build_i2b2
from edgeclin.builders.mimic import build_mimic
from edgeclin.tasks import MULTI_LABEL, SINGLE_LABEL, TOKEN
from edgeclin.training import TrainConfig, train

MIMIC_TASKS = {"mp": SINGLE_LABEL, "los": SINGLE_LABEL, "dia": MULTI_LABEL, "pro": MULTI_LABEL}


@pytest.fixture(scope="module")
def mimic_tasks(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mimic")
    fx = fixtures.write_mimic_iii(root / "raw", patients=80)
    built = {}
    for task in MIMIC_TASKS:
        build_mimic(fx.notes, fx.admissions, task, root / task, diagnoses=fx.diagnoses,
                                  procedures=fx.procedures, progress=False)
        built[task] = root / task
    return built


def quick_run(model, data, output, **options):
    return train(TrainConfig(model=str(model), data=str(data), output=str(output), max_steps=3, batch_size=8,
                             max_length=64, precision="fp32", progress=False, allow_degenerate=True, **options))


@pytest.mark.parametrize("task", list(MIMIC_TASKS))
def test_train_on_each_mimic_task(mimic_tasks, tiny_bert, tmp_path, task):
    run = quick_run(tiny_bert, mimic_tasks[task], tmp_path / "run", multi_label=MIMIC_TASKS[task] == MULTI_LABEL)
    assert run.metrics["task"] == MIMIC_TASKS[task]
    assert run.metrics["test"][run.metrics["selection_metric"]] is not None


@pytest.mark.parametrize("year", [2010, 2012, 2014])
def test_train_on_each_i2b2_year(tiny_bert, tmp_path, year):
    fx = fixtures.write_i2b2(tmp_path / "raw", year)
    build_i2b2(year, fx.folder, tmp_path / "built")
    run = quick_run(tiny_bert, tmp_path / "built", tmp_path / "run")
    assert run.metrics["task"] == TOKEN and "f1" in run.metrics["test"]


def test_multilabel_mimic_run_exports_and_predicts(mimic_tasks, tiny_bert, tmp_path):
    from edgeclin.export import export
    from edgeclin.predict import predict_file

    run = quick_run(tiny_bert, mimic_tasks["dia"], tmp_path / "run", multi_label=True)
    bundle = export(run.output, tmp_path / "bundle", int8=True, quiet=True, max_drop=100.0)
    assert bundle.manifest["task"] == MULTI_LABEL and bundle.manifest["quantization"] is not None
    out = tmp_path / "pred.csv"
    summary = predict_file(bundle.bundle, mimic_tasks["dia"] / "test.csv", out)
    assert "micro_f1" in summary["metrics"]
    rows = list(csv.DictReader(out.open()))
    labels = json.loads((bundle.bundle / "labels.json").read_text())
    assert len(rows) == summary["rows"] and all(f"p_{label}" in rows[0] for label in labels["labels"])
