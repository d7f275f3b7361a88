"""Typed artifacts (run records, bundle manifests, labels) and the safe writers under them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgeclin.artifacts import BundleManifest, LabelsFile, RunRecord, open_model_folder
from edgeclin.errors import EdgeclinError
from edgeclin.files import OutputFolder, atomic_file, remove_stale_temporaries, safe_name


def test_run_record_round_trip_keeps_unknown_keys(lora_run, tmp_path):
    data = json.loads((lora_run.output / "run.json").read_text())
    data["from_a_newer_version"] = {"x": 1}
    data["config"]["option_we_do_not_know"] = 3
    (tmp_path / "run.json").write_text(json.dumps(data))
    record = RunRecord.read(tmp_path)
    assert record.config.max_length == 48 and record.resolved.task == "single_label_classification"
    assert record.config.input_format.max_length == 48 and record.format_version == 1
    (tmp_path / "copy").mkdir()
    record.write(tmp_path / "copy")
    again = json.loads((tmp_path / "copy" / "run.json").read_text())
    assert again["from_a_newer_version"] == {"x": 1}
    assert again["config"] == {k: v for k, v in data["config"].items() if k != "option_we_do_not_know"}


def test_bundle_manifest_round_trip(bundle):
    raw = json.loads((bundle / "manifest.json").read_text())
    manifest = BundleManifest.from_dict({**raw, "added_later": True})
    assert manifest.input.max_length == raw["max_length"] and manifest.columns.text == raw["columns"]["text"]
    assert manifest.graph_precisions() == {"model.onnx": "int8", "model.xml": "int8w"}
    assert manifest.to_dict() == {**raw, "added_later": True}


def test_labels_file_and_model_folder(lora_run, tmp_path):
    labels = LabelsFile.read(lora_run.output)
    assert labels.task == "single_label_classification" and labels.threshold is None
    run = open_model_folder(lora_run.output)
    assert run.is_adapter and run.labels == labels.labels and run.input_format.max_length == 48
    with pytest.raises(EdgeclinError, match="is an exported bundle"):
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "manifest.json").write_text("{}")
        open_model_folder(tmp_path / "b")


def test_atomic_file_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_file(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_output_folder_never_touches_what_appeared_meanwhile(tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(EdgeclinError, match="appeared while this command ran"), OutputFolder(out) as folder:
        (folder.staging / "result.txt").write_text("ours")
        out.mkdir()
        (out / "IMPORTANT.txt").write_text("keep")  # the user's, created during the command
        folder.publish()
    assert (out / "IMPORTANT.txt").read_text() == "keep" and not (out / "result.txt").exists()
    kept = [p for p in tmp_path.iterdir() if ".edgeclin-result-" in p.name]
    assert len(kept) == 1 and (kept[0] / "result.txt").read_text() == "ours"


def test_overwrite_replaces_only_what_existed_at_the_start(tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(EdgeclinError, match="already exists"):
        OutputFolder(out).__enter__()
    with OutputFolder(out, overwrite=True) as folder:
        (folder.staging / "new.txt").write_text("new")
        folder.publish()
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no lock, temporary or old copy left


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    out = tmp_path / "bundle"
    with OutputFolder(out):
        with pytest.raises(EdgeclinError, match=f"being written by another edgeclin command \\(pid {os.getpid()}"):
            OutputFolder(out).__enter__()
    with OutputFolder(out) as again:  # released at the end
        again.publish()


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".bundle.edgeclin-tmp-{dead}"
    stale.mkdir()
    (tmp_path / f".bundle.edgeclin-tmp-{dead}.work").mkdir()
    mine = tmp_path / f".bundle.edgeclin-tmp-{os.getpid()}"
    mine.mkdir()
    other = tmp_path / ".bundle.something-else"
    other.mkdir()
    removed = remove_stale_temporaries(tmp_path / "bundle")
    assert sorted(p.name for p in removed) == sorted([stale.name, stale.name + ".work"])
    assert mine.exists() and other.exists()


def test_safe_name():
    assert safe_name("nlpie/bio-mobilebert") == "bio-mobilebert"
    assert safe_name("/data/my model (v2)/") == "my-model-v2"
    assert safe_name("***") == "model"
