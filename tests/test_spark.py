"""edgeclin on Apache Spark: local mode and a real standalone cluster give edgeclin predict's predictions.

Every prediction is compared with ``edgeclin.predict.predict_file`` on the same rows, at batch
size 1: the int8 bundles quantise activations per batch (dynamic int8), so a row's last digits
depend on which rows share its batch, and only one-row batches make the comparison exact
whatever the partitioning. One test shows that the same batches give the same numbers at the
default batch size too.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from spark_cluster import FORBIDDEN, cluster_environment, executor_imports, probe_job, standalone_cluster

from edgeclin.errors import EdgeclinError
from edgeclin.predict import predict_file
from edgeclin.spark import predict, predict_files
from edgeclin.spark.worker import FAIL_ATTEMPTS, FAIL_MODE, FAIL_PARTITION

# pyspark warns about pandas >= 3 on every Arrow UDF; edgeclin.spark uses Arrow batches only
pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")
BAD_IDS = (900, 901)  # rows with a null or blank text: an error value each, never dropped
QUOTED = 'Chest pain, "sharp" on exertion.\nSecond line of the same note, with a comma.'


@dataclass
class Case:
    """One bundle, its rows for Spark (bad rows included) and what edgeclin predict gives for the good ones."""

    bundle: Path
    data: Path  # what Spark reads
    expected: dict[int, dict]  # id -> edgeclin predict's row
    columns: tuple[str, ...]  # the output columns that carry the prediction
    options: dict = field(default_factory=dict)


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spark():
    """One local session for the module: 2 cores, and up to 4 attempts per task (the retry test needs them)."""
    from edgeclin.spark.session import open_session

    session, _ = open_session("local[2,4]")
    session.conf.set("spark.sql.shuffle.partitions", "2")
    try:
        yield session
    finally:
        session.stop()


def _train_and_export(tiny_bert, folder: Path, out: Path, **options) -> Path:
    from edgeclin.export import export
    from edgeclin.training import TrainConfig, train

    run = train(TrainConfig(model=str(tiny_bert), data=str(folder), output=str(out / "run"), epochs=3, lr=2e-2,
                            batch_size=8, max_length=32, precision="fp32", progress=False, allow_degenerate=True,
                            **options))
    return export(run.output, out / "bundle", int8=True, quiet=True, max_drop=100.0).bundle


@pytest.fixture(scope="module")
def multilabel_bundle(tiny_bert, multilabel_folder, tmp_path_factory) -> Path:
    return _train_and_export(tiny_bert, multilabel_folder, tmp_path_factory.mktemp("ml"), multi_label=True)


@pytest.fixture(scope="module")
def ner_bundle(tiny_bert, ner_folder, tmp_path_factory) -> Path:
    return _train_and_export(tiny_bert, ner_folder, tmp_path_factory.mktemp("ner"))


def _reference(bundle: Path, path: Path, ids: list[int], **options) -> dict[int, dict]:
    out = path.with_name(path.stem + ".expected.jsonl")
    predict_file(bundle, path, out, batch_size=1, **options)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(ids)
    return dict(zip(ids, rows, strict=True))


def _write_csv(path: Path, header: tuple[str, ...], rows: list[tuple]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def classification_case(bundle, demo_folder, folder: Path) -> Case:
    """CSV (quotes and a newline inside a note, as Python's csv writes them) with an id and an empty text."""
    texts = [r["text"] for r in _read_csv(demo_folder / "test.csv")] + [QUOTED]
    ids = list(range(len(texts)))
    good = _write_csv(folder / "good.csv", ("id", "text"), list(zip(ids, texts, strict=True)))
    data = _write_csv(folder / "notes.csv", ("id", "text", "label"),
                      [(i, t, "x") for i, t in zip(ids, texts, strict=True)] + [(BAD_IDS[0], "", "x"),
                                                                                 (BAD_IDS[1], "   ", "x")])
    return Case(Path(bundle), data, _reference(bundle, good, ids), ("label", "probabilities"))


def multilabel_case(bundle, multilabel_folder, folder: Path) -> Case:
    """JSONL with the true label sets in a "label" column (kept as it is: the output has label_set)."""
    rows = _read_csv(multilabel_folder / "test.csv")
    ids = [100 + i for i in range(len(rows))]
    good = _write_jsonl(folder / "good.jsonl", [{"text": r["text"]} for r in rows])
    data = _write_jsonl(folder / "notes.jsonl", [{"id": i, "text": r["text"], "label": r["label"]}
                                                 for i, r in zip(ids, rows, strict=True)]
                        + [{"id": BAD_IDS[0], "text": None, "label": "a"}, {"id": BAD_IDS[1], "text": "", "label": ""}])
    return Case(Path(bundle), data, _reference(bundle, good, ids), ("label_set", "probabilities"))


def ner_words_case(bundle, ner_folder, folder: Path) -> Case:
    """JSONL of pre-split words with their true tags (kept as they are), as in training."""
    rows = [json.loads(line) for line in (ner_folder / "test.jsonl").read_text().splitlines()]
    ids = [200 + i for i in range(len(rows))]
    good = _write_jsonl(folder / "good.jsonl", rows)
    data = _write_jsonl(folder / "words.jsonl", [{"id": i, **r} for i, r in zip(ids, rows, strict=True)]
                        + [{"id": BAD_IDS[0], "tokens": [], "tags": []}, {"id": BAD_IDS[1], "tokens": None}])
    return Case(Path(bundle), data, _reference(bundle, good, ids), ("entities",))


def ner_text_case(bundle, ner_folder, folder: Path) -> Case:
    """Parquet of raw text (split into words as BERT does), with a null text."""
    rows = [json.loads(line) for line in (ner_folder / "test.jsonl").read_text().splitlines()]
    texts = [" ".join(r["tokens"]).replace(" ,", ",").capitalize() for r in rows]
    ids = [300 + i for i in range(len(texts))]
    good = _write_csv(folder / "good.csv", ("text",), [(t,) for t in texts])
    table = pa.table({"id": [*ids, *BAD_IDS], "text": [*texts, None, " "]})
    data = folder / "text.parquet"
    pq.write_table(table, data)
    return Case(Path(bundle), data, _reference(bundle, good, ids, text_col="text"), ("entities",))


@pytest.fixture(scope="module")
def cases(bundle, multilabel_bundle, ner_bundle, demo_folder, multilabel_folder, ner_folder,
          tmp_path_factory) -> dict[str, Case]:
    def folder(name):
        return tmp_path_factory.mktemp(name)

    return {"classification": classification_case(bundle, demo_folder, folder("cls")),
            "multi_label": multilabel_case(multilabel_bundle, multilabel_folder, folder("ml")),
            "ner_words": ner_words_case(ner_bundle, ner_folder, folder("nw")),
            "ner_text": ner_text_case(ner_bundle, ner_folder, folder("nt"))}


# --- checks -----------------------------------------------------------------------------------

def _rows(output: Path) -> list[dict]:
    """The rows Spark wrote; ids as numbers (a CSV's columns are all strings)."""
    return [{**row, "id": int(row["id"])} for row in pq.read_table(output).to_pylist()]


def _expected_columns(row: dict, columns: tuple[str, ...]) -> dict:
    """edgeclin predict's row as the Spark columns hold it."""
    found: dict = {}
    if "label" in columns:
        found["label"] = row["label"]
    if "label_set" in columns:
        found["label_set"] = row["label"].split(";") if row["label"] else []
    if "probabilities" in columns:
        found["probabilities"] = {k[2:]: v for k, v in row.items() if k.startswith("p_")}
    if "entities" in columns:
        found["entities"] = row["entities"]
    return found


def _spark_columns(row: dict, columns: tuple[str, ...]) -> dict:
    return {c: dict(row[c]) if c == "probabilities" else row[c] for c in columns}


def assert_same_predictions(case: Case, rows: list[dict]) -> None:
    """Exactly one row per input row; edgeclin predict's prediction for every good row; an error for the bad."""
    ids = [r["id"] for r in rows]
    assert sorted(ids) == sorted([*case.expected, *BAD_IDS]), "a row was lost or duplicated"
    by_id = {r["id"]: r for r in rows}
    for row_id, expected in case.expected.items():
        assert by_id[row_id]["error"] is None
        assert _spark_columns(by_id[row_id], case.columns) == _expected_columns(expected, case.columns), row_id
    for row_id in BAD_IDS:
        assert by_id[row_id]["error"] and all(by_id[row_id][c] is None for c in case.columns)


# --- local mode -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["classification", "multi_label", "ner_words", "ner_text"])
def test_local_mode_gives_edgeclin_predicts_predictions(spark, cases, name, tmp_path):
    case = cases[name]
    out = tmp_path / "out.parquet"
    summary = predict_files(case.bundle, case.data, out, batch_size=1)
    assert summary["rows"] == len(case.expected) + 2 and summary["error_rows"] == 2
    assert summary["partitions"] >= 2  # one file was spread over both cores
    rows = _rows(out)
    assert_same_predictions(case, rows)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporaries left beside the output"


def test_kept_columns_and_renames(spark, cases):
    """Every input column is kept; one named like an output column gets the input_ prefix."""
    notes = spark.read.json(str(cases["multi_label"].data))
    frame = predict(notes, cases["multi_label"].bundle)
    assert frame.columns == ["id", "label", "text", "label_set", "probabilities", "error"]
    assert dict(frame.dtypes)["probabilities"] == "map<string,double>"
    single = predict(notes, cases["classification"].bundle)
    assert single.columns == ["id", "input_label", "text", "label", "probabilities", "error"]
    words = predict(spark.read.json(str(cases["ner_words"].data)), cases["ner_words"].bundle)
    assert dict(words.dtypes)["entities"] == \
        "array<struct<type:string,start:int,end:int,text:string,score:double>>"


def test_same_batches_give_the_same_numbers_at_the_default_batch_size(spark, cases, tmp_path):
    """One partition in file order: the same length-sorted batches of 32 as edgeclin predict, so bit-equal."""
    case = cases["classification"]
    good = [r for r in _read_csv(case.data) if r["text"].strip()]
    _write_csv(tmp_path / "good.csv", ("text",), [(r["text"],) for r in good])
    predict_file(case.bundle, tmp_path / "good.csv", tmp_path / "ref.jsonl")
    expected = [json.loads(line) for line in (tmp_path / "ref.jsonl").read_text().splitlines()]
    frame = spark.read.options(header=True, multiLine=True, escape='"').csv(str(case.data)).coalesce(1)
    rows = [r for r in predict(frame, case.bundle).collect() if r["error"] is None]
    assert [r["label"] for r in rows] == [e["label"] for e in expected]
    assert [dict(r["probabilities"]) for r in rows] == [_expected_columns(e, ("probabilities",))["probabilities"]
                                                        for e in expected]


def test_shared_path_id_column_and_a_uri_output(spark, cases, tmp_path):
    """ship=False reads the bundle where it lies; id_col keeps only the id; a file: URI goes through Hadoop's API;
    an existing output is refused, or replaced with overwrite."""
    case = cases["classification"]
    out = tmp_path / "by-id.parquet"
    predict_files(case.bundle, case.data, f"file://{out}", id_col="id", ship=False, batch_size=1)
    rows = _rows(out)
    assert set(rows[0]) == {"id", "label", "probabilities", "error"}
    assert_same_predictions(case, rows)
    with pytest.raises(EdgeclinError, match="already exists"):
        predict_files(case.bundle, case.data, f"file://{out}")
    (out / "stale.parquet").write_bytes(b"")  # overwrite replaces the whole folder, once the job has succeeded
    predict_files(case.bundle, case.data, out, id_col="id", overwrite=True, batch_size=1)
    assert not (out / "stale.parquet").exists()
    assert_same_predictions(case, _rows(out))


def test_a_task_that_dies_mid_partition_is_retried_without_loss_or_duplicates(spark, cases, tmp_path):
    """The Python worker of partition 1 exits after its first batch on the first attempt; Spark retries the task."""
    case = cases["classification"]
    context = spark.sparkContext
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "4")  # several batches per partition
    context.setJobGroup("edgeclin-fault", "fault injection")
    context.setLocalProperty(FAIL_PARTITION, "1")
    context.setLocalProperty(FAIL_MODE, "exit")
    try:
        predict_files(case.bundle, case.data, tmp_path / "out.parquet", batch_size=1)
    finally:
        for key in (FAIL_PARTITION, FAIL_MODE):
            context.setLocalProperty(key, None)
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    tracker = context.statusTracker()
    stages = [s for j in tracker.getJobIdsForGroup("edgeclin-fault") for s in tracker.getJobInfo(j).stageIds]
    assert sum(tracker.getStageInfo(s).numFailedTasks for s in stages) >= 1, "no task failed: nothing was tested"
    assert_same_predictions(case, _rows(tmp_path / "out.parquet"))


def test_a_failed_job_leaves_nothing_at_the_output(spark, cases, tmp_path):
    case = cases["classification"]
    context = spark.sparkContext
    context.setLocalProperty(FAIL_PARTITION, "0")
    context.setLocalProperty(FAIL_ATTEMPTS, "4")  # every attempt spark.task.maxFailures allows
    try:
        with pytest.raises(EdgeclinError, match=r"the Spark job failed and nothing was written.*fault was injected"):
            predict_files(case.bundle, case.data, tmp_path / "out.parquet")
    finally:
        for key in (FAIL_PARTITION, FAIL_ATTEMPTS):
            context.setLocalProperty(key, None)
    assert list(tmp_path.iterdir()) == []


def test_bad_input_gives_one_line_errors(spark, cases, tmp_path):
    case = cases["classification"]
    frame = spark.read.json(str(cases["multi_label"].data))
    for call, message in [
        (lambda: predict(frame, case.bundle, text_col="note"), r"no column 'note' in the data \(columns present: id, "
                                                                r"label, text\)"),
        (lambda: predict(frame, case.bundle, id_col="mrn"), "no id column 'mrn'"),
        (lambda: predict(frame, case.bundle, text_col="id"), "column 'id' holds bigint, but the text column must be"),
        (lambda: predict(frame, case.bundle, pair_col="label"), "reads single texts, not pairs"),
        (lambda: predict(frame, tmp_path / "nowhere"), "no such bundle folder"),
        (lambda: predict_files(case.bundle, tmp_path / "none.csv", tmp_path / "o"), "data file not found"),
        (lambda: predict_files(case.bundle, _write_jsonl(tmp_path / "x.txt", []), tmp_path / "o"),
         "unsupported data type '.txt'"),
        (lambda: predict_files(case.bundle, case.data, case.data), "already exists"),
    ]:
        with pytest.raises(EdgeclinError, match=message) as error:
            call()
        assert "\n" not in str(error.value)


def test_executors_never_import_torch(spark, cases):
    """The Python workers that ran the predictions hold none of torch, transformers, optimum, peft."""
    rows = [{"id": i, "text": "chest pain on exertion"} for i in range(6)]
    found = executor_imports(spark, probe_job(str(cases["classification"].bundle)), rows)
    assert sum(r["rows"] for r in found) == 6
    assert all(r["heavy"] == [] for r in found), found


def test_the_command_line(spark, cases, tmp_path):
    from click.testing import CliRunner

    from edgeclin.cli import main

    case = cases["ner_words"]
    out = tmp_path / "entities[1].parquet"  # Spark's readers would take the brackets for a glob
    result = CliRunner().invoke(main, ["predict", str(case.bundle), "--data", str(case.data), "--spark",
                                       "--batch-size", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{len(case.expected) + 2:,} rows predicted on Spark (2 with an error value)" in result.output
    assert_same_predictions(case, _rows(out))
    again = ["predict", str(case.bundle), "--data", str(case.data), "--spark", "-o", str(out)]
    refused = CliRunner().invoke(main, again)
    assert refused.exit_code == 2 and "exists" in refused.output, refused.output
    assert CliRunner().invoke(main, [*again, "--overwrite"]).exit_code == 0
    for option in (["--label-col", "tags"], ["--skip-bad-rows"]):
        result = CliRunner().invoke(main, [*again, "--overwrite", *option])
        assert result.exit_code == 2 and "do not apply with --spark" in result.output, result.output


def test_without_pyspark_the_error_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['pyspark'] = None\n"
            "import edgeclin.spark, edgeclin.runtime\n"
            "from edgeclin.errors import EdgeclinError\n"
            "try:\n    edgeclin.spark.predict_files('b', 'd.parquet', 'o')\n"
            "except EdgeclinError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("pip install 'edgeclin[spark]'") and result.stdout.count("\n") == 1


def test_the_executor_verifies_the_bundle_it_finds(cases, tmp_path):
    """A bundle that is not the one the driver verified, or whose files changed, is refused where it runs."""
    from edgeclin.spark.bundles import BundleRef, manifest_digest, verify_on_executor
    from edgeclin.spark.inputs import InputColumns
    from edgeclin.spark.worker import Job, predictor

    copy = shutil.copytree(cases["classification"].bundle, tmp_path / "bundle")
    ref = BundleRef(str(copy), manifest_digest(copy))
    assert verify_on_executor(ref) == copy
    with (copy / "model.onnx").open("ab") as model:
        model.write(b"\0")
    with pytest.raises(EdgeclinError, match=r"model\.onnx has changed since export"):
        predictor(Job(ref, "single_label_classification", InputColumns(text="text")), threads=1)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "created": "later"}))
    with pytest.raises(EdgeclinError, match="not the one the driver verified"):
        verify_on_executor(ref)
    os.remove(copy / "manifest.json")
    with pytest.raises(EdgeclinError, match="not an edgeclin bundle"):
        verify_on_executor(ref)
    with pytest.raises(EdgeclinError, match="not readable on this executor"):
        verify_on_executor(BundleRef(str(tmp_path / "elsewhere"), ref.digest))


# --- a standalone cluster ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The cluster .ci/run started (EDGECLIN_TEST_SPARK_MASTER), else one of the test's own."""
    if os.environ.get("EDGECLIN_TEST_SPARK_MASTER"):
        yield os.environ["EDGECLIN_TEST_SPARK_MASTER"]
        return
    with standalone_cluster(tmp_path_factory.mktemp("cluster"), workers=2, cores=1) as master:
        yield master


def test_a_standalone_cluster_gives_the_same_predictions(cluster, cases, tmp_path):
    """One master and two one-core workers on 127.0.0.1; a driver of its own runs the three task types."""
    names = ("classification", "multi_label", "ner_words")
    jobs = {"predict": [{"bundle": str(cases[n].bundle), "data": str(cases[n].data),
                         "output": str(tmp_path / f"{n}.parquet"), "options": {"batch_size": 1}} for n in names],
            "probe": {"bundle": str(cases["classification"].bundle),
                      "rows": [{"id": i, "text": "reduced urine output"} for i in range(6)]}}
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    driver = Path(__file__).with_name("spark_cluster.py")
    result = subprocess.run([sys.executable, str(driver), "drive", cluster, str(tmp_path / "jobs.json"),
                             str(tmp_path / "result.json")], env=cluster_environment(), capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads((tmp_path / "result.json").read_text())
    assert found["executors"] == 2
    assert all(s["master"] == cluster for s in found["summaries"])
    for name in names:
        assert_same_predictions(cases[name], _rows(tmp_path / f"{name}.parquet"))
    assert all(r["heavy"] == [] for r in found["imports"]) and sum(r["rows"] for r in found["imports"]) == 6
    assert set(FORBIDDEN) >= {"torch", "transformers", "optimum", "peft"}
