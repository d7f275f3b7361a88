"""edgeclin data mimic / i2b2 on SYNTHETIC files in the releases' formats (tests/builder_fixtures.py)."""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import builder_fixtures as fixtures
import pytest
from builder_fixtures import ADMISSION_DETAIL, LATER_DETAIL
from click.testing import CliRunner

from edgeclin.builders.i2b2 import build_i2b2
from edgeclin.builders.mimic import admission_sections, admission_text, build_mimic, los_bucket, short_code
from edgeclin.cli import main
from edgeclin.errors import EdgeclinError

SPLITS = ("train", "valid", "test")


def read_rows(folder: Path) -> dict[str, list[dict[str, str]]]:
    out = {}
    for split in SPLITS:
        with (folder / f"{split}.csv").open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            assert reader.fieldnames == ["text", "label"]
            out[split] = list(reader)
    return out


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_clean_failure(result, *fragments: str, output: Path | None = None) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgeclin: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    if output is not None:
        assert not output.exists() and not output.with_name(output.name + ".tmp").exists()
    return lines[0]


@pytest.fixture(scope="module")
def mimic3(tmp_path_factory) -> fixtures.MimicFixture:
    return fixtures.write_mimic_iii(tmp_path_factory.mktemp("mimic3"))


@pytest.fixture(scope="module")
def mimic4(tmp_path_factory) -> fixtures.MimicFixture:
    return fixtures.write_mimic_iv(tmp_path_factory.mktemp("mimic4"))


def build(fx: fixtures.MimicFixture, task: str, out: Path, **options) -> Path:
    build_mimic(fx.notes, fx.admissions, task, out, diagnoses=fx.diagnoses, procedures=fx.procedures,
                progress=False, **options)
    return out


# ---------------------------------------------------------------- sections


def test_sections_of_each_note_style(mimic3):
    import random

    rng = random.Random(1)
    admission = mimic3.plan[0]
    for style in ("modern", "old", "iv"):
        note = fixtures.discharge_summary(rng, admission, style)
        sections = admission_sections(note)
        expected = {"present_illness", "medical_history", "medications_on_admission", "allergies", "physical_exam",
                    "family_history", "social_history"} | ({"chief_complaint"} if style != "old" else set())
        assert set(sections) == expected, style
        text = admission_text(note)
        assert LATER_DETAIL not in text and admission.marker in text
        # every kept section keeps its own marker; nothing from the discharge exam, course or medications
        assert text.count(ADMISSION_DETAIL) == note.count(ADMISSION_DETAIL), style
        # a paragraph "In the emergency department, vital signs were: ..." stays in the present illness
        assert "In the emergency department" in sections["present_illness"]
        assert "Tobacco: none" in sections["social_history"]
        assert "Discharge" not in text and "DISCHARGE" not in text


def test_section_boundaries_without_blank_lines():
    note = ("Chief Complaint:\ncough\nPhysical Exam:\nGen: well\nDischarge Exam:\nGen: better\n"
            "Medications on Admission:\n1. aspirin\nDischarge Medications:\n1. aspirin, stopped\n"
            "Allergies: none\nFollowup Instructions:\nclinic\nAllergies: written again at discharge\n")
    sections = admission_sections(note)
    assert sections == {"chief_complaint": "cough", "physical_exam": "Gen: well",
                        "medications_on_admission": "1. aspirin", "allergies": "none"}
    assert admission_text("Brief Hospital Course:\nstayed\n\nAllergies:\nnone\n") is None
    # a sentence with a colon is content; any heading naming discharge ends the section
    note = ("History of Present Illness:\nCame with cough.\n\nOn transfer to the floor, vital signs were: T 99.\n\n"
            "Physical Exam:\nAdmission: Gen well\nUpon discharge: Gen better\n\nPast Medical History:\n1. HTN\n")
    assert admission_sections(note) == {
        "present_illness": "Came with cough. On transfer to the floor, vital signs were: T 99.",
        "physical_exam": "Admission: Gen well", "medical_history": "1. HTN"}


# ---------------------------------------------------------------- labels


def test_los_buckets_at_their_boundaries():
    admit = datetime(2150, 1, 1, 12, 0)
    for hours, label in fixtures.LOS_CASES:
        assert los_bucket(admit, admit + timedelta(hours=hours)) == label, hours
    assert los_bucket(admit, admit - timedelta(hours=1)) is None


def test_icd_categories():
    assert short_code("4019", "diagnoses", 9) == "401"
    assert short_code("V3000", "diagnoses", 9) == "V30"
    assert short_code("E8788", "diagnoses", 9) == "E878"
    assert short_code("250.00", "diagnoses", 9) == "250"
    assert short_code("0040", "procedures", 9) == "004"  # leading zeros matter: codes are strings
    assert short_code("E119", "diagnoses", 10) == "E11"  # ICD-10 E is a chapter, not an external cause
    assert short_code("02HV33Z", "procedures", 10) == "02H"
    assert short_code("  ", "diagnoses", 9) is None


@pytest.mark.parametrize("task", ["mp", "los", "dia", "pro"])
def test_mimic_iii_rows_and_labels(mimic3, tmp_path, task):
    out = build(mimic3, task, tmp_path / task)
    rows = read_rows(out)
    built = {}
    for split, split_rows in rows.items():
        for row in split_rows:
            admission = mimic3.by_marker(row["text"])
            assert admission.hadm not in built, "an admission written twice"
            built[admission.hadm] = (split, row["label"])
            assert LATER_DETAIL not in row["text"] and "erroneous" not in row["text"]
            assert "second report" not in row["text"]  # the first report of an admission is used
            assert row["text"].startswith(("CHIEF COMPLAINT: ", "PRESENT ILLNESS: "))
    expected = {a.hadm: a.expected(task) for a in mimic3.plan if a.expected(task) is not None}
    assert {hadm: label for hadm, (_, label) in built.items()} == expected
    if task in ("dia", "pro"):
        assert all(re.fullmatch(r"[0-9A-Z]+(;[0-9A-Z]+)*", label) for label in expected.values())
    record = json.loads((out / "build.json").read_text())
    assert record["rows"] == {split: len(rows[split]) for split in SPLITS}
    assert record["notes"]["HADM_ID not in the admissions file"] == 1
    assert record["notes"]["reports marked ISERROR, skipped"] == 1
    assert record["dropped_admissions"]["newborn admission (left out, as in the paper)"] == 1
    readme = (out / "README.md").read_text()
    assert "edgeclin data mimic" in readme and "## Left out" in readme
    if task in ("dia", "pro"):
        assert "--multi-label" in readme
    if task == "los":
        assert record["dropped_admissions"]["discharge before admission (negative length of stay)"] == 1
        assert set(record["labels"]["train"]) == {"<=3d", "3-7d", "7-14d", ">14d"}


def test_patient_disjoint_deterministic_and_seeded(mimic3, tmp_path):
    first = build(mimic3, "mp", tmp_path / "a")
    again = build(mimic3, "mp", tmp_path / "b")
    other = build(mimic3, "mp", tmp_path / "c", seed=7)
    for split in SPLITS:
        assert (first / f"{split}.csv").read_bytes() == (again / f"{split}.csv").read_bytes()
    patients = {split: {mimic3.by_marker(r["text"]).subject for r in rows} for split, rows in read_rows(first).items()}
    assert not patients["train"] & patients["valid"] and not patients["train"] & patients["test"]
    assert not patients["valid"] & patients["test"]
    assert all(patients.values())
    assert len(patients["train"]) > len(patients["test"]) > len(patients["valid"]) // 2
    assert (first / "train.csv").read_bytes() != (other / "train.csv").read_bytes()


def test_gzipped_inputs_give_the_same_files(mimic3, tmp_path):
    zipped = fixtures.write_mimic_iii(tmp_path / "gz", gz=True)
    assert zipped.notes.name == "NOTEEVENTS.csv.gz" and zipped.notes.read_bytes()[:2] == b"\x1f\x8b"
    plain = build(mimic3, "dia", tmp_path / "plain")
    packed = build(zipped, "dia", tmp_path / "packed")
    for split in SPLITS:
        assert (plain / f"{split}.csv").read_bytes() == (packed / f"{split}.csv").read_bytes()


@pytest.mark.parametrize(("task", "icd_version"), [("mp", 9), ("los", 9), ("dia", 9), ("dia", 10), ("pro", 10)])
def test_mimic_iv(mimic4, tmp_path, task, icd_version):
    out = tmp_path / "iv"
    result = build_mimic(mimic4.notes, mimic4.admissions, task, out, diagnoses=mimic4.diagnoses,
                         procedures=mimic4.procedures, icd_version=icd_version, progress=False)
    assert result.version == "iv"
    built = {mimic4.by_marker(r["text"]).hadm: r["label"] for rows in read_rows(out).values() for r in rows}
    expected = {a.hadm: a.expected(task, icd_version) for a in mimic4.plan
                if a.expected(task, icd_version) is not None}
    assert built == expected
    if task == "dia":
        assert result.dropped["coded in the other ICD version only (see --icd-version)"] > 0


# ---------------------------------------------------------------- MIMIC errors


def test_cli_builds_and_reports(mimic3, tmp_path):
    out = tmp_path / "mp"
    result = run_cli("data", "mimic", "--notes", str(mimic3.notes), "--admissions", str(mimic3.admissions),
                     "--task", "mp", "-o", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert "train" in result.stdout and str(out) in result.stdout
    readme = (out / "README.md").read_text()
    typed = f"edgeclin data mimic --notes {mimic3.notes} --admissions {mimic3.admissions} --task mp --output {out}"
    assert f"    {typed} --quiet\n" in readme
    again = run_cli("data", "mimic", "--notes", str(mimic3.notes), "--admissions", str(mimic3.admissions),
                    "--task", "mp", "-o", str(out), "--quiet")
    assert_clean_failure(again, "already exists", "--overwrite")


def test_not_a_notes_file(mimic3, tmp_path):
    notes = tmp_path / "random.csv"
    notes.write_text("name,score\nalpha,1\nbeta,2\n")
    out = tmp_path / "out"
    result = run_cli("data", "mimic", "--notes", str(notes), "--admissions", str(mimic3.admissions), "--task", "mp",
                     "-o", str(out))
    assert_clean_failure(result, "random.csv, line 1", "not a MIMIC notes file", "found: name, score", output=out)


def test_missing_column(mimic3, tmp_path):
    admissions = tmp_path / "ADMISSIONS.csv"
    with mimic3.admissions.open(newline="") as src, admissions.open("w", newline="") as dst:
        writer = csv.writer(dst)
        for row in csv.reader(src):
            writer.writerow(row[:-2] + row[-1:])  # drop HOSPITAL_EXPIRE_FLAG
    out = tmp_path / "out"
    result = run_cli("data", "mimic", "--notes", str(mimic3.notes), "--admissions", str(admissions), "--task", "mp",
                     "-o", str(out))
    assert_clean_failure(result, "ADMISSIONS.csv, line 1", "no column HOSPITAL_EXPIRE_FLAG", "columns present:",
                         output=out)


def test_bad_value_names_line_and_column(mimic3, tmp_path):
    admissions = tmp_path / "ADMISSIONS.csv"
    lines = mimic3.admissions.read_text().splitlines()
    fields = lines[3].split(",")
    fields[2] = "abc"  # HADM_ID
    lines[3] = ",".join(fields)
    admissions.write_text("\n".join(lines) + "\n")
    with pytest.raises(EdgeclinError, match=r"ADMISSIONS.csv, line 4, column HADM_ID: expected an integer id"):
        build_mimic(mimic3.notes, admissions, "mp", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_release_mismatch_and_missing_table(mimic3, mimic4, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(EdgeclinError, match="is a MIMIC-III notes file, but --version iv"):
        build_mimic(mimic3.notes, mimic3.admissions, "mp", out, version="iv", progress=False)
    with pytest.raises(EdgeclinError, match=r"looks like MIMIC-IV, but NOTEEVENTS\.csv is MIMIC-III"):
        build_mimic(mimic3.notes, mimic3.admissions, "dia", out, diagnoses=mimic4.diagnoses, progress=False)
    with pytest.raises(EdgeclinError, match="looks like MIMIC-IV"):
        build_mimic(mimic3.notes, mimic4.admissions, "mp", out, progress=False)
    with pytest.raises(EdgeclinError, match="--task pro needs the PROCEDURES_ICD table"):
        build_mimic(mimic3.notes, mimic3.admissions, "pro", out, progress=False)
    with pytest.raises(EdgeclinError, match="ICD-9 only"):
        build_mimic(mimic3.notes, mimic3.admissions, "dia", out, diagnoses=mimic3.diagnoses, icd_version=10,
                    progress=False)
    assert not out.exists()


def test_nothing_matches(mimic3, mimic4, tmp_path):
    # MIMIC-IV admissions trimmed to the columns both releases share: undetectable, but no HADM_ID matches
    admissions = tmp_path / "adm.csv"
    with mimic4.admissions.open(newline="") as src, admissions.open("w", newline="") as dst:
        reader = csv.DictReader(src)
        keep = ["subject_id", "hadm_id", "admittime", "dischtime", "admission_type", "hospital_expire_flag"]
        writer = csv.DictWriter(dst, keep, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(reader)
    with pytest.raises(EdgeclinError, match="no discharge summary's HADM_ID is in the admissions file"):
        build_mimic(mimic3.notes, admissions, "mp", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_truncated_gzip(mimic3, tmp_path):
    notes = tmp_path / "NOTEEVENTS.csv.gz"
    data = gzip.compress(mimic3.notes.read_bytes())
    notes.write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgeclinError, match=r"NOTEEVENTS.csv.gz, line \d+: "):
        build_mimic(notes, mimic3.admissions, "mp", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_large_generator_is_streamable(tmp_path):
    fx = fixtures.write_mimic_large(tmp_path / "big", size_mb=0.5)
    assert fx.notes.stat().st_size >= 0.5e6
    result = build_mimic(fx.notes, fx.admissions, "dia", tmp_path / "out", diagnoses=fx.diagnoses, progress=True)
    assert sum(result.rows.values()) > 10 and not result.dropped


# ---------------------------------------------------------------- i2b2


def decode(tokens: list[str], tags: list[str]) -> list[tuple[str, str]]:
    """Entities of one BIO sentence as (tokens joined without spaces, type); checks the tags are valid BIO."""
    assert len(tokens) == len(tags) and tokens
    entities: list[tuple[str, str]] = []
    current = None
    for token, tag in zip(tokens, tags, strict=True):
        if tag == "O":
            current = None
            continue
        prefix, label = tag.split("-", 1)
        if prefix == "B":
            entities.append((token, label))
            current = label
        else:
            assert prefix == "I" and current == label, (tokens, tags)
            entities[-1] = (entities[-1][0] + token, label)
    return entities


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("year", [2010, 2012, 2014])
def test_i2b2_bio_alignment(tmp_path, year):
    fx = fixtures.write_i2b2(tmp_path / "release", year)
    out = tmp_path / "out"
    result = build_i2b2(year, fx.folder, out)
    found = {}
    for split in SPLITS:
        found[split] = Counter()
        for record in read_jsonl(out / f"{split}.jsonl"):
            assert set(record) == {"tokens", "tags"}
            found[split].update(decode(record["tokens"], record["tags"]))
    expected_test = Counter(e for key, ents in fx.expected.items() if key.startswith("test/") for e in ents)
    expected_train = Counter(e for key, ents in fx.expected.items() if key.startswith("train/") for e in ents)
    assert found["test"] == expected_test
    assert found["train"] + found["valid"] == expected_train
    assert result.documents["valid"] == 1 and result.documents["test"] == 3
    record = json.loads((out / "build.json").read_text())
    readme = (out / "README.md").read_text()
    assert "## Entities per type" in readme
    if year == 2012:
        assert record["adjustments"]["offsets shifted by (-1, -1) to match the text attribute"] == fx.shifted
    if year == 2014:
        assert record["adjustments"]["annotations widened to whole tokens"] == fx.widened
        assert record["adjustments"]["annotations spanning lines (B- again on each line)"] == fx.split_across_lines
    if year == 2010:
        assert "B-problem" in (out / "train.jsonl").read_text()


def test_i2b2_2014_categories_and_determinism(tmp_path):
    fx = fixtures.write_i2b2_2014(tmp_path / "release")
    build_i2b2(2014, fx.folder, tmp_path / "a")
    build_i2b2(2014, fx.folder, tmp_path / "b")
    for split in SPLITS:
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    build_i2b2(2014, fx.folder, tmp_path / "c", categories=True)
    tags = {t for r in read_jsonl(tmp_path / "c" / "train.jsonl") for t in r["tags"]}
    assert "B-NAME" in tags and "B-DOCTOR" not in tags


def _edit_first(folder: Path, pattern: str, edit) -> Path:
    path = sorted(folder.rglob(pattern))[0]
    path.write_text(edit(path.read_text()))
    return path


def test_i2b2_annotation_outside_text(tmp_path):
    fx = fixtures.write_i2b2_2014(tmp_path / "release")
    path = _edit_first(fx.folder / "train", "*.xml", lambda t: re.sub(r'end="\d+"', 'end="99999"', t, count=1))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if 'end="99999"' in text)
    out = tmp_path / "out"
    result = run_cli("data", "i2b2", "--year", "2014", "--input", str(fx.folder), "-o", str(out))
    assert_clean_failure(result, f"{path.name}, line {line}", "is outside the text", output=out)


def test_i2b2_text_mismatch_and_skip(tmp_path):
    fx = fixtures.write_i2b2_2014(tmp_path / "release")
    _edit_first(fx.folder / "test", "*.xml", lambda t: re.sub(r'text="[^"]*"', 'text="Someone Else"', t, count=1))
    with pytest.raises(EdgeclinError, match=r"line \d+: <\w+ id=\"P0\"> text 'Someone Else' does not match"):
        build_i2b2(2014, fx.folder, tmp_path / "out")
    build_i2b2(2014, fx.folder, tmp_path / "out", skip_bad_annotations=True)
    record = json.loads((tmp_path / "out" / "build.json").read_text())
    assert record["adjustments"]["annotations dropped: text does not match the span"] == 1


def test_i2b2_2010_errors(tmp_path):
    fx = fixtures.write_i2b2_2010(tmp_path / "release")
    con = _edit_first(fx.folder / "train", "*.con", lambda t: "c=\"broken line\n" + t)
    with pytest.raises(EdgeclinError, match=rf"{con.name}, line 1: cannot parse concept line"):
        build_i2b2(2010, fx.folder, tmp_path / "out")
    con.write_text('c="chest pain" 400:0 400:1||t="problem"\n')
    with pytest.raises(EdgeclinError, match=rf"{con.name}, line 1: concept points to line 400"):
        build_i2b2(2010, fx.folder, tmp_path / "out")
    con.write_text('c="no such words" 3:0 3:1||t="problem"\n')
    with pytest.raises(EdgeclinError, match="does not match tokens 0-1 of line 3"):
        build_i2b2(2010, fx.folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_i2b2_layout_errors(tmp_path):
    fx = fixtures.write_i2b2_2012(tmp_path / "release")
    shutil.rmtree(fx.folder / "test")
    out = tmp_path / "out"
    result = run_cli("data", "i2b2", "--year", "2012", "--input", str(fx.folder), "-o", str(out))
    assert_clean_failure(result, "no test/ folder", output=out)
    with pytest.raises(EdgeclinError, match=r"no \.txt file with a \.con file"):
        fixtures.write_i2b2_2012(tmp_path / "release")
        build_i2b2(2010, fx.folder, out)
    copy = fx.folder / "train" / "unmerged" / "1.xml"
    copy.parent.mkdir()
    shutil.copy(fx.folder / "train" / "1.xml", copy)
    with pytest.raises(EdgeclinError, match=r"two files named 1\.xml"):
        build_i2b2(2012, fx.folder, out)
    shutil.rmtree(copy.parent)
    not_i2b2 = fx.folder / "train" / "notes.xml"
    not_i2b2.write_text("<doc>hello</doc>")
    with pytest.raises(EdgeclinError, match=r"notes\.xml: no <TEXT><!\[CDATA"):
        build_i2b2(2012, fx.folder, out)


def test_codes_unseen_in_train_leave_valid_and_test(mimic3, tmp_path):
    from edgeclin.builders.mimic import split_of

    usable = [a for a in mimic3.plan if a.expected("dia") is not None]
    in_test = next(a for a in usable if split_of(a.subject, 42) == "test")
    in_valid = next(a for a in usable if split_of(a.subject, 42) == "valid")
    diagnoses = tmp_path / "DIAGNOSES_ICD.csv"
    with mimic3.diagnoses.open(newline="") as src, diagnoses.open("w", newline="") as dst:
        writer = csv.writer(dst)
        for row in csv.reader(src):
            if row[2] != str(in_valid.hadm):  # the valid admission keeps only an unseen code
                writer.writerow(row)
        writer.writerow([9001, in_test.subject, in_test.hadm, 99, "99901"])
        writer.writerow([9002, in_valid.subject, in_valid.hadm, 1, "99801"])
    out = tmp_path / "out"
    build_mimic(mimic3.notes, mimic3.admissions, "dia", out, diagnoses=diagnoses, progress=False)
    labels = {mimic3.by_marker(r["text"]).hadm: r["label"] for rows in read_rows(out).values() for r in rows}
    assert labels[in_test.hadm] == in_test.expected("dia") and in_valid.hadm not in labels
    record = json.loads((out / "build.json").read_text())
    assert record["unseen_codes_removed"] == {
        "test: codes removed": 1, "test: distinct codes removed": 1, "test: admissions dropped (no code left)": 0,
        "valid: codes removed": 1, "valid: distinct codes removed": 1, "valid: admissions dropped (no code left)": 1}
    assert record["rows"]["valid"] == sum(1 for a in usable if split_of(a.subject, 42) == "valid") - 1
    kept = build_mimic(mimic3.notes, mimic3.admissions, "dia", tmp_path / "kept", diagnoses=diagnoses,
                       keep_unseen_codes=True, progress=False)
    labels = {mimic3.by_marker(r["text"]).hadm: r["label"] for rows in read_rows(kept.output).values() for r in rows}
    assert labels[in_test.hadm].split(";") == sorted([*in_test.expected("dia").split(";"), "999"])
    assert labels[in_valid.hadm] == "998"
