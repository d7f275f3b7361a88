"""``edgeclin data mimic``: clinical outcome prediction from admission notes (van Aken et al., EACL 2021).

Each hospital admission becomes one row: the parts of its discharge summary that were known at
admission, and one of four labels.

* ``mp``: in-hospital mortality, ``HOSPITAL_EXPIRE_FLAG``: ``0`` or ``1``.
* ``los``: length of stay, ``DISCHTIME - ADMITTIME`` in days rounded to 0.1 day (as in the
  paper's scripts), in four buckets whose upper bound is included: ``<=3d``, ``3-7d`` (more
  than 3, up to 7 days), ``7-14d`` and ``>14d``. Admissions that ended in death are left out
  (as in the paper: the stay was cut short), and so are stays with a negative length.
* ``dia`` / ``pro``: the admission's diagnosis / procedure codes, reduced to their 3-character
  category and ``;``-joined in sorted order (``250;401;427;V45``): a multi-label task. Diagnoses:
  ICD-9 categories are the first 3 characters; V codes too (``V3000`` -> ``V30``, the ICD-9
  category); E codes take 4 (``E8788`` -> ``E878``, the conventional E-code category). The
  paper's scripts take 4 characters for V codes as well, so their V labels are one level finer.
  Procedures: ICD-9-CM procedure codes are a 2-digit category plus decimals (``38.93`` is stored
  ``3893``); like the paper, the first 3 characters are used (``389``, i.e. category and first
  decimal). MIMIC-IV also codes in ICD-10: ``--icd-version 9`` (default) keeps ICD-9 rows, and
  admissions coded only in ICD-10 are dropped and counted; ``--icd-version 10`` keeps ICD-10
  rows instead (first 3 characters: the ICD-10-CM category, or the ICD-10-PCS section, body
  system and root operation). Admissions without a code are dropped and counted.

The text: only ``CATEGORY = "Discharge summary"`` notes with ``DESCRIPTION = "Report"``
(MIMIC-IV-Note: ``note_type = "DS"``); addenda are written after discharge and rarely hold
admission-time sections, so they are skipped (the paper's scripts appended them). Of several
reports for one admission, the first in file order that has admission-time sections is used:
a choice made while streaming, without holding any note. From it only the sections known at
admission are kept, in this order and under these headings: chief complaint, present illness,
medical history, medications on admission, allergies, physical exam, family history, social
history (the paper's eight). A section starts at a line whose heading names it (``History of
Present Illness:``, ``PAST MEDICAL HISTORY:``, ``Medications on Admission:``...) and ends at the
next heading: one of the known ones (any heading with "discharge" in it, ``Brief Hospital
Course:``, ``Pertinent Results:``, ``Followup Instructions:``...), or, after a blank line, any
short Title Case or UPPER CASE phrase followed by a colon that is not an exam or social-history
field (``HEENT:``, ``Tobacco:``). A heading is at most six words before a colon at the start of a
line: longer ones are sentences ("In the ED, initial vital signs were: ..."). Whitespace inside
a section is collapsed to single spaces. A note with none of chief complaint, present illness
and medical history is not used (as in the paper). Newborn admissions (``ADMISSION_TYPE =
NEWBORN``) are left out, as in the paper.

The split: 70/10/20 by patient (``SUBJECT_ID``), decided by a hash of the patient id and
``--seed``, so no patient is in two splits, and the same inputs and seed always give the same
files. The admissions and code tables are read into dictionaries first (small: one entry per
admission); the notes file (4 GB for MIMIC-III) is streamed, and each kept admission is written
to its split's file at once: memory does not grow with the notes.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from edgeclin.builders import (
    SPLITS,
    byte_progress,
    command_line,
    describe_file,
    find_columns,
    has_columns,
    markdown_table,
    open_csv,
    unit_interval,
    write_atomically,
)
from edgeclin.errors import EdgeclinError

TASKS = {
    "mp": "in-hospital mortality",
    "los": "length of stay",
    "dia": "diagnoses (3-character ICD codes, multi-label)",
    "pro": "procedures (3-character ICD codes, multi-label)",
}
MULTI_LABEL = ("dia", "pro")
SPLIT_BOUNDS = (("train", 0.7), ("valid", 0.8), ("test", 1.0))
LOS_BUCKETS = ((3.0, "<=3d"), (7.0, "3-7d"), (14.0, "7-14d"), (math.inf, ">14d"))
TOP_CODES = 20

# ---------------------------------------------------------------- the admission-time sections

SECTION_HEADINGS = {  # key -> heading in the output text (the paper's headings)
    "chief_complaint": "CHIEF COMPLAINT",
    "present_illness": "PRESENT ILLNESS",
    "medical_history": "MEDICAL HISTORY",
    "medications_on_admission": "MEDICATION ON ADMISSION",
    "allergies": "ALLERGIES",
    "physical_exam": "PHYSICAL EXAM",
    "family_history": "FAMILY HISTORY",
    "social_history": "SOCIAL HISTORY",
}
REQUIRED_SECTIONS = ("chief_complaint", "present_illness", "medical_history")
DROP = "drop"
# a heading at the start of a line: a letter, then letters, spaces and a little punctuation, then a colon
HEADING = re.compile(r"[ \t]*([A-Za-z][A-Za-z /&,'()\-]{0,58}?)[ \t]*:(.*)")
DROP_WORDS = ("hospital course", "labs", "laboratory", "results", "studies", "imaging", "instructions",
              "followup", "follow-up", "follow up", "disposition", "procedure", "impression", "microbiology")
DROP_PREFIXES = (
    "brief hospital course", "hospital course", "pertinent results", "pertinent", "results", "labs", "lab",
    "laboratory", "imaging", "studies", "radiology", "micro", "microbiology", "ecg", "ekg", "echo", "procedure",
    "procedures", "major surgical", "operations", "impression", "assessment", "plan", "followup", "follow-up",
    "follow up", "condition", "disposition", "instructions", "admission date", "date of birth", "service",
    "attending", "completed by", "facility", "sex", "name", "unit no", "dictated by", "addendum",
)
# field names inside the exam and the social history: content, even after a blank line
SUBFIELDS = frozenset((
    "vs", "vitals", "vital signs", "gen", "general", "heent", "eyes", "ent", "neck", "cv", "cardiac",
    "cardiovascular", "heart", "chest", "lungs", "lung", "pulm", "pulmonary", "resp", "respiratory", "abd", "abdomen",
    "abdominal", "gu", "rectal", "back", "msk", "musculoskeletal", "ext", "extremities", "extr", "skin", "neuro",
    "neurologic", "neurological", "psych", "mental status", "cn", "motor", "sensory", "reflexes", "gait",
    "coordination", "pulses", "lymph", "tobacco", "alcohol", "etoh", "illicits", "illicit drugs", "drugs",
    "occupation", "lives with",
))
CONNECTORS = frozenset({"of", "or", "and", "on", "at", "to", "the", "for", "in", "with", "/", "&", "-"})


def _section_of(name: str) -> str | None:
    """The section a heading opens: a key of SECTION_HEADINGS, DROP, or None (not a known heading)."""
    words = name.lower().split()
    if len(words) > 6:
        return None  # a sentence with a colon ("On arrival to the floor, vital signs were: ..."), not a heading
    n = " ".join(words)
    if "discharge" in n:
        return DROP  # checked first: "Discharge Medications", "Physical Exam on Discharge", "Upon discharge"
    if ("family" in n and "history" in n) or n == "fh":
        return "family_history"
    if "social history" in n or n == "sh":
        return "social_history"
    if "chief complaint" in n or n == "cc":
        return "chief_complaint"
    if "present illness" in n or n == "hpi":
        return "present_illness"
    if "medical history" in n or n in ("pmh", "past history"):
        return "medical_history"
    if ("medication" in n or "meds" in n) and ("admission" in n or "home" in n or "prior to" in n):
        return "medications_on_admission"
    if n.startswith("allerg"):
        return "allergies"
    if "physical exam" in n or n in ("admission exam", "exam on admission", "exam"):
        return "physical_exam"
    if n.startswith(DROP_PREFIXES) or any(word in n for word in DROP_WORDS):
        return DROP
    return None


def _looks_like_heading(name: str) -> bool:
    """An unknown heading: a short Title Case or UPPER CASE phrase that is not an exam or social field."""
    words = name.split()
    if " ".join(words).lower() in SUBFIELDS:
        return False
    return all(w[0].isupper() or w.lower() in CONNECTORS or not w[0].isalpha() for w in words)


def admission_sections(note: str) -> dict[str, str]:
    """The admission-time sections of one discharge summary, by key (first occurrence of each)."""
    sections: dict[str, list[str]] = {}
    current: str | None = None
    after_blank = True
    for line in note.splitlines():
        stripped = line.strip()
        if not stripped:
            after_blank = True
            continue
        match = HEADING.match(line) if ":" in line else None
        key = None
        if match:
            key = _section_of(match.group(1))
            if key is None and after_blank and _looks_like_heading(match.group(1)):
                key = DROP
        after_blank = False
        if key is None:  # content
            if current:
                sections[current].append(stripped)
            continue
        if key == current:  # the same section named again ("Physical Exam:" then "ADMISSION EXAM:")
            sections[current].append(stripped)
            continue
        current = None
        if key == DROP:
            continue
        if any(sections.get(key, ())):
            continue  # the first occurrence counts (a later "Allergies:" repeats it or is written at discharge)
        current = key
        sections[key] = [match.group(2).strip()]  # type: ignore[union-attr]
    result = {}
    for key, parts in sections.items():
        text = " ".join(" ".join(parts).split())
        if text:
            result[key] = text
    return result


def admission_text(note: str) -> str | None:
    """The text edgeclin trains on: the admission-time sections under the paper's headings, or
    None when the note has none of chief complaint, present illness and medical history."""
    sections = admission_sections(note)
    if not any(key in sections for key in REQUIRED_SECTIONS):
        return None
    return "\n\n".join(f"{heading}: {sections[key]}" for key, heading in SECTION_HEADINGS.items() if key in sections)


# ---------------------------------------------------------------- labels


def los_bucket(admit: datetime, discharge: datetime) -> str | None:
    """The length-of-stay label, or None for a negative stay."""
    seconds = (discharge - admit).total_seconds()
    if seconds < 0:
        return None
    days = round(seconds / 86400, 1)
    return next(label for bound, label in LOS_BUCKETS if days <= bound)


def short_code(code: str, kind: str, icd_version: int) -> str | None:
    """A code's 3-character category (4 for ICD-9 E codes); None for an empty code."""
    code = code.strip().replace(".", "").upper()
    if not code:
        return None
    if kind == "diagnoses" and icd_version == 9 and code.startswith("E"):
        return code[:4]
    return code[:3]


def split_of(subject: int, seed: int) -> str:
    position = unit_interval(seed, f"mimic-subject-{subject}")
    return next(name for name, bound in SPLIT_BOUNDS if position < bound)


# ---------------------------------------------------------------- file formats


@dataclass(frozen=True)
class NotesFormat:
    version: str
    columns: tuple[str, ...]
    what: str


NOTES_FORMATS = {
    "iii": NotesFormat("iii", ("SUBJECT_ID", "HADM_ID", "CATEGORY", "DESCRIPTION", "ISERROR", "TEXT"),
                       "a MIMIC-III NOTEEVENTS file"),
    "iv": NotesFormat("iv", ("subject_id", "hadm_id", "note_type", "text"), "a MIMIC-IV-Note discharge file"),
}
ADMISSION_COLUMNS = ("SUBJECT_ID", "HADM_ID", "ADMITTIME", "DISCHTIME", "ADMISSION_TYPE", "HOSPITAL_EXPIRE_FLAG")
RELEASE = {"iii": "MIMIC-III", "iv": "MIMIC-IV"}


def _notes_version(header: list[str]) -> str | None:
    if has_columns(header, "CATEGORY", "DESCRIPTION", "TEXT"):
        return "iii"
    if has_columns(header, "note_type", "text"):
        return "iv"
    return None


def _admissions_version(header: list[str]) -> str | None:
    if has_columns(header, "ROW_ID") or has_columns(header, "ETHNICITY") or has_columns(header, "DIAGNOSIS"):
        return "iii"
    if has_columns(header, "race") or has_columns(header, "admit_provider_id"):
        return "iv"
    return None  # a trimmed export: nothing to check against


def _codes_version(header: list[str]) -> str | None:
    if has_columns(header, "icd_code", "icd_version"):
        return "iv"
    if has_columns(header, "ICD9_CODE"):
        return "iii"
    return None


def _header(path: Path) -> list[str]:
    with open_csv(path) as (_, header, _raw):
        return header


def detect_version(notes: Path, admissions: Path, codes: Path | None, version: str) -> str:
    """Check every file's header before the long read; return "iii" or "iv"."""
    header = _header(notes)
    found = _notes_version(header)
    if found is None:
        shown = ", ".join(header[:12]) + (", ..." if len(header) > 12 else "")
        raise EdgeclinError(
            f"{notes}, line 1: not a MIMIC notes file: expected the columns of MIMIC-III NOTEEVENTS "
            "(ROW_ID, SUBJECT_ID, HADM_ID, CATEGORY, DESCRIPTION, ISERROR, TEXT, ...) or MIMIC-IV-Note "
            f"discharge.csv (note_id, subject_id, hadm_id, note_type, note_seq, text, ...); found: {shown or 'none'}"
        )
    if version != "auto" and found != version:
        raise EdgeclinError(f"{notes} is a {RELEASE[found]} notes file, but --version {version} was given "
                            f"({RELEASE[version]}); use --version {found} or --version auto")
    find_columns(notes, header, NOTES_FORMATS[found].columns, NOTES_FORMATS[found].what)
    header = _header(admissions)
    find_columns(admissions, header, ADMISSION_COLUMNS, f"a {RELEASE[found]} ADMISSIONS file")
    checks = [(admissions, _admissions_version(header))]
    if codes is not None:
        header = _header(codes)
        code_version = _codes_version(header)
        if code_version is None:
            wanted = "ICD9_CODE" if found == "iii" else "icd_code, icd_version"
            find_columns(codes, header, ("SUBJECT_ID", "HADM_ID", *wanted.split(", ")),
                         f"a {RELEASE[found]} DIAGNOSES_ICD or PROCEDURES_ICD file")
        checks.append((codes, code_version))
    for path, other in checks:
        if other is not None and other != found:
            raise EdgeclinError(f"{path} looks like {RELEASE[other]}, but {notes.name} is {RELEASE[found]}: "
                                "give the notes, admissions and code tables of one release")
    return found


# ---------------------------------------------------------------- reading the small tables


def _int_value(value: str, path: Path, line: int, column: str) -> int | None:
    """An id column: empty -> None; "123" or "123.0" (pandas exports) -> 123; else a clear error."""
    value = value.strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        try:
            number = float(value)
            if number.is_integer():
                return int(number)
        except ValueError:
            pass
    raise EdgeclinError(f"{path}, line {line}, column {column}: expected an integer id, got {value[:40]!r}")


def _time_value(value: str, path: Path, line: int, column: str) -> datetime | None:
    value = value.strip()
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise EdgeclinError(f"{path}, line {line}, column {column}: expected a date and time like "
                            f"2150-01-31 13:45:00, got {value[:40]!r}") from None


@dataclass
class Counts:
    notes: Counter = field(default_factory=Counter)  # what happened to the rows of the notes file
    dropped: Counter = field(default_factory=Counter)  # admissions left out, by reason
    rows: Counter = field(default_factory=Counter)
    patients: dict[str, set[int]] = field(default_factory=lambda: {name: set() for name in SPLITS})
    labels: dict[str, Counter] = field(default_factory=lambda: {name: Counter() for name in SPLITS})
    codes_per_row: Counter = field(default_factory=Counter)  # split -> total codes, for the mean
    # the patient of each valid and test row, in file order, for the pass that removes unseen codes
    row_subjects: dict[str, list[int]] = field(default_factory=lambda: {"valid": [], "test": []})
    unseen: Counter = field(default_factory=Counter)  # what that pass removed


def _read_admissions(path: Path, task: str, progress: bool) -> dict[int, tuple[int, str | None, str | None]]:
    """HADM_ID -> (SUBJECT_ID, label or None, reason to drop or None). Labels for mp and los only."""
    admissions: dict[int, tuple[int, str | None, str | None]] = {}
    with open_csv(path) as (reader, header, raw), byte_progress(path, raw, "admissions", progress) as update:
        col = find_columns(path, header, ADMISSION_COLUMNS, "a MIMIC ADMISSIONS file")
        needed = max(col.values())
        try:
            for row in reader:
                update()
                line = reader.line_num
                if len(row) <= needed:
                    if not any(cell.strip() for cell in row):
                        continue
                    raise EdgeclinError(f"{path}, line {line}: {len(row)} fields, but the header has {len(header)}")
                hadm = _int_value(row[col["HADM_ID"]], path, line, header[col["HADM_ID"]])
                subject = _int_value(row[col["SUBJECT_ID"]], path, line, header[col["SUBJECT_ID"]])
                if hadm is None or subject is None:
                    continue
                flag = row[col["HOSPITAL_EXPIRE_FLAG"]].strip()
                if flag not in ("0", "1", ""):
                    raise EdgeclinError(f"{path}, line {line}, column {header[col['HOSPITAL_EXPIRE_FLAG']]}: "
                                        f"expected 0 or 1, got {flag[:40]!r}")
                label = reason = None
                if row[col["ADMISSION_TYPE"]].strip().upper() == "NEWBORN":
                    reason = "newborn admission (left out, as in the paper)"
                elif task == "mp":
                    label = flag or None
                    reason = None if flag else "no HOSPITAL_EXPIRE_FLAG"
                elif task == "los":
                    admit = _time_value(row[col["ADMITTIME"]], path, line, header[col["ADMITTIME"]])
                    discharge = _time_value(row[col["DISCHTIME"]], path, line, header[col["DISCHTIME"]])
                    if flag == "1":
                        reason = "died in hospital (left out of length of stay, as in the paper)"
                    elif admit is None or discharge is None:
                        reason = "no ADMITTIME or DISCHTIME"
                    else:
                        label = los_bucket(admit, discharge)
                        reason = None if label else "discharge before admission (negative length of stay)"
                admissions[hadm] = (subject, label, reason)
        except csv.Error as exc:
            raise EdgeclinError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
    if not admissions:
        raise EdgeclinError(f"{path}: no admissions (no rows with SUBJECT_ID and HADM_ID)")
    return admissions


def _read_codes(path: Path, kind: str, version: str, icd_version: int,
                progress: bool) -> tuple[dict[int, str], set[int], int]:
    """HADM_ID -> the sorted, ;-joined set of short codes; plus the admissions that only had
    codes of the other ICD version (MIMIC-IV), and the number of code rows used."""
    codes: dict[int, set[str]] = {}
    distinct: dict[str, str] = {}
    other_version: set[int] = set()
    used = 0
    with open_csv(path) as (reader, header, raw), byte_progress(path, raw, kind, progress) as update:
        names = ("HADM_ID", "ICD9_CODE") if version == "iii" else ("HADM_ID", "icd_code", "icd_version")
        what = f"a {RELEASE[version]} {'DIAGNOSES_ICD' if kind == 'diagnoses' else 'PROCEDURES_ICD'} file"
        col = find_columns(path, header, names, what)
        code_col = col[names[1]]
        try:
            for row in reader:
                update()
                if len(row) <= max(col.values()):
                    if not any(cell.strip() for cell in row):
                        continue
                    raise EdgeclinError(f"{path}, line {reader.line_num}: {len(row)} fields, "
                                        f"but the header has {len(header)}")
                hadm = _int_value(row[col["HADM_ID"]], path, reader.line_num, header[col["HADM_ID"]])
                if hadm is None:
                    continue
                if version == "iv":
                    row_version = row[col["icd_version"]].strip()
                    if row_version not in ("9", "10"):
                        raise EdgeclinError(f"{path}, line {reader.line_num}, column "
                                            f"{header[col['icd_version']]}: expected 9 or 10, got {row_version!r}")
                    if int(row_version) != icd_version:
                        other_version.add(hadm)
                        continue
                code = short_code(row[code_col], kind, icd_version)
                if code is None:
                    continue
                # one string object per distinct code (a few thousand), not one per row (millions)
                codes.setdefault(hadm, set()).add(distinct.setdefault(code, code))
                used += 1
        except csv.Error as exc:
            raise EdgeclinError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
    joined = {hadm: ";".join(sorted(values)) for hadm, values in codes.items()}
    return joined, other_version - set(joined), used



# ---------------------------------------------------------------- the build


@dataclass
class MimicResult:
    output: Path
    version: str
    rows: dict[str, int]
    dropped: dict[str, int]


def build_mimic(
    notes: str | Path,
    admissions: str | Path,
    task: str,
    output: str | Path,
    *,
    diagnoses: str | Path | None = None,
    procedures: str | Path | None = None,
    version: str = "auto",
    icd_version: int = 9,
    seed: int = 42,
    keep_unseen_codes: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> MimicResult:
    """Build one van Aken et al. task as ``output/{train,valid,test}.csv`` plus README.md and build.json."""
    if task not in TASKS:
        raise EdgeclinError(f"unknown task {task!r} (choose mp, los, dia or pro)")
    if version not in ("auto", "iii", "iv"):
        raise EdgeclinError(f"unknown --version {version!r} (auto, iii or iv)")
    notes, admissions, output = Path(notes), Path(admissions), Path(output)
    codes: Path | None = None
    if task in MULTI_LABEL:
        option, given = ("--diagnoses", diagnoses) if task == "dia" else ("--procedures", procedures)
        if given is None:
            table = "DIAGNOSES_ICD" if task == "dia" else "PROCEDURES_ICD"
            raise EdgeclinError(f"--task {task} needs the {table} table: give it with {option}")
        codes = Path(given)
    if output.exists() and not overwrite:
        raise EdgeclinError(f"output folder {output} already exists (use --overwrite to replace it)")
    version = detect_version(notes, admissions, codes, version)
    if version == "iii" and icd_version != 9:
        raise EdgeclinError("MIMIC-III is coded in ICD-9 only: --icd-version 10 needs MIMIC-IV")
    kind = "diagnoses" if task == "dia" else "procedures"

    admission_table = _read_admissions(admissions, task, progress)
    code_labels: dict[int, str] = {}
    other_version: set[int] = set()
    code_rows = 0
    if codes is not None:
        code_labels, other_version, code_rows = _read_codes(codes, kind, version, icd_version, progress)
    counts = Counts()
    sources = [notes, admissions] + ([codes] if codes else [])

    def build(folder: Path) -> None:
        _stream_notes(notes, version, task, seed, admission_table, code_labels, other_version, counts, folder,
                      progress)
        total = sum(counts.rows.values())
        if total == 0:
            hint = ""
            if counts.notes["HADM_ID not in the admissions file"]:
                hint = ": no discharge summary's HADM_ID is in the admissions file; are they from the same release?"
            raise EdgeclinError(f"{notes}: no admission could be built{hint} "
                                f"({counts.notes['rows read']} notes read, "
                                f"{counts.notes['discharge summaries']} discharge summaries)")
        if task in MULTI_LABEL and not keep_unseen_codes:
            _remove_unseen_codes(folder, counts)
        record = {
            "task": task, "description": TASKS[task], "release": RELEASE[version], "seed": seed,
            "icd_version": icd_version if task in MULTI_LABEL else None,
            "command": command or command_line(),
            "sources": {str(path): path.stat().st_size for path in sources},
            "admissions_in_table": len(admission_table), "code_rows_used": code_rows if codes else None,
            "rows": {name: counts.rows[name] for name in SPLITS},
            "patients": {name: len(counts.patients[name]) for name in SPLITS},
            "labels": {name: dict(sorted(counts.labels[name].items())) for name in SPLITS},
            "unseen_codes_removed": dict(counts.unseen) if task in MULTI_LABEL and not keep_unseen_codes else None,
            "dropped_admissions": dict(counts.dropped.most_common()),
            "notes": dict(counts.notes),
        }
        (folder / "build.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        (folder / "README.md").write_text(_readme(record, counts, sources, output), encoding="utf-8")

    write_atomically(output, overwrite, build)
    return MimicResult(output=output, version=version, rows={name: counts.rows[name] for name in SPLITS},
                       dropped=dict(counts.dropped))


def _stream_notes(notes: Path, version: str, task: str, seed: int,
                  admissions: dict[int, tuple[int, str | None, str | None]], code_labels: dict[int, str],
                  other_version: set[int], counts: Counts, folder: Path, progress: bool) -> None:
    """Read the notes file once, row by row, writing each usable admission straight to its split."""
    fmt = NOTES_FORMATS[version]
    settled: set[int] = set()  # admissions written, or dropped for a reason of the admission itself
    without_sections: set[int] = set()
    handles = {name: (folder / f"{name}.csv").open("w", newline="", encoding="utf-8") for name in SPLITS}
    try:
        writers = {name: csv.writer(handle) for name, handle in handles.items()}
        for writer in writers.values():
            writer.writerow(["text", "label"])
        with open_csv(notes) as (reader, header, raw), \
                byte_progress(notes, raw, f"{notes.name}", progress) as update:
            col = find_columns(notes, header, fmt.columns, fmt.what)
            hadm_col, text_col = col[fmt.columns[1]], col[fmt.columns[-1]]
            needed = max(col.values())
            try:
                for row in reader:
                    update()
                    counts.notes["rows read"] += 1
                    if len(row) <= needed:
                        if not any(cell.strip() for cell in row):
                            continue
                        raise EdgeclinError(f"{notes}, line {reader.line_num}: {len(row)} fields, but the header "
                                            f"has {len(header)} (a quoted TEXT field cut short?)")
                    if version == "iii":
                        if row[col["CATEGORY"]].strip() != "Discharge summary":
                            continue
                        counts.notes["discharge summaries"] += 1
                        if row[col["DESCRIPTION"]].strip() != "Report":
                            counts.notes["addenda skipped (only reports are used)"] += 1
                            continue
                        if row[col["ISERROR"]].strip() == "1":
                            counts.notes["reports marked ISERROR, skipped"] += 1
                            continue
                    else:
                        if row[col["note_type"]].strip() != "DS":
                            continue
                        counts.notes["discharge summaries"] += 1
                    hadm = _int_value(row[hadm_col], notes, reader.line_num, header[hadm_col])
                    if hadm is None:
                        counts.notes["reports without HADM_ID, skipped"] += 1
                        continue
                    if hadm in settled:
                        counts.notes["further reports of an admission already used or dropped"] += 1
                        continue
                    admission = admissions.get(hadm)
                    if admission is None:
                        counts.notes["HADM_ID not in the admissions file"] += 1
                        continue
                    subject, label, reason = admission
                    if reason is None and task in MULTI_LABEL:
                        label = code_labels.get(hadm)
                        if label is None:
                            kind = "diagnosis" if task == "dia" else "procedure"
                            reason = ("coded in the other ICD version only (see --icd-version)"
                                      if hadm in other_version else f"no {kind} codes")
                    if reason is not None:
                        counts.dropped[reason] += 1
                        settled.add(hadm)
                        continue
                    text = admission_text(row[text_col])
                    if text is None:
                        without_sections.add(hadm)
                        continue
                    split = split_of(subject, seed)
                    writers[split].writerow([text, label])
                    settled.add(hadm)
                    counts.rows[split] += 1
                    counts.patients[split].add(subject)
                    if task in MULTI_LABEL:
                        if split != "train":
                            counts.row_subjects[split].append(subject)
                        parts = label.split(";")  # type: ignore[union-attr]
                        counts.labels[split].update(parts)
                        counts.codes_per_row[split] += len(parts)
                    else:
                        counts.labels[split][label] += 1
            except csv.Error as exc:
                raise EdgeclinError(f"{notes}, line {reader.line_num}: malformed CSV ({exc})") from None
            except (EOFError, OSError) as exc:  # a truncated or corrupt .gz
                raise EdgeclinError(f"{notes}, line {reader.line_num}: cannot read further ({exc})") from None
    finally:
        for handle in handles.values():
            handle.close()
    never = without_sections - settled
    if never:
        counts.dropped["no chief complaint, present illness or medical history section"] = len(never)


def _remove_unseen_codes(folder: Path, counts: Counts) -> None:
    """Take codes that never occur in train out of the valid and test labels (a classifier has no
    output for them, and edgeclin's loader refuses labels unseen in training); an admission left
    with no code is dropped. A second pass over the (small) valid and test files, row by row."""
    train = set(counts.labels["train"])
    for split in ("valid", "test"):
        path = folder / f"{split}.csv"
        tmp = path.with_name(path.name + ".tmp")
        subjects = iter(counts.row_subjects[split])
        counts.unseen[f"{split}: distinct codes removed"] = len(set(counts.labels[split]) - train)
        counts.unseen[f"{split}: codes removed"] = counts.unseen[f"{split}: admissions dropped (no code left)"] = 0
        counts.rows[split] = counts.codes_per_row[split] = 0
        counts.labels[split] = Counter()
        counts.patients[split] = set()
        with path.open(newline="", encoding="utf-8") as src, tmp.open("w", newline="", encoding="utf-8") as dst:
            reader, writer = csv.reader(src), csv.writer(dst)
            writer.writerow(next(reader))
            for (text, label), subject in zip(reader, subjects, strict=True):
                codes = label.split(";")
                kept = [code for code in codes if code in train]
                counts.unseen[f"{split}: codes removed"] += len(codes) - len(kept)
                if not kept:
                    counts.unseen[f"{split}: admissions dropped (no code left)"] += 1
                    continue
                writer.writerow([text, ";".join(kept)])
                counts.rows[split] += 1
                counts.patients[split].add(subject)
                counts.labels[split].update(kept)
                counts.codes_per_row[split] += len(kept)
        tmp.replace(path)


def _readme(record: dict, counts: Counts, sources: list[Path], output: Path) -> str:
    task = record["task"]
    multi = task in MULTI_LABEL
    lines = [
        f"# {record['release']}: {record['description']}, from admission notes",
        "",
        "Built by edgeclin (`edgeclin data mimic`) with:",
        "",
        f"    {record['command']}",
        "",
        "Sources: " + ", ".join(describe_file(path) for path in sources) + ".",
        "",
        "The task of van Aken et al. (EACL 2021), *Clinical outcome prediction from admission notes*: each row",
        "is one admission; `text` holds the sections of its discharge summary known at admission (chief",
        "complaint, present illness, medical history, medications on admission, allergies, physical exam,",
        "family and social history); everything written later (hospital course, results, discharge",
        "medications, diagnoses and instructions) is left out. How sections are found, and every other",
        "choice, is documented in `edgeclin/builders/mimic.py`.",
        "",
    ]
    if task == "mp":
        lines.append("Label: `1` if the patient died in hospital (`HOSPITAL_EXPIRE_FLAG`), else `0`.")
    elif task == "los":
        lines.append("Label: length of stay (discharge minus admission time, in days rounded to 0.1), "
                     "upper bounds included: `<=3d`, `3-7d` (over 3, up to 7 days), `7-14d`, `>14d`.")
    else:
        kind = "diagnosis" if task == "dia" else "procedure"
        version = record["icd_version"]
        rule = ("first 3 characters; E codes 4" if task == "dia" and version == 9 else "first 3 characters")
        lines.append(f"Label: the admission's ICD-{version} {kind} codes, reduced to categories ({rule}), "
                     "sorted and `;`-separated: a multi-label task.")
    lines += [
        "",
        f"Split by patient (`SUBJECT_ID`), 70/10/20 by a hash of the patient id and seed {record['seed']}: "
        "no patient is in two splits.",
        "",
        "## Rows",
        "",
    ]
    rows = [[name, f"{record['rows'][name]:,}", f"{record['patients'][name]:,}"] for name in SPLITS]
    rows.append(["total", f"{sum(record['rows'].values()):,}", f"{sum(record['patients'].values()):,}"])
    lines += [markdown_table(["split", "admissions", "patients"], rows), ""]
    empty = [name for name in SPLITS if not record["rows"][name]]
    if empty:
        lines += [f"**Warning:** no admission in {', '.join(empty)}: too few patients for a 70/10/20 split.", ""]
    lines += ["## Labels", ""]
    if multi:
        train_codes = set(counts.labels["train"])
        rows = []
        for name in SPLITS:
            n = counts.rows[name]
            mean = counts.codes_per_row[name] / n if n else 0.0
            unseen = len(set(counts.labels[name]) - train_codes) if name != "train" else 0
            rows.append([name, f"{len(counts.labels[name]):,}", f"{mean:.1f}", f"{unseen:,}"])
        lines += [markdown_table(["split", "distinct codes", "codes per admission", "codes not in train"], rows),
                  "", f"The {TOP_CODES} most frequent codes (admissions with the code):", ""]
        total = Counter()
        for name in SPLITS:
            total.update(counts.labels[name])
        rows = [[code, *(f"{counts.labels[name][code]:,}" for name in SPLITS)]
                for code, _ in total.most_common(TOP_CODES)]
        lines += [markdown_table(["code", *SPLITS], rows), "",
                  "Every code's count per split is in `build.json`.", ""]
        removed = record["unseen_codes_removed"]
        if removed is None:
            lines += ["Codes that never occur in train were kept in valid/test labels (`--keep-unseen-codes`).", ""]
        else:
            lines += ["Codes that never occur in train were taken out of the valid and test labels (no classifier "
                      "output exists for them); an admission left with no code was dropped:", "",
                      markdown_table(["", "count"], [[what, f"{n:,}"] for what, n in sorted(removed.items())]), ""]
    else:
        labels = sorted({label for name in SPLITS for label in counts.labels[name]},
                        key=lambda label: [b for _, b in LOS_BUCKETS].index(label) if task == "los" else label)
        rows = []
        for label in labels:
            cells = []
            for name in SPLITS:
                n = counts.rows[name]
                k = counts.labels[name][label]
                cells.append(f"{k:,} ({100 * k / n:.1f}%)" if n else "0")
            rows.append([f"`{label}`", *cells])
        lines += [markdown_table(["label", *SPLITS], rows), ""]
    lines += ["## Left out", "", f"Admissions in the admissions table: {record['admissions_in_table']:,}. "
              "Admissions with a discharge summary that were left out, and why:", ""]
    dropped = [[reason, f"{n:,}"] for reason, n in counts.dropped.most_common()] or [["(none)", "0"]]
    lines += [markdown_table(["reason", "admissions"], dropped), "", "Rows of the notes file:", ""]
    lines += [markdown_table(["", "notes"], [[what, f"{n:,}"] for what, n in counts.notes.items()]), ""]
    flags = " --multi-label" if multi else ""
    lines += [
        "## Train",
        "",
        "Discharge-summary sections are long; 512 tokens holds most of them:",
        "",
        f"    edgeclin train --data {output}{flags} --max-length 512",
        "",
        "## Data use",
        "",
        "This folder is derived from MIMIC and is covered by its data use agreement: keep it where the",
        "source files may be kept, and do not share it.",
        "",
    ]
    return "\n".join(lines)
