"""Bad input: one clear line naming the problem, a non-zero exit, no traceback, nothing written."""

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import write_csv

from edgeclin.cli import main


def run_train(*args):
    result = CliRunner().invoke(main, ["train", "--quiet", "--precision", "fp32", "--allow-degenerate", *args])
    return result


def assert_clean_failure(result, *fragments, output=None):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgeclin: error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    if output is not None:
        assert not output.exists() and not output.with_name(output.name + ".partial").exists()


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "data"
    for name in ("train", "valid", "test"):
        write_csv(folder / f"{name}.csv", [("chest pain", "cardio"), ("knee pain", "ortho")] * 3)
    return folder


def test_missing_file(tmp_path, tiny_bert):
    out = tmp_path / "out"
    result = run_train("--model", str(tiny_bert), "--train", str(tmp_path / "absent.csv"),
                       "--valid", str(tmp_path / "absent.csv"), "--test", str(tmp_path / "absent.csv"), "-o", str(out))
    assert_clean_failure(result, "data file not found", "absent.csv", output=out)
    result = run_train("--model", str(tiny_bert), "--data", str(tmp_path / "nowhere"), "-o", str(out))
    assert_clean_failure(result, "data folder not found", output=out)


def test_missing_column_lists_columns(data, tiny_bert, tmp_path):
    out = tmp_path / "out"
    result = run_train("--model", str(tiny_bert), "--data", str(data), "--text-col", "note", "-o", str(out))
    assert_clean_failure(result, "train.csv", "no column 'note'", "columns present: text, label", output=out)


def test_empty_and_non_utf8_rows(data, tiny_bert, tmp_path):
    out = tmp_path / "out"
    (data / "valid.csv").write_bytes(b"text,label\nchest pain,cardio\n\xff\xfe broken,ortho\nknee,ortho\n")
    result = run_train("--model", str(tiny_bert), "--data", str(data), "-o", str(out))
    assert_clean_failure(result, "valid.csv, line 3", "not valid UTF-8", "--skip-bad-rows", output=out)
    write_csv(data / "test.csv", [("chest pain", "cardio"), ("", "ortho"), ("knee pain", "ortho")])
    result = run_train("--model", str(tiny_bert), "--data", str(data), "-o", str(out), "--skip-bad-rows",
                       "--epochs", "1")
    assert result.exit_code == 0, result.output
    import json

    described = json.loads((out / "run.json").read_text())["data"]
    assert described["valid"]["skipped_rows"] == 1 and described["test"]["skipped_rows"] == 1


def test_unseen_label_and_single_class(data, tiny_bert, tmp_path):
    out = tmp_path / "out"
    write_csv(data / "test.csv", [("chest pain", "cardio"), ("rash", "derma")])
    assert_clean_failure(run_train("--model", str(tiny_bert), "--data", str(data), "-o", str(out)),
                         "test.csv", "'derma' never occur in the training data", output=out)
    write_csv(data / "train.csv", [("chest pain", "cardio")] * 4)
    assert_clean_failure(run_train("--model", str(tiny_bert), "--data", str(data), "-o", str(out)),
                         "train.csv", "only one class ('cardio')", output=out)


def test_unknown_model(data, tmp_path):
    out = tmp_path / "out"
    assert_clean_failure(run_train("--model", "no-such-model", "--data", str(data), "-o", str(out)),
                         "unknown model 'no-such-model'", output=out)
    assert_clean_failure(run_train("--model", "nobody/no-such-model", "--data", str(data), "-o", str(out)),
                         "unknown model 'nobody/no-such-model'", "Hugging Face Hub", output=out)
    (tmp_path / "empty").mkdir()
    assert_clean_failure(run_train("--model", str(tmp_path / "empty"), "--data", str(data), "-o", str(out)),
                         "has no config.json", output=out)


def test_existing_output_is_refused_unless_overwrite(data, tiny_bert, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_train("--model", str(tiny_bert), "--data", str(data), "-o", str(out))
    assert_clean_failure(result, "already exists", "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"
    result = run_train("--model", str(tiny_bert), "--data", str(data), "-o", str(out), "--overwrite",
                       "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and (out / "metrics.json").exists()
    assert "test macro-F1" in result.output


def test_resume_without_checkpoint(tmp_path):
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "never-started")])
    assert_clean_failure(result, "nothing to resume")


def test_real_process_prints_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "edgeclin", "train", "--data", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"edgeclin: error: data folder not found: {tmp_path / 'missing'}"


def test_help_teaches():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    for option in ("--method", "--lora-r", "--target-modules", "--truncation", "--resume", "--skip-bad-rows",
                   "--precision", "--limit", "accelerate launch"):
        assert option in result.output


def test_resume_takes_only_quiet(tiny_bert, demo_folder, tmp_path, monkeypatch):
    import edgeclin.training as training

    out = tmp_path / "run"
    real, calls = training._save_epoch, {"n": 0}

    def stop_after_first_epoch(*args, **kwargs):
        real(*args, **kwargs)
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_epoch", stop_after_first_epoch)
    result = run_train("--model", str(tiny_bert), "--data", str(demo_folder), "--epochs", "2", "--max-length", "32",
                       "-o", str(out))
    assert result.exit_code == 130
    monkeypatch.setattr(training, "_save_epoch", real)
    refused = CliRunner().invoke(main, ["train", "--resume", str(out), "--lr", "0.1", "--epochs", "9"])
    assert_clean_failure(refused, "--resume continues the run with its own options", "--lr", "--epochs")
    resumed = CliRunner().invoke(main, ["train", "--resume", str(out), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" not in resumed.stderr and "epoch 2:" not in resumed.stderr  # --quiet honoured
    assert "test macro-F1" in resumed.stdout and (out / "metrics.json").exists()
