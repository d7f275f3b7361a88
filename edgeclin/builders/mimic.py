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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

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


def _long_e_codes(kind: str, icd_version: int) -> bool:
    """Whether E codes keep 4 characters: ICD-9 diagnoses (in ICD-10, E is a chapter like any other)."""
    return kind == "diagnoses" and icd_version == 9


def short_code(code: str, kind: str, icd_version: int) -> str | None:
    """A code's 3-character category (4 for ICD-9 E codes); None for an empty code."""
    code = code.strip().replace(".", "").upper()
    if not code:
        return None
    if _long_e_codes(kind, icd_version) and code.startswith("E"):
        return code[:4]
    return code[:3]


def split_of(subject: int, seed: int) -> str:
    position = unit_interval(seed, f"mimic-subject-{subject}")
    return next(name for name, bound in SPLIT_BOUNDS if position < bound)


class _AdmissionRow(NamedTuple):
    """One row of the admissions table, as a task's label rule sees it."""

    path: Path
    line: int
    cells: list[str]
    col: dict[str, int]
    header: list[str]
    flag: str  # HOSPITAL_EXPIRE_FLAG: "0", "1" or ""

    def time(self, column: str) -> datetime | None:
        """A time column, parsed: only length of stay reads them, so a bad time fails that task alone."""
        return _time_value(self.cells[self.col[column]], self.path, self.line, self.header[self.col[column]])


AdmissionLabel = Callable[[_AdmissionRow], tuple[str | None, str | None]]  # -> (label, reason to drop)


def _mortality_label(row: _AdmissionRow) -> tuple[str | None, str | None]:
    """mp: the HOSPITAL_EXPIRE_FLAG itself."""
    return row.flag or None, None if row.flag else "no HOSPITAL_EXPIRE_FLAG"


def _length_of_stay_label(row: _AdmissionRow) -> tuple[str | None, str | None]:
    """los: the stay's bucket. Deaths are left out (the stay was cut short), as in the paper."""
    admit, discharge = row.time("ADMITTIME"), row.time("DISCHTIME")  # parsed first: a bad time fails even for a death
    if row.flag == "1":
        return None, "died in hospital (left out of length of stay, as in the paper)"
    if admit is None or discharge is None:
        return None, "no ADMITTIME or DISCHTIME"
    label = los_bucket(admit, discharge)
    return label, None if label else "discharge before admission (negative length of stay)"


# ---------------------------------------------------------------- the tasks


@dataclass(frozen=True)
class CodeTable:
    """A code table that labels a multi-label task: DIAGNOSES_ICD or PROCEDURES_ICD."""

    name: str  # "diagnoses" or "procedures": build_mimic's keyword, and the kind short_code takes
    noun: str  # what one code names, in messages: "diagnosis", "procedure"

    @property
    def option(self) -> str:
        """The command-line option that gives the table: ``--diagnoses``."""
        return f"--{self.name}"

    @property
    def table(self) -> str:
        """The table's name in the MIMIC releases: ``DIAGNOSES_ICD``."""
        return f"{self.name.upper()}_ICD"

    def rule(self, icd_version: int) -> str:
        """How short_code reduces a code to its category, in the README's words."""
        return "first 3 characters; E codes 4" if _long_e_codes(self.name, icd_version) else "first 3 characters"

    @property
    def other(self) -> str:
        return "PROCEDURES_ICD" if self.name == "diagnoses" else "DIAGNOSES_ICD"

    def check_header(self, path: Path, header: list[str], version: str) -> None:
        """MIMIC-IV's procedures_icd has a chartdate and diagnoses_icd has none: a swapped table is refused."""
        if version != "iv":
            return
        if has_columns(header, "chartdate") != (self.name == "procedures"):
            raise EdgeclinError(f"{path} looks like {self.other.lower()} (its columns), but was given as "
                                f"{self.option}: swap the two")

    def check_codes(self, path: Path, rows: int, diagnosis_like: int) -> None:
        """MIMIC-III's two tables have the same columns; their ICD-9 codes differ: diagnoses have 5-character
        and V/E codes, procedures are 2-4 digits. A table whose codes are of the other kind is refused."""
        swapped = diagnosis_like > 0 if self.name == "procedures" else rows >= MIN_ROWS_TO_JUDGE and not diagnosis_like
        if swapped:
            raise EdgeclinError(f"{path} holds {'diagnosis' if diagnosis_like else 'procedure'} codes "
                                f"({diagnosis_like} of {rows} are 5-character or V/E codes): it looks like "
                                f"{self.other}, but was given as {self.option}")


MIN_ROWS_TO_JUDGE = 20  # a diagnoses table this long without one 5-character or V/E code is a procedures table


def _diagnosis_like(code: str) -> bool:
    """An ICD-9 code only a diagnosis can have: 5 characters, or a V or E code (procedures have 2-4 digits)."""
    code = code.strip().replace(".", "")
    return len(code) == 5 or code[:1] in ("V", "E")


@dataclass(frozen=True)
class MimicTask:
    """One of the four tasks: where its label comes from, and how the README describes it."""

    name: str
    description: str
    code_table: CodeTable | None = None  # the table whose codes label it (multi-label); else the admissions table
    admission_label: AdmissionLabel | None = None  # mp/los: the label of an admission row (not a newborn)
    label_sentence: str = ""  # mp/los: the README's "Label: ..." sentence (a code task's names its ICD version)
    label_order: tuple[str, ...] = ()  # the README's order of the labels; sorted when empty

    @property
    def multi_label(self) -> bool:
        """Whether a row holds a set of codes (``;``-joined) rather than one class."""
        return self.code_table is not None

    def label_of(self, row: _AdmissionRow) -> tuple[str | None, str | None]:
        """(label, reason to drop) of an admission row; (None, None) when the codes give the label."""
        return self.admission_label(row) if self.admission_label is not None else (None, None)

    def readme_label(self, icd_version: int) -> str:
        """The README's sentence on what a label is."""
        if self.code_table is None:
            return self.label_sentence
        rule = self.code_table.rule(icd_version)
        return (f"Label: the admission's ICD-{icd_version} {self.code_table.noun} codes, reduced to categories "
                f"({rule}), sorted and `;`-separated: a multi-label task.")

    def sorted_labels(self, labels: Iterable[str]) -> list[str]:
        """Labels in the README's order."""
        if self.label_order:
            return sorted(labels, key=self.label_order.index)
        return sorted(labels)


DIAGNOSES = CodeTable("diagnoses", "diagnosis")
PROCEDURES = CodeTable("procedures", "procedure")
TASKS: dict[str, MimicTask] = {task.name: task for task in (
    MimicTask("mp", "in-hospital mortality", admission_label=_mortality_label,
              label_sentence="Label: `1` if the patient died in hospital (`HOSPITAL_EXPIRE_FLAG`), else `0`."),
    MimicTask("los", "length of stay", admission_label=_length_of_stay_label,
              label_sentence="Label: length of stay (discharge minus admission time, in days rounded to 0.1), "
                             "upper bounds included: `<=3d`, `3-7d` (over 3, up to 7 days), `7-14d`, `>14d`.",
              label_order=tuple(label for _, label in LOS_BUCKETS)),
    MimicTask("dia", "diagnoses (3-character ICD codes, multi-label)", code_table=DIAGNOSES),
    MimicTask("pro", "procedures (3-character ICD codes, multi-label)", code_table=PROCEDURES),
)}


def _task_named(name: str) -> MimicTask:
    """The task of a --task value; a clear error for an unknown one."""
    if name not in TASKS:
        names = list(TASKS)
        raise EdgeclinError(f"unknown task {name!r} (choose {', '.join(names[:-1])} or {names[-1]})")
    return TASKS[name]


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

    def add_row(self, split: str, subject: int, label: str, multi_label: bool) -> None:
        """Count one row written to a split: its patient, and its label (or each of its codes)."""
        self.rows[split] += 1
        self.patients[split].add(subject)
        if multi_label:
            if split != "train":
                self.row_subjects[split].append(subject)
            parts = label.split(";")
            self.labels[split].update(parts)
            self.codes_per_row[split] += len(parts)
        else:
            self.labels[split][label] += 1


def _read_admissions(path: Path, task: MimicTask, progress: bool) -> dict[int, tuple[int, str | None, str | None]]:
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
                if row[col["ADMISSION_TYPE"]].strip().upper() == "NEWBORN":
                    label, reason = None, "newborn admission (left out, as in the paper)"
                else:
                    label, reason = task.label_of(_AdmissionRow(path, line, row, col, header, flag))
                admissions[hadm] = (subject, label, reason)
        except csv.Error as exc:
            raise EdgeclinError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
    if not admissions:
        raise EdgeclinError(f"{path}: no admissions (no rows with SUBJECT_ID and HADM_ID)")
    return admissions


def _read_codes(path: Path, table: CodeTable, version: str, icd_version: int,
                progress: bool) -> tuple[dict[int, str], set[int], int]:
    """HADM_ID -> the sorted, ;-joined set of short codes; plus the admissions that only had
    codes of the other ICD version (MIMIC-IV), and the number of code rows used."""
    codes: dict[int, set[str]] = {}
    distinct: dict[str, str] = {}
    other_version: set[int] = set()
    used = diagnosis_like = 0
    with open_csv(path) as (reader, header, raw), byte_progress(path, raw, table.name, progress) as update:
        names = ("HADM_ID", "ICD9_CODE") if version == "iii" else ("HADM_ID", "icd_code", "icd_version")
        col = find_columns(path, header, names, f"a {RELEASE[version]} {table.table} file")
        table.check_header(path, header, version)
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
                diagnosis_like += version == "iii" and _diagnosis_like(row[code_col])
                code = short_code(row[code_col], table.name, icd_version)
                if code is None:
                    continue
                # one string object per distinct code (a few thousand), not one per row (millions)
                codes.setdefault(hadm, set()).add(distinct.setdefault(code, code))
                used += 1
        except csv.Error as exc:
            raise EdgeclinError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from None
    if version == "iii":
        table.check_codes(path, used, diagnosis_like)
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
    spec = _task_named(task)
    if version not in ("auto", "iii", "iv"):
        raise EdgeclinError(f"unknown --version {version!r} (auto, iii or iv)")
    notes, admissions, output = Path(notes), Path(admissions), Path(output)
    codes = _code_table_path(spec, diagnoses, procedures)
    if output.exists() and not overwrite:
        raise EdgeclinError(f"output folder {output} already exists (use --overwrite to replace it)")
    version = detect_version(notes, admissions, codes, version)
    if version == "iii" and icd_version != 9:
        raise EdgeclinError("MIMIC-III is coded in ICD-9 only: --icd-version 10 needs MIMIC-IV")

    admission_table = _read_admissions(admissions, spec, progress)
    code_labels, other_version, code_rows = _read_task_codes(spec, codes, version, icd_version, progress)
    counts = Counts()
    sources = [notes, admissions] + ([codes] if codes else [])

    def build(folder: Path) -> None:
        _stream_notes(notes, version, spec, seed, admission_table, code_labels, other_version, counts, folder,
                      progress)
        _check_built(notes, counts)
        remove_unseen = spec.multi_label and not keep_unseen_codes
        if remove_unseen:
            _remove_unseen_codes(folder, counts)
        record = {
            "task": spec.name, "description": spec.description, "release": RELEASE[version], "seed": seed,
            "icd_version": icd_version if spec.multi_label else None,
            "command": command or command_line(),
            "sources": {str(path): path.stat().st_size for path in sources},
            "admissions_in_table": len(admission_table), "code_rows_used": code_rows if codes else None,
            **_count_record(counts),
            "unseen_codes_removed": dict(counts.unseen) if remove_unseen else None,
            "dropped_admissions": dict(counts.dropped.most_common()),
            "notes": dict(counts.notes),
        }
        (folder / "build.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        (folder / "README.md").write_text(_readme(spec, record, counts, sources, output), encoding="utf-8")

    write_atomically(output, overwrite, build)
    return MimicResult(output=output, version=version, rows={name: counts.rows[name] for name in SPLITS},
                       dropped=dict(counts.dropped))


def _code_table_path(task: MimicTask, diagnoses: str | Path | None, procedures: str | Path | None) -> Path | None:
    """The code table a task's labels come from (None for mp and los); an error when it was not given."""
    if task.code_table is None:
        return None
    given = {DIAGNOSES.name: diagnoses, PROCEDURES.name: procedures}[task.code_table.name]
    if given is None:
        raise EdgeclinError(f"--task {task.name} needs the {task.code_table.table} table: "
                            f"give it with {task.code_table.option}")
    return Path(given)


def _read_task_codes(task: MimicTask, codes: Path | None, version: str, icd_version: int,
                     progress: bool) -> tuple[dict[int, str], set[int], int]:
    """A dia/pro task's code labels, as _read_codes gives them; nothing for mp and los."""
    if codes is None or task.code_table is None:
        return {}, set(), 0
    return _read_codes(codes, task.code_table, version, icd_version, progress)


def _check_built(notes: Path, counts: Counts) -> None:
    """Fail, with a hint where one helps, when no admission made it into any split."""
    if sum(counts.rows.values()):
        return
    hint = ""
    if counts.notes["HADM_ID not in the admissions file"]:
        hint = ": no discharge summary's HADM_ID is in the admissions file; are they from the same release?"
    raise EdgeclinError(f"{notes}: no admission could be built{hint} "
                        f"({counts.notes['rows read']} notes read, "
                        f"{counts.notes['discharge summaries']} discharge summaries)")


def _count_record(counts: Counts) -> dict[str, dict]:
    """build.json's rows, patients and labels per split."""
    return {
        "rows": {name: counts.rows[name] for name in SPLITS},
        "patients": {name: len(counts.patients[name]) for name in SPLITS},
        "labels": {name: dict(sorted(counts.labels[name].items())) for name in SPLITS},
    }


# ---------------------------------------------------------------- streaming the notes


@contextmanager
def _split_writers(folder: Path) -> Iterator[dict[str, Any]]:
    """A CSV writer per split, its header row written; the files are closed however the block ends."""
    handles = {name: (folder / f"{name}.csv").open("w", newline="", encoding="utf-8") for name in SPLITS}
    try:
        writers = {name: csv.writer(handle) for name, handle in handles.items()}
        for writer in writers.values():
            writer.writerow(["text", "label"])
        yield writers
    finally:
        for handle in handles.values():
            handle.close()


def _is_report(row: list[str], col: dict[str, int], version: str, counts: Counts) -> bool:
    """Whether a notes row is a discharge summary's report, the only notes used; counts what is skipped."""
    if version == "iii":
        if row[col["CATEGORY"]].strip() != "Discharge summary":
            return False
        counts.notes["discharge summaries"] += 1
        if row[col["DESCRIPTION"]].strip() != "Report":
            counts.notes["addenda skipped (only reports are used)"] += 1
            return False
        if row[col["ISERROR"]].strip() == "1":
            counts.notes["reports marked ISERROR, skipped"] += 1
            return False
        return True
    if row[col["note_type"]].strip() != "DS":
        return False
    counts.notes["discharge summaries"] += 1
    return True


@dataclass
class _AdmissionWriter:
    """Takes the reports in file order and writes each admission's row to its split, once."""

    task: MimicTask
    seed: int
    admissions: dict[int, tuple[int, str | None, str | None]]
    code_labels: dict[int, str]
    other_version: set[int]
    counts: Counts
    writers: dict[str, Any]
    # admissions written, or dropped for a reason of the admission itself
    settled: set[int] = field(default_factory=set)
    without_sections: set[int] = field(default_factory=set)

    def take(self, hadm: int, note: str) -> None:
        """One report of admission ``hadm``: write its row, or count why not."""
        counts = self.counts
        if hadm in self.settled:
            counts.notes["further reports of an admission already used or dropped"] += 1
            return
        admission = self.admissions.get(hadm)
        if admission is None:
            counts.notes["HADM_ID not in the admissions file"] += 1
            return
        subject, label, reason = admission
        if reason is None and self.task.code_table is not None:
            label, reason = self._code_label(hadm, self.task.code_table)
        if reason is not None:
            counts.dropped[reason] += 1
            self.settled.add(hadm)
            return
        text = admission_text(note)
        if text is None:
            self.without_sections.add(hadm)
            return
        split = split_of(subject, self.seed)
        self.writers[split].writerow([text, label])
        self.settled.add(hadm)
        counts.add_row(split, subject, label, self.task.multi_label)  # type: ignore[arg-type]

    def _code_label(self, hadm: int, table: CodeTable) -> tuple[str | None, str | None]:
        """(the admission's codes, None), or (None, why it has none)."""
        label = self.code_labels.get(hadm)
        if label is not None:
            return label, None
        if hadm in self.other_version:
            return None, "coded in the other ICD version only (see --icd-version)"
        return None, f"no {table.noun} codes"

    def finish(self) -> None:
        """Count the admissions none of whose reports had an admission-time section."""
        never = self.without_sections - self.settled
        if never:
            self.counts.dropped["no chief complaint, present illness or medical history section"] = len(never)


def _stream_notes(notes: Path, version: str, task: MimicTask, seed: int,
                  admissions: dict[int, tuple[int, str | None, str | None]], code_labels: dict[int, str],
                  other_version: set[int], counts: Counts, folder: Path, progress: bool) -> None:
    """Read the notes file once, row by row, writing each usable admission straight to its split."""
    fmt = NOTES_FORMATS[version]
    with _split_writers(folder) as writers:
        sink = _AdmissionWriter(task, seed, admissions, code_labels, other_version, counts, writers)
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
                    if not _is_report(row, col, version, counts):
                        continue
                    hadm = _int_value(row[hadm_col], notes, reader.line_num, header[hadm_col])
                    if hadm is None:
                        counts.notes["reports without HADM_ID, skipped"] += 1
                        continue
                    sink.take(hadm, row[text_col])
            except csv.Error as exc:
                raise EdgeclinError(f"{notes}, line {reader.line_num}: malformed CSV ({exc})") from None
            except (EOFError, OSError) as exc:  # a truncated or corrupt .gz
                raise EdgeclinError(f"{notes}, line {reader.line_num}: cannot read further ({exc})") from None
    sink.finish()


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


# ---------------------------------------------------------------- the README


def _readme(task: MimicTask, record: dict, counts: Counts, sources: list[Path], output: Path) -> str:
    """The README.md of a built folder: the task, how it was built, the counts and what was left out."""
    lines = _readme_intro(task, record, sources) + _readme_rows(record) + ["## Labels", ""]
    lines += _readme_code_labels(record, counts) if task.multi_label else _readme_class_labels(task, counts)
    lines += _readme_left_out(record, counts) + _readme_train(task, output)
    return "\n".join(lines)


def _readme_intro(task: MimicTask, record: dict, sources: list[Path]) -> list[str]:
    """The title, the command and sources, what a row holds, and the split."""
    return [
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
        task.readme_label(record["icd_version"]),
        "",
        f"Split by patient (`SUBJECT_ID`), 70/10/20 by a hash of the patient id and seed {record['seed']}: "
        "no patient is in two splits.",
        "",
    ]


def _readme_rows(record: dict) -> list[str]:
    """Admissions and patients per split, with a warning for an empty split."""
    rows = [[name, f"{record['rows'][name]:,}", f"{record['patients'][name]:,}"] for name in SPLITS]
    rows.append(["total", f"{sum(record['rows'].values()):,}", f"{sum(record['patients'].values()):,}"])
    lines = ["## Rows", "", markdown_table(["split", "admissions", "patients"], rows), ""]
    empty = [name for name in SPLITS if not record["rows"][name]]
    if empty:
        lines += [f"**Warning:** no admission in {', '.join(empty)}: too few patients for a 70/10/20 split.", ""]
    return lines


def _readme_code_labels(record: dict, counts: Counts) -> list[str]:
    """dia/pro: codes per split, the most frequent codes, and the codes taken out for not being in train."""
    train_codes = set(counts.labels["train"])
    rows = []
    for name in SPLITS:
        n = counts.rows[name]
        mean = counts.codes_per_row[name] / n if n else 0.0
        unseen = len(set(counts.labels[name]) - train_codes) if name != "train" else 0
        rows.append([name, f"{len(counts.labels[name]):,}", f"{mean:.1f}", f"{unseen:,}"])
    lines = [markdown_table(["split", "distinct codes", "codes per admission", "codes not in train"], rows),
             "", f"The {TOP_CODES} most frequent codes (admissions with the code):", ""]
    total = Counter()
    for name in SPLITS:
        total.update(counts.labels[name])
    rows = [[code, *(f"{counts.labels[name][code]:,}" for name in SPLITS)] for code, _ in total.most_common(TOP_CODES)]
    lines += [markdown_table(["code", *SPLITS], rows), "", "Every code's count per split is in `build.json`.", ""]
    removed = record["unseen_codes_removed"]
    if removed is None:
        return [*lines, "Codes that never occur in train were kept in valid/test labels (`--keep-unseen-codes`).", ""]
    return [*lines, "Codes that never occur in train were taken out of the valid and test labels (no classifier "
            "output exists for them); an admission left with no code was dropped:", "",
            markdown_table(["", "count"], [[what, f"{n:,}"] for what, n in sorted(removed.items())]), ""]


def _readme_class_labels(task: MimicTask, counts: Counts) -> list[str]:
    """mp/los: each label's admissions (and share) per split."""
    rows = []
    for label in task.sorted_labels({label for name in SPLITS for label in counts.labels[name]}):
        cells = []
        for name in SPLITS:
            n = counts.rows[name]
            k = counts.labels[name][label]
            cells.append(f"{k:,} ({100 * k / n:.1f}%)" if n else "0")
        rows.append([f"`{label}`", *cells])
    return [markdown_table(["label", *SPLITS], rows), ""]


def _readme_left_out(record: dict, counts: Counts) -> list[str]:
    """The admissions left out, by reason, and what happened to the rows of the notes file."""
    lines = ["## Left out", "", f"Admissions in the admissions table: {record['admissions_in_table']:,}. "
             "Admissions with a discharge summary that were left out, and why:", ""]
    dropped = [[reason, f"{n:,}"] for reason, n in counts.dropped.most_common()] or [["(none)", "0"]]
    lines += [markdown_table(["reason", "admissions"], dropped), "", "Rows of the notes file:", ""]
    return [*lines, markdown_table(["", "notes"], [[what, f"{n:,}"] for what, n in counts.notes.items()]), ""]


def _readme_train(task: MimicTask, output: Path) -> list[str]:
    """How to train on the folder, and the data use agreement."""
    flags = " --multi-label" if task.multi_label else ""
    return [
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
