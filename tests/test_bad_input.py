"""The bad-input catalogue's findings (issue "nothing lost, nothing silently wrong"): one test per finding."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_csv

from edgeclin import runtime
from edgeclin.cli import main
from edgeclin.errors import EdgeclinError
from edgeclin.files import OutputLock

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments, code=2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("edgeclin: error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def small_data(folder: Path, rows=None) -> Path:
    rows = rows or [("chest pain on exertion", "cardio"), ("knee pain after a fall", "ortho")] * 4
    for name in ("train", "valid", "test"):
        write_csv(folder / f"{name}.csv", rows)
    return folder


def quick_train(tiny_bert, data, out, *extra):
    return cli("train", "--model", tiny_bert, "--data", data, "--max-steps", "1", "--max-length", "32", "--quiet",
               "--allow-degenerate", "-o", out, *extra)


# 1. Output paths: nothing that appears meanwhile is touched; one writer per output ------------------

def test_export_never_deletes_what_appeared_at_its_output(lora_run, tmp_path, monkeypatch):
    from edgeclin import export as export_module

    out = tmp_path / "victim"
    real_build = export_module.ExportJob.build

    def build_while_the_user_writes(self, folder):
        manifest = real_build(self, folder)
        out.mkdir()
        (out / "IMPORTANT.txt").write_text("keep")
        return manifest

    monkeypatch.setattr(export_module.ExportJob, "build", build_while_the_user_writes)
    result = cli("export", lora_run.output, "-o", out, "--quiet")
    one_line_error(result, "appeared while this command ran and was left as it is", "the result is in")
    assert [p.name for p in out.iterdir()] == ["IMPORTANT.txt"] and (out / "IMPORTANT.txt").read_text() == "keep"
    kept = [p for p in tmp_path.iterdir() if ".edgeclin-result-" in p.name]
    assert len(kept) == 1 and (kept[0] / "manifest.json").exists()


@pytest.mark.parametrize("command", ["export", "merge", "predict", "bench", "train", "sweep", "data-i2b2"])
def test_a_second_writer_of_the_same_output_is_refused(command, lora_run, bundle, tiny_bert, demo_folder, tmp_path):
    import builder_fixtures

    out = tmp_path / ("out.csv" if command == "predict" else "out")
    args = {"export": ["export", lora_run.output, "-o", out, "--quiet"],
            "merge": ["merge", lora_run.output, "-o", out],
            "predict": ["predict", bundle, "--data", demo_folder / "test.csv", "-o", out],
            "bench": ["bench", bundle, "--batch-sizes", "1", "--seq-lens", "8", "--threads", "1", "--warmup", "0",
                      "--runs", "1", "--out", out, "--quiet"],
            "train": ["train", "--model", tiny_bert, "--data", demo_folder, "--max-steps", "1", "-o", out],
            "sweep": ["sweep", "--models", tiny_bert, "--methods", "lora", "--data", demo_folder, "--max-steps", "1",
                      "-o", out, "--quiet"],
            "data-i2b2": ["data", "i2b2", "--year", "2010", "--input",
                          builder_fixtures.write_i2b2(tmp_path / "raw", 2010).folder, "-o", out]}[command]
    lock = OutputLock(out)
    lock.acquire()  # another edgeclin command writing there
    try:
        one_line_error(cli(*args), "is being written by another edgeclin command", f"pid {os.getpid()}")
    finally:
        lock.release()
    assert not out.exists()


# 2. Every byte that decides a prediction is checked ---------------------------------------------------

def _edit_manifest(bundle: Path, copy: Path, change) -> Path:
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return copy


@pytest.mark.parametrize("change", [lambda m: m["labels"].reverse(), lambda m: m.update(max_length=4),
                                    lambda m: m.update(threshold=0.01), lambda m: m.update(truncation="tail"),
                                    lambda m: m.pop("manifest_sha256")])
def test_an_edited_manifest_is_refused(bundle, tmp_path, change):
    copy = _edit_manifest(bundle, tmp_path / "copy", change)
    with pytest.raises(EdgeclinError, match=r"changed since export|has no digest"):
        runtime.load(copy)
    one_line_error(cli("predict", copy, "--data", tmp_path / "any.csv"), "manifest.json")


def test_signed_bundles(lora_run, tmp_path, monkeypatch):
    key, other = tmp_path / "key", tmp_path / "other"
    key.write_text("hospital secret\n")
    other.write_text("someone else")
    signed = cli("export", lora_run.output, "-o", tmp_path / "signed", "--sign-key-file", key, "--quiet")
    assert signed.exit_code == 0, signed.output
    unsigned = cli("export", lora_run.output, "-o", tmp_path / "unsigned", "--quiet")
    assert unsigned.exit_code == 0, unsigned.output
    assert runtime.load(tmp_path / "signed", key=b"hospital secret").predict(["cough"]).labels
    with pytest.raises(EdgeclinError, match="signature does not match this key"):
        runtime.load(tmp_path / "signed", key=b"someone else")
    with pytest.raises(EdgeclinError, match="is not signed, but a signing key was given"):
        runtime.load(tmp_path / "unsigned", key=b"hospital secret")
    monkeypatch.setenv("EDGECLIN_BUNDLE_KEY_FILE", str(other))  # serve and Spark read the key from here
    with pytest.raises(EdgeclinError, match="signature does not match"):
        runtime.load(tmp_path / "signed")
    data = tmp_path / "notes.csv"
    write_csv(data, [("chest pain", "x")], header=("text", "note"))
    one_line_error(cli("predict", tmp_path / "signed", "--data", data, "--key-file", other), "signature")


# 3. Two trainings of one folder -----------------------------------------------------------------------

def test_a_training_run_to_a_folder_in_use_is_refused_cleanly(tiny_bert, demo_folder, tmp_path):
    out = tmp_path / "run"
    lock = OutputLock(out)
    lock.acquire()
    try:
        one_line_error(quick_train(tiny_bert, demo_folder, out), "being written by another edgeclin command")
    finally:
        lock.release()
    assert not out.exists() and not (tmp_path / "run.partial").exists()


# 4. Leftovers after kill -9 ---------------------------------------------------------------------------

def _wait_for(predicate, seconds: float = 60.0) -> None:
    deadline = time.time() + seconds
    while not predicate():
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_kill_during_export_leaves_a_recognisable_temporary_that_the_next_export_removes(lora_run, tmp_path):
    out = tmp_path / "bundle"
    proc = subprocess.Popen([sys.executable, "-m", "edgeclin", "export", str(lora_run.output), "--int8", "-o",
                             str(out), "--quiet"], env=ENV, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: any(p.name.startswith(".bundle.edgeclin-tmp-") for p in tmp_path.iterdir()))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".bundle.")]
    assert leftovers and all(f"edgeclin-tmp-{proc.pid}" in n or "edgeclin-lock" in n for n in leftovers)
    assert not out.exists()
    result = cli("export", lora_run.output, "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # the dead process's files are gone


def test_kill_before_the_first_epoch_offers_the_way_out(tiny_bert, demo_folder, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "edgeclin", "train", "--model", str(tiny_bert), "--data",
                             str(demo_folder), "--epochs", "50", "--max-length", "32", "-o", str(out), "--quiet"],
                            env=ENV, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (tmp_path / "run.partial").is_dir())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    one_line_error(cli("train", "--resume", out), "no finished epoch", "--overwrite")
    again = quick_train(tiny_bert, demo_folder, out)
    one_line_error(again, "--overwrite")
    assert quick_train(tiny_bert, demo_folder, out, "--overwrite").exit_code == 0
    assert (out / "metrics.json").exists() and not (tmp_path / "run.partial").exists()


# 5. Malformed CSV files never train on invented classes -----------------------------------------------

@pytest.mark.parametrize("content, message", [
    ("text,label\nchest pain, left arm,cardio\nknee,ortho\n", "line 2: 3 fields, but the header has 2"),
    ('text,label\n"chest pain,cardio\nknee,ortho\n', "an unterminated quote"),
    ("text,label\nchest pain,nan\nknee,ortho\n", "label 'nan' in column 'label' looks like a missing value"),
    ("text,label,label\nchest pain,cardio,x\n", "column 'label' appears twice in the header"),
    ("text;label\nchest pain;cardio\n", "looks semicolon-separated"),
    ("text\tlabel\nchest pain\tcardio\n", "looks tab-separated"),
    ("text,label\nchest pain\nknee,ortho\n", "line 2: 1 field(s), but the header has 2"),
])
def test_malformed_csv_is_reported_with_its_line(tmp_path, tiny_bert, content, message):
    data = small_data(tmp_path / "data")
    (data / "train.csv").write_text(content)
    one_line_error(quick_train(tiny_bert, data, tmp_path / "out"), "train.csv", message)
    assert not (tmp_path / "out").exists()


def test_suspicious_label_counts_are_warned_about(tmp_path, tiny_bert):
    rows = [(f"note number {i}", f"class{i}") for i in range(30)] + [("chest pain", "cardio")] * 4
    data = small_data(tmp_path / "data", rows)
    result = quick_train(tiny_bert, data, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "30 label(s) occur only once in training" in result.stderr
    assert "31 distinct labels in 34 rows; is the label column the right one (--label-col)?" in result.stderr


# 6. A folder named demo is the user's data ------------------------------------------------------------

def test_a_folder_named_demo_is_the_users_data(tmp_path, tiny_bert, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small_data(tmp_path / "demo")
    assert quick_train(tiny_bert, "demo", tmp_path / "out").exit_code == 0
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["config"]["data"] == str(tmp_path / "demo") and set(record["resolved"]["labels"]) == {"cardio",
                                                                                                     "ortho"}
    shutil.rmtree(tmp_path / "demo")
    one_line_error(quick_train(tiny_bert, "demo", tmp_path / "out2"), "data folder not found: demo",
                   "--data builtin:demo")
    assert quick_train(tiny_bert, "builtin:demo", tmp_path / "out3").exit_code == 0


# 7. Builders recognise tables and releases by their content ---------------------------------------------

def test_swapped_mimic_tables_and_the_wrong_i2b2_year_are_refused(tmp_path):
    import builder_fixtures

    fx = builder_fixtures.write_mimic_iii(tmp_path / "iii")
    one_line_error(cli("data", "mimic", "--notes", fx.notes, "--admissions", fx.admissions, "--task", "pro",
                       "--procedures", fx.diagnoses, "-o", tmp_path / "a"), "it looks like DIAGNOSES_ICD",
                   "--procedures")
    one_line_error(cli("data", "mimic", "--notes", fx.notes, "--admissions", fx.admissions, "--task", "dia",
                       "--diagnoses", fx.procedures, "-o", tmp_path / "b"), "it looks like PROCEDURES_ICD")
    iv = builder_fixtures.write_mimic_iv(tmp_path / "iv")
    one_line_error(cli("data", "mimic", "--notes", iv.notes, "--admissions", iv.admissions, "--task", "dia",
                       "--diagnoses", iv.procedures, "-o", tmp_path / "c"), "looks like procedures_icd")
    release = builder_fixtures.write_i2b2(tmp_path / "i2b2", 2014).folder
    one_line_error(cli("data", "i2b2", "--year", "2012", "--input", release, "-o", tmp_path / "d"),
                   "looks like the 2014 de-identification release (--year 2014)")
    assert not any((tmp_path / name).exists() for name in "abcd")


# 8. Unknown labels are said on screen; a learning rate of 0 is refused ----------------------------------

def test_predict_says_when_labels_are_unknown(bundle, tmp_path):
    data = tmp_path / "notes.csv"
    write_csv(data, [("chest pain radiating", "Cardiology"), ("rash on both arms", "Dermatology")])
    result = cli("predict", bundle, "--data", data, "-o", tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    assert "label(s) 'Dermatology' are unknown to the model; the metrics score the 1 rows it can" in result.stderr


def test_zero_learning_rate_is_refused(tiny_bert, demo_folder, tmp_path):
    result = quick_train(tiny_bert, demo_folder, tmp_path / "out", "--lr", "0")
    assert result.exit_code == 2 and "not above 0 (at 0 nothing trains)" in result.output
    assert not (tmp_path / "out").exists()
    from edgeclin.training import TrainConfig

    with pytest.raises(EdgeclinError, match="--lr must be above 0"):
        TrainConfig(lr=0.0).check()


# 9. A model folder without a tokenizer ------------------------------------------------------------------

def test_a_model_folder_without_tokenizer_files(tiny_bert, demo_folder, tmp_path):
    folder = tmp_path / "bare"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_bert / name, folder / name)
    one_line_error(quick_train(folder, demo_folder, tmp_path / "out"), "has no tokenizer")
    (folder / "model.safetensors").unlink()
    one_line_error(quick_train(folder, demo_folder, tmp_path / "out"), "has no tokenizer")


# 10. An OS error while writing: one line, nothing half-written ------------------------------------------

@pytest.mark.parametrize("command", ["train", "export", "predict"])
def test_a_read_only_file_system_gives_one_line(command, lora_run, bundle, tiny_bert, demo_folder, tmp_path,
                                                monkeypatch):
    real_replace = os.replace

    def read_only(source, target, *args, **kwargs):
        if str(target).startswith(str(tmp_path / "out")):
            raise OSError(errno.EROFS, "Read-only file system", str(target))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", read_only)
    out = tmp_path / ("out.csv" if command == "predict" else "out")
    args = {"train": ["train", "--model", tiny_bert, "--data", demo_folder, "--max-steps", "1", "--max-length", "32",
                      "--allow-degenerate", "--quiet", "-o", out],
            "export": ["export", lora_run.output, "-o", out, "--quiet"],
            "predict": ["predict", bundle, "--data", demo_folder / "test.csv", "-o", out]}[command]
    one_line_error(cli(*args), "Read-only file system", str(out))
    monkeypatch.setattr(os, "replace", real_replace)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# 11. bench settings are checked against the model -------------------------------------------------------

@pytest.mark.parametrize("option, value, message", [("--batch-sizes", "0", "--batch-sizes must be positive"),
                                                    ("--seq-lens", "0", "--seq-lens must be positive"),
                                                    ("--seq-lens", "4096", "longer than"),
                                                    ("--threads", "0", "--threads must be positive"),
                                                    ("--runs", "0", "--runs at least 1")])
def test_bench_settings_are_validated(bundle, tmp_path, option, value, message):
    settings = {"--batch-sizes": "1", "--seq-lens": "8", "--threads": "1", "--runs": "1", option: value}
    args = [a for pair in settings.items() for a in pair]
    one_line_error(cli("bench", bundle, *args, "--warmup", "0", "--out", tmp_path / "b", "--quiet"), message)
    assert not (tmp_path / "b").exists()


# 12. Messages that said the wrong thing -----------------------------------------------------------------

def test_predict_can_skip_bad_rows_as_its_message_says(bundle, tmp_path):
    data = tmp_path / "notes.csv"
    data.write_bytes(b"text\nchest pain\n\n\"\"\nbad \xff byte\nknee pain\n")
    message = one_line_error(cli("predict", bundle, "--data", data), "notes.csv, line 4")
    assert "--skip-bad-rows" in message
    result = cli("predict", bundle, "--data", data, "--skip-bad-rows", "-o", tmp_path / "out.jsonl")
    assert result.exit_code == 0, result.output
    assert "skipped 2 bad rows" in result.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2


def test_messages_name_what_is_wrong(lora_run, bundle, tiny_bert, demo_folder, tmp_path):
    one_line_error(cli("export", lora_run.output, "--eval-data", tmp_path / "nowhere", "-o", tmp_path / "b"),
                   "--eval-data", "no such data folder")
    one_line_error(cli("merge", bundle), "is an exported bundle, not a model folder")
    data = small_data(tmp_path / "data")
    (data / "train.csv").write_text("text,label\n" + "x" * 20_000_000 + ",cardio\nknee,ortho\n")
    one_line_error(quick_train(tiny_bert, data, tmp_path / "o1"), "train.csv, line 2",
                   "a field longer than 16,777,216 characters")
    (data / "train.csv").write_bytes("text,diagnos\u00e9\nchest pain,cardio\n".encode("latin-1"))
    one_line_error(quick_train(tiny_bert, data, tmp_path / "o2"), "line 1: the header is not UTF-8")


def test_a_long_clinical_note_is_read(tiny_bert, tmp_path):
    long_note = " ".join(["chest pain on exertion"] * 40_000)  # ~900k characters, above the csv module's 128k
    data = small_data(tmp_path / "data", [(long_note, "cardio"), ("knee pain", "ortho")] * 2)
    result = quick_train(tiny_bert, data, tmp_path / "out")
    assert result.exit_code == 0, result.output


# 13. --quiet keeps what must never be silent ------------------------------------------------------------

def test_quiet_keeps_the_notices_of_cut_and_skipped_rows(tiny_bert, tmp_path):
    data = small_data(tmp_path / "data", [(" ".join(["cough"] * 80), "a"), ("knee", "b"), ("", "b")] * 3)
    result = quick_train(tiny_bert, data, tmp_path / "out", "--skip-bad-rows")
    assert result.exit_code == 0, result.output
    assert "skipped 3 bad rows" in result.stderr and "inputs longer than 32 tokens, cut (head)" in result.stderr


# 14. No library noise the user cannot act on ------------------------------------------------------------

def test_export_quiet_is_quiet(lora_run, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgeclin", "export", str(lora_run.output), "-o",
                           str(tmp_path / "b"), "--quiet"], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


# 15. --help teaches ------------------------------------------------------------------------------------

def test_help_has_examples_and_whole_one_liners():
    top = cli("--help").output
    commands = top.split("Commands:")[1].strip().splitlines()
    assert len(commands) >= 9 and not any(line.rstrip().endswith("...") for line in commands), commands
    for command in (["train"], ["merge"], ["export"], ["predict"], ["bench"], ["sweep"], ["serve"], ["demo-data"],
                    ["data", "mimic"], ["data", "i2b2"]):
        assert "Example" in cli(*command, "--help").output, command
    train_help = cli("train", "--help").output
    for option in ("--lora-dropout", "--epochs", "--batch-size", "--seed", "--device", "--quiet"):
        block = train_help.split(f"\n  {option}", 1)[1].split("\n  --", 1)[0]
        assert len(block.split()) > 3, (option, block)  # a sentence, not just the type and default


def test_predict_says_where_it_wrote(bundle, demo_folder, tmp_path):
    result = cli("predict", bundle, "--data", demo_folder / "test.csv", "-o", tmp_path / "p.csv")
    assert f"written to {tmp_path / 'p.csv'}" in result.stderr


# 16. Model cards --------------------------------------------------------------------------------------

def test_run_folder_and_bundle_carry_a_real_model_card(lora_run, bundle):
    card = (lora_run.output / "README.md").read_text()
    assert "Model Card for Model ID" not in card
    for fragment in ("fine-tuned with lora", "Base model", "licence", "Trainable parameters", "Test split (40 rows)",
                     "macro-F1", "cut to max length", "Not validated for clinical decisions"):
        assert fragment in card, fragment
    bundle_card = (bundle / "README.md").read_text()
    for fragment in ("onnx fp32", "int8 dynamic", "size MB", "Engines measured on", "Not validated"):
        assert fragment in bundle_card, fragment
    assert "README.md" in json.loads((bundle / "manifest.json").read_text())["files"]  # checksummed too
