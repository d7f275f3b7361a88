"""``edgeclin data i2b2``: the i2b2/n2c2 2010, 2012 and 2014 NER releases as BIO-tagged JSONL.

Output: ``train.jsonl``, ``valid.jsonl`` and ``test.jsonl``, one sentence per line as
``{"tokens": [...], "tags": [...]}`` with tags ``B-<type>``, ``I-<type>`` and ``O`` (the format of
``../shared/data/ncbi_disease``), plus README.md (entity counts per type and split) and build.json.

Input layout: ``--input DIR`` holds ``DIR/train/`` and ``DIR/test/``, the training and test
releases unpacked as they ship (any sub-folders; files are found recursively). ``valid`` is a
deterministic ``--valid-fraction`` (10%) of the training *documents*, chosen by a hash of each
document's path and ``--seed``; the test set stays as released.

* 2010 (concepts): ``.txt`` files (one sentence per line, tokens separated by spaces) and
  ``.con`` files of the same name (``c="the patient's pain" 5:3 5:6||t="problem"``: line 1-based,
  token 0-based, end inclusive). Types ``problem``, ``test``, ``treatment`` as written.
  A ``.txt`` without a ``.con`` (the unannotated part of the release) is skipped and counted.
* 2012 (temporal relations): ``<ClinicalNarrativeTemporalAnnotation>`` XML (for the test set,
  the ``ground_truth/merged_xml`` files); ``EVENT`` tags
  (types PROBLEM, TEST, TREATMENT, CLINICAL_DEPT, EVIDENTIAL, OCCURRENCE) and ``TIMEX3`` tags
  (DATE, TIME, DURATION, FREQUENCY), by their ``type`` attribute. Offsets are characters, end
  exclusive, but some released files count from 1: each span is checked against the tag's
  ``text`` attribute and, if it does not match, the span one character earlier is tried (then
  one earlier start only, then one later); the shifts used are counted in the README.
* 2014 (de-identification): ``<deIdi2b2>`` XML; every tag with ``start``/``end`` (NAME,
  LOCATION, DATE, ...); the entity type is the ``TYPE`` attribute (DOCTOR, PATIENT, HOSPITAL,
  ...: 23 types), or with ``--categories`` the element name (7 categories). Offsets are checked
  against the ``text`` attribute strictly.

Several released 2012 files are not well-formed XML (an unescaped ``&`` in an attribute), so
the XML is read with a tolerant pattern rather than an XML parser: the text is the CDATA of
``<TEXT>`` exactly as stored (so that offsets keep their meaning), tags are the self-closing
elements after it, attribute values are HTML-unescaped.

Tokens for the XML years: each line of the text is a sentence; tokens are ``\\w+|[^\\w\\s]``
(runs of letters and digits, or single punctuation marks). An entity tags every token it
overlaps; if it cuts a token, the whole token is tagged (counted as "widened"). An entity
spanning lines starts with ``B-`` on each line (counted). Where entities overlap, the one
starting first (the longer at equal starts) is kept and the other counted as dropped: BIO
cannot hold both.

Errors name the file and line: an annotation outside its text, a ``.con`` line that does not
parse, an annotation whose text does not match its span (``--skip-bad-annotations`` drops and
counts such annotations instead).
"""

from __future__ import annotations

import bisect
import html
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edgeclin.builders import SPLITS, command_line, markdown_table, unit_interval, write_atomically
from edgeclin.errors import EdgeclinError

YEARS = {
    2010: "i2b2 2010 concepts (problem, test, treatment)",
    2012: "i2b2 2012 temporal relations: events and temporal expressions",
    2014: "i2b2/UTHealth 2014 de-identification: protected health information",
}
TOKEN = re.compile(r"\w+|[^\w\s]")
CON_LINE = re.compile(r'c="(.*)"\s+(\d+):(\d+)\s+(\d+):(\d+)\s*\|\|\s*t="([^"]*)"\s*')
CDATA = re.compile(r"<TEXT>\s*<!\[CDATA\[(.*?)\]\]>\s*</TEXT>", re.S)
ELEMENT = re.compile(r"<([A-Za-z_][\w.-]*)\s(.*?)/>", re.S)
ATTRIBUTE = re.compile(r'([A-Za-z_][\w.-]*)\s*=\s*"(.*?)"(?=\s+[A-Za-z_][\w.-]*\s*=\s*"|\s*$)', re.S)
SHIFTS_2012 = ((0, 0), (-1, -1), (-1, 0), (1, 1))


@dataclass
class Stats:
    documents: Counter = field(default_factory=Counter)
    sentences: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    entities: dict[str, Counter] = field(default_factory=lambda: {name: Counter() for name in SPLITS})
    notes: Counter = field(default_factory=Counter)  # adjustments and skips, for the README
    found: Counter = field(default_factory=Counter)  # entities tagged in the current document, by type


@dataclass
class Span:
    start: int  # characters (XML years) or tokens (2010), end exclusive
    end: int
    label: str
    where: str  # "file, line N" for messages


def _read(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # every byte is a character: offsets stay countable


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _bad(message: str, skip: bool, stats: Stats, reason: str) -> None:
    if not skip:
        raise EdgeclinError(message + " (--skip-bad-annotations drops such annotations)")
    stats.notes[f"annotations dropped: {reason}"] += 1


# ---------------------------------------------------------------- 2010


def read_2010(txt: Path, con: Path, skip_bad: bool, stats: Stats) -> list[tuple[list[str], list[str]]]:
    lines = [line.split() for line in _read(txt).split("\n")]
    if lines and not lines[-1]:
        lines.pop()  # the final newline
    tags = [["O"] * len(tokens) for tokens in lines]
    spans: list[tuple[int, Span]] = []
    for number, raw in enumerate(_read(con).splitlines(), start=1):
        if not raw.strip():
            continue
        match = CON_LINE.fullmatch(raw.strip())
        where = f"{con}, line {number}"
        if not match:
            raise EdgeclinError(f"{where}: cannot parse concept line (expected c=\"...\" LINE:TOKEN LINE:TOKEN"
                                f"||t=\"TYPE\"): {raw.strip()[:80]!r}")
        text, l1, t1, l2, t2, label = match.groups()
        l1, t1, l2, t2 = int(l1), int(t1), int(l2), int(t2)
        if l1 != l2:
            _bad(f"{where}: concept spans lines {l1} to {l2} of {txt.name}; BIO tags one line at a time",
                 skip_bad, stats, "spans lines")
            continue
        if not 1 <= l1 <= len(lines):
            _bad(f"{where}: concept points to line {l1}, but {txt.name} has {len(lines)} lines",
                 skip_bad, stats, "outside the text")
            continue
        tokens = lines[l1 - 1]
        if not 0 <= t1 <= t2 < len(tokens):
            _bad(f"{where}: concept points to tokens {t1}-{t2} of line {l1}, but that line of {txt.name} has "
                 f"{len(tokens)} tokens", skip_bad, stats, "outside the text")
            continue
        covered = " ".join(tokens[t1:t2 + 1])
        if _norm(covered) != _norm(text):
            _bad(f"{where}: concept text {text!r} does not match tokens {t1}-{t2} of line {l1} of {txt.name}, "
                 f"which read {covered!r}", skip_bad, stats, "text does not match the span")
            continue
        if not label.strip():
            _bad(f"{where}: concept has no type", skip_bad, stats, "no type")
            continue
        spans.append((l1 - 1, Span(t1, t2 + 1, label.strip(), where)))
    # the longer first at equal starts, so a nested concept is the one dropped
    for line, span in sorted(spans, key=lambda item: (item[0], item[1].start, -item[1].end)):
        row = tags[line]
        if any(tag != "O" for tag in row[span.start:span.end]):
            stats.notes["overlapping annotations dropped"] += 1
            continue
        row[span.start] = f"B-{span.label}"
        for i in range(span.start + 1, span.end):
            row[i] = f"I-{span.label}"
        stats.found[span.label] += 1
    return [(tokens, row) for tokens, row in zip(lines, tags, strict=True) if tokens]


# ---------------------------------------------------------------- 2012 and 2014 (XML)


def _line_of(raw: str, offset: int) -> int:
    return raw.count("\n", 0, offset) + 1


def read_xml(path: Path, year: int, categories: bool, skip_bad: bool,
             stats: Stats) -> list[tuple[list[str], list[str]]]:
    raw = _read(path)
    cdata = CDATA.search(raw)
    if not cdata:
        raise EdgeclinError(f"{path}: no <TEXT><![CDATA[...]]></TEXT> element: not an i2b2 {year} XML file")
    text = cdata.group(1)
    _check_year(path, year, {element.group(1) for element in ELEMENT.finditer(raw, cdata.end())})
    spans: list[Span] = []
    for element in ELEMENT.finditer(raw, cdata.end()):
        name = element.group(1)
        attributes = {key: html.unescape(value) for key, value in ATTRIBUTE.findall(element.group(2).strip())}
        if year == 2012 and name not in ("EVENT", "TIMEX3"):
            continue  # TLINK and SECTIME: relations and section times, not entities
        if "start" not in attributes or "end" not in attributes:
            continue
        where = f"{path}, line {_line_of(raw, element.start())}"
        label = attributes.get("type", "") if year == 2012 else (name if categories else attributes.get("TYPE", ""))
        described = f"<{name} id=\"{attributes.get('id', '?')}\">"
        if not label.strip():
            _bad(f"{where}: {described} has no {'type' if year == 2012 else 'TYPE'} attribute", skip_bad, stats,
                 "no type")
            continue
        try:
            start, end = int(attributes["start"]), int(attributes["end"])
        except ValueError:
            raise EdgeclinError(f"{where}: {described} has non-numeric offsets start={attributes['start']!r} "
                                f"end={attributes['end']!r}") from None
        if not 0 <= start < end <= len(text) + (1 if year == 2012 else 0):
            _bad(f"{where}: {described} span {start}-{end} is outside the text ({len(text)} characters)",
                 skip_bad, stats, "outside the text")
            continue
        wanted = attributes.get("text")
        shifts = SHIFTS_2012 if year == 2012 else ((0, 0),)
        if wanted is not None:
            for ds, de in shifts:
                s, e = start + ds, end + de
                if 0 <= s < e <= len(text) and _norm(text[s:e]) == _norm(wanted):
                    break
            else:
                _bad(f"{where}: {described} text {wanted!r} does not match its span {start}-{end}, which holds "
                     f"{text[start:end]!r}", skip_bad, stats, "text does not match the span")
                continue
            if (ds, de) != (0, 0):
                stats.notes[f"offsets shifted by ({ds:+d}, {de:+d}) to match the text attribute"] += 1
            start, end = s, e
        elif end > len(text):
            _bad(f"{where}: {described} span {start}-{end} is outside the text ({len(text)} characters)",
                 skip_bad, stats, "outside the text")
            continue
        spans.append(Span(start, end, label.strip(), where))
    return _tag_characters(text, spans, stats)


TEMPORAL_ELEMENTS = {"EVENT", "TIMEX3"}  # 2012; 2014's elements are the PHI categories (NAME, DATE, ...)


def _check_year(path: Path, year: int, elements: set[str]) -> None:
    """The two XML releases look alike; their annotation elements do not. A file of the other year is refused."""
    temporal, other = elements & TEMPORAL_ELEMENTS, elements - TEMPORAL_ELEMENTS - {"TLINK", "SECTIME", "TAGS"}
    if year == 2012 and other and not temporal:
        raise EdgeclinError(f"{path} has no EVENT or TIMEX3 annotation but {', '.join(sorted(other)[:4])}: it looks "
                            "like the 2014 de-identification release (--year 2014)")
    if year == 2014 and temporal:
        raise EdgeclinError(f"{path} has EVENT/TIMEX3 annotations: it looks like the 2012 temporal release "
                            "(--year 2012)")


def _tag_characters(text: str, spans: list[Span], stats: Stats) -> list[tuple[list[str], list[str]]]:
    """Sentences (lines) of regex tokens, BIO-tagged from character spans."""
    sentences: list[tuple[list[str], list[str]]] = []
    starts: list[int] = []  # every token's start, in order, for bisect
    ends: list[int] = []
    where: list[tuple[int, int]] = []  # (sentence, token) of each token
    offset = 0
    for line in text.split("\n"):
        tokens = [(m.start() + offset, m.end() + offset, m.group()) for m in TOKEN.finditer(line)]
        if tokens:
            for i, (s, e, _) in enumerate(tokens):
                starts.append(s)
                ends.append(e)
                where.append((len(sentences), i))
            sentences.append(([t for _, _, t in tokens], ["O"] * len(tokens)))
        offset += len(line) + 1
    for span in sorted(spans, key=lambda sp: (sp.start, -sp.end)):
        first = bisect.bisect_right(ends, span.start)  # first token ending after the span starts
        last = bisect.bisect_left(starts, span.end)  # tokens before this start before the span ends
        covered = range(first, last)
        if not covered:
            stats.notes["annotations over whitespace only, dropped"] += 1
            continue
        if any(sentences[where[i][0]][1][where[i][1]] != "O" for i in covered):
            stats.notes["overlapping annotations dropped"] += 1
            continue
        if starts[first] < span.start or ends[last - 1] > span.end:
            stats.notes["annotations widened to whole tokens"] += 1
        if where[first][0] != where[last - 1][0]:
            stats.notes["annotations spanning lines (B- again on each line)"] += 1
        previous_sentence = -1
        for i in covered:
            sentence, token = where[i]
            tags = sentences[sentence][1]
            tags[token] = f"{'B' if sentence != previous_sentence else 'I'}-{span.label}"
            previous_sentence = sentence
        stats.found[span.label] += 1
    return sentences


# ---------------------------------------------------------------- documents and the build


@dataclass
class Document:
    key: str  # path relative to --input, without suffix: the hash key for the valid split
    split: str  # train or test, as released
    path: Path
    annotations: Path | None = None  # the .con file (2010)


def find_documents(folder: Path, year: int, stats: Stats) -> list[Document]:
    if not folder.is_dir():
        raise EdgeclinError(f"--input folder not found: {folder}")
    missing = [name for name in ("train", "test") if not (folder / name).is_dir()]
    if missing:
        present = ", ".join(sorted(p.name for p in folder.iterdir() if p.is_dir())) or "none"
        raise EdgeclinError(f"{folder}: no {' or '.join(f'{m}/' for m in missing)} folder; put the released "
                            f"training files under {folder}/train/ and the test files under {folder}/test/ "
                            f"(sub-folders present: {present})")
    documents = []
    for split in ("train", "test"):
        root = folder / split
        if year == 2010:
            cons: dict[str, Path] = {}
            for con in sorted(root.rglob("*.con")):
                if con.stem in cons:
                    raise EdgeclinError(f"{root}: two .con files named {con.name}: {cons[con.stem]} and {con}")
                cons[con.stem] = con
            texts = sorted(root.rglob("*.txt"))
            for txt in texts:
                con = cons.pop(txt.stem, None)
                if con is None:
                    stats.notes[".txt files without a .con file, skipped"] += 1
                    continue
                key = str(txt.relative_to(folder).with_suffix(""))
                documents.append(Document(key, split, txt, con))
            if cons:
                stats.notes[".con files without a .txt file, skipped"] += len(cons)
            found = [d for d in documents if d.split == split]
            if not found:
                raise EdgeclinError(f"{root}: no .txt file with a .con file of the same name (i2b2 2010 layout)")
        else:
            found = [Document(str(p.relative_to(folder).with_suffix("")), split, p)
                     for p in sorted(root.rglob("*.xml"))]
            if not found:
                raise EdgeclinError(f"{root}: no .xml files (i2b2 {year} layout)")
            documents += found
        seen: dict[str, Path] = {}
        for document in found:
            # a release unpacked with two versions of each file (2012's merged_xml and unmerged_xml)
            # would put every document in twice
            other = seen.setdefault(document.path.name, document.path)
            if other != document.path:
                raise EdgeclinError(f"{root}: two files named {document.path.name} ({other} and {document.path}); "
                                    "keep one copy of each document (for 2012's test set: ground_truth/merged_xml)")
    return documents


def assign_valid(documents: list[Document], fraction: float, seed: int) -> dict[str, str]:
    """Document key -> output split: test as released; a hashed ``fraction`` of train documents -> valid."""
    train = [d.key for d in documents if d.split == "train"]
    count = round(fraction * len(train)) if len(train) > 1 else 0
    if fraction > 0 and len(train) > 1:
        count = min(max(count, 1), len(train) - 1)
    held = set(sorted(train, key=lambda key: unit_interval(seed, f"i2b2-doc-{key}"))[:count])
    return {d.key: ("valid" if d.key in held else d.split) for d in documents}


@dataclass
class I2b2Result:
    output: Path
    documents: dict[str, int]
    sentences: dict[str, int]
    entities: dict[str, dict[str, int]]


def build_i2b2(
    year: int,
    input_dir: str | Path,
    output: str | Path,
    *,
    seed: int = 42,
    valid_fraction: float = 0.1,
    categories: bool = False,
    skip_bad_annotations: bool = False,
    overwrite: bool = False,
    command: str | None = None,
) -> I2b2Result:
    """Convert one i2b2/n2c2 release to ``output/{train,valid,test}.jsonl`` plus README.md and build.json."""
    if year not in YEARS:
        raise EdgeclinError(f"unknown --year {year} (2010, 2012 or 2014)")
    if not 0 <= valid_fraction < 1:
        raise EdgeclinError(f"--valid-fraction must be at least 0 and below 1, got {valid_fraction}")
    if categories and year != 2014:
        raise EdgeclinError("--categories applies to --year 2014 only")
    input_dir, output = Path(input_dir), Path(output)
    if output.exists() and not overwrite:
        raise EdgeclinError(f"output folder {output} already exists (use --overwrite to replace it)")
    stats = Stats()
    documents = find_documents(input_dir, year, stats)
    splits = assign_valid(documents, valid_fraction, seed)

    def build(folder: Path) -> None:
        handles = {name: (folder / f"{name}.jsonl").open("w", encoding="utf-8") for name in SPLITS}
        try:
            for document in documents:
                split = splits[document.key]
                local = Stats()
                if year == 2010:
                    sentences = read_2010(document.path, document.annotations, skip_bad_annotations, local)
                else:
                    sentences = read_xml(document.path, year, categories, skip_bad_annotations, local)
                for tokens, tags in sentences:
                    handles[split].write(json.dumps({"tokens": tokens, "tags": tags}, ensure_ascii=False) + "\n")
                stats.documents[split] += 1
                stats.sentences[split] += len(sentences)
                stats.tokens[split] += sum(len(tokens) for tokens, _ in sentences)
                stats.entities[split].update(local.found)
                stats.notes.update(local.notes)
        finally:
            for handle in handles.values():
                handle.close()
        record = {
            "year": year, "description": YEARS[year], "seed": seed, "valid_fraction": valid_fraction,
            "labels": "element names (categories)" if categories else "type attribute",
            "command": command or command_line(), "input": str(input_dir),
            "documents": {name: stats.documents[name] for name in SPLITS},
            "sentences": {name: stats.sentences[name] for name in SPLITS},
            "tokens": {name: stats.tokens[name] for name in SPLITS},
            "entities": {name: dict(sorted(stats.entities[name].items())) for name in SPLITS},
            "adjustments": dict(sorted(stats.notes.items())),
        }
        (folder / "build.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        (folder / "README.md").write_text(_readme(record, stats, output), encoding="utf-8")

    write_atomically(output, overwrite, build)
    return I2b2Result(output=output, documents={n: stats.documents[n] for n in SPLITS},
                      sentences={n: stats.sentences[n] for n in SPLITS},
                      entities={n: dict(stats.entities[n]) for n in SPLITS})


def _readme(record: dict, stats: Stats, output: Path) -> str:
    lines = [
        f"# {record['description']}: BIO-tagged sentences",
        "",
        "Built by edgeclin (`edgeclin data i2b2`) with:",
        "",
        f"    {record['command']}",
        "",
        "One sentence per line of `train.jsonl`, `valid.jsonl` and `test.jsonl`: "
        '`{"tokens": [...], "tags": [...]}`, tags `B-<type>`, `I-<type>` and `O`. The test set is the '
        f"released test set; valid is {100 * record['valid_fraction']:.0f}% of the released training documents "
        f"(chosen by a hash of each document's path and seed {record['seed']}), the rest is train. "
        "Tokenisation, offsets and every adjustment are documented in `edgeclin/builders/i2b2.py`.",
        "",
        "## Splits",
        "",
        markdown_table(["split", "documents", "sentences", "tokens", "entities"],
                       [[name, f"{record['documents'][name]:,}", f"{record['sentences'][name]:,}",
                         f"{record['tokens'][name]:,}", f"{sum(stats.entities[name].values()):,}"]
                        for name in SPLITS]),
        "",
        "## Entities per type",
        "",
    ]
    types = sorted({label for name in SPLITS for label in stats.entities[name]})
    rows = [[f"`{label}`", *(f"{stats.entities[name][label]:,}" for name in SPLITS)] for label in types]
    lines += [markdown_table(["type", *SPLITS], rows or [["(none)", "0", "0", "0"]]), "", "## Adjustments", ""]
    adjustments = [[what, f"{n:,}"] for what, n in sorted(stats.notes.items())] or [["(none)", "0"]]
    lines += [
        markdown_table(["", "count"], adjustments),
        "",
        "## Data use",
        "",
        "This folder is derived from an n2c2 (formerly i2b2) release and is covered by its data use",
        "agreement: keep it where the release may be kept, and do not share it.",
        "",
    ]
    return "\n".join(lines)
