"""Notes/s of `edgeclin predict` in one process, in two processes on halves, and on Spark (local and a cluster).

The mtsamples test notes are repeated to at least ``--rows`` rows (with an id) and written as
JSONL (what `edgeclin predict` reads) and as a Parquet folder of part files (what Spark jobs
read). Each variant runs in a fresh process (its start-up counted), one after the other:

- ``single``: `edgeclin predict`, one process, every core (``--threads`` = cores);
- ``halves``: two `edgeclin predict` processes at the same time, each on half the rows, one thread each;
- ``spark local[1]``, ``spark local[2]``: `edgeclin predict --spark`, one thread per task (spark.task.cpus);
- ``spark standalone``: the same against a master and two one-core workers on 127.0.0.1 (started
  before, as a cluster would be; tests/spark_cluster.py), one thread per task.

Predictions: the int8 bundle quantises activations per batch, so at ``--batch-size`` 32 a row's
probabilities depend on which rows share its batch (and batches differ between variants). So
every variant also predicts the held rows (the test notes once) at batch size 1, where a row's
prediction depends on nothing else, and those must be identical in every variant; for the big
runs the table gives the share of labels equal to the single-process run's.

While each variant runs, CPU use is sampled from /proc: the cores busy with this benchmark's
processes and with anything else (the machine may be shared), and notes per CPU-second of its
own processes, which other work on the machine disturbs far less than notes/s. Results go to
benchmarks/results/spark_throughput.{json,md}.

    .venv/bin/python benchmarks/spark_throughput.py --bundle /tmp/spark-work/bundle --backend onnxruntime  # ~40 min
    .venv/bin/python benchmarks/spark_throughput.py --bundle B --rows 2000 --out /tmp/x   # a quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests"))  # the standalone cluster the tests start


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="An exported bundle (the results name it).")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mtsamples" / "test.csv")
    parser.add_argument("--rows", type=int, default=50_000, help="At least this many rows (whole repeats).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backend", default="auto", help="As for edgeclin predict (every variant runs the same).")
    parser.add_argument("--parts", type=int, default=8, help="Parquet part files of the Spark input.")
    parser.add_argument("--work", type=Path, default=Path("/tmp/spark-work/bench"), help="Scratch (deleted).")
    parser.add_argument("--out", type=Path, default=RESULTS / "spark_throughput", help="Results, without suffix.")
    parser.add_argument("--note", action="append", default=[], help="A paragraph for the results (how the bundle "
                        "was made, say); repeatable.")
    return parser.parse_args()


# --- data -------------------------------------------------------------------------------------

def prepare_data(source: Path, rows: int, parts: int, work: Path) -> dict[str, Path]:
    """all / halves / held rows as JSONL (for edgeclin predict) and all / held as Parquet folders (for Spark)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with source.open(newline="", encoding="utf-8") as handle:
        held = [r["text"] for r in csv.DictReader(handle)]
    texts = held * math.ceil(rows / len(held))
    paths = {"held_texts": len(held), "rows": len(texts)}
    work.mkdir(parents=True)
    for name, chosen in (("all", texts), ("half1", texts[:len(texts) // 2]), ("half2", texts[len(texts) // 2:]),
                         ("held", held), ("held_half1", held[:len(held) // 2]), ("held_half2", held[len(held) // 2:])):
        paths[name] = work / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps({"text": t}) + "\n" for t in chosen), encoding="utf-8")
    for name, chosen, count in (("all_parquet", texts, parts), ("held_parquet", held, 1)):
        folder = work / f"{name}"
        folder.mkdir()
        step = math.ceil(len(chosen) / count)
        for part, start in enumerate(range(0, len(chosen), step)):
            table = pa.table({"id": list(range(start, min(start + step, len(chosen)))),
                              "text": chosen[start:start + step]})
            pq.write_table(table, folder / f"part-{part:05d}.parquet")
        paths[name] = folder
    return paths


# --- running and sampling ---------------------------------------------------------------------

def _jiffies_of_sessions(sessions: set[int]) -> tuple[int, int]:
    """(CPU ticks of the whole machine, ticks of processes in these sessions) so far."""
    with open("/proc/stat", encoding="ascii") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    machine = sum(fields) - fields[3] - fields[4]  # everything but idle and iowait
    ours = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as handle:
                stat = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[3]) in sessions:  # field 6, the session id (fields counted after the name)
            ours += int(stat[11]) + int(stat[12])  # utime + stime
    return machine, ours


class CpuSampler(threading.Thread):
    """Cores busy, on average, with the given sessions' processes and with everything else."""

    def __init__(self, sessions: set[int], every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.sessions, self.every, self.done = sessions, every, threading.Event()
        self.machine = self.ours = 0
        self.started = time.monotonic()

    def run(self) -> None:
        last = _jiffies_of_sessions(self.sessions)
        while not self.done.wait(self.every):
            now = _jiffies_of_sessions(self.sessions)
            self.machine += max(0, now[0] - last[0])
            self.ours += max(0, now[1] - last[1])  # a process that ended drops out: counted up to its last sample
            last = now

    def result(self) -> dict:
        self.done.set()
        self.join()
        seconds, tick = time.monotonic() - self.started, os.sysconf("SC_CLK_TCK")
        ours = self.ours / tick / seconds
        return {"cores_busy": round(self.machine / tick / seconds, 2), "cores_ours": round(ours, 2),
                "cores_others": round(max(0.0, self.machine / tick / seconds - ours), 2)}


def run_variant(commands: list[list[str]], env: dict, extra_sessions: set[int]) -> dict:
    """Start the commands together (fresh processes); wall time until the last one ends, and CPU use."""
    started = time.perf_counter()
    processes = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  start_new_session=True) for c in commands]
    sampler = CpuSampler({p.pid for p in processes} | extra_sessions)
    sampler.start()
    errors = [p.communicate()[1] for p in processes]
    wall = time.perf_counter() - started
    cpu = sampler.result()
    for process, err in zip(processes, errors, strict=True):
        if process.returncode != 0:
            raise SystemExit(f"failed ({process.returncode}): {' '.join(process.args)}\n{err.decode()[-3000:]}")
    return {"wall_s": round(wall, 2), **cpu}


def predict_command(args, data: Path, output: Path, batch_size: int, threads: int | None = None,
                    master: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "edgeclin", "predict", str(args.bundle), "--data", str(data), "-o", str(output),
               "--batch-size", str(batch_size), "--backend", args.backend, "--quiet"]
    if threads:
        command += ["--threads", str(threads)]
    return command + (["--spark", "--master", master] if master else [])


def variants(args, paths: dict, cluster: str, big: bool) -> list[tuple[str, str, list[list[str]]]]:
    """(name, threads setting, commands) of each variant, on all rows or on the held rows at batch size 1."""
    cores = os.cpu_count() or 1
    out, batch, prefix = args.work / ("big" if big else "held"), args.batch_size if big else 1, "" if big else "held_"
    single = [predict_command(args, paths["all" if big else "held"], out / "single.jsonl", batch, cores)]
    split = [predict_command(args, paths[f"{prefix}half{i}"], out / f"half{i}.jsonl", batch, 1)
             for i in (1, 2)]
    parquet = paths["all_parquet"] if big else paths["held_parquet"]
    spark = [(f"spark {m}", m) for m in ("local[1]", "local[2]")] + [("spark standalone", cluster)]
    return ([("single", f"1 process x {cores} threads", single), ("halves", "2 processes x 1 thread", split)]
            + [(name, "1 thread per task (spark.task.cpus=1)",
                [predict_command(args, parquet, out / f"{name.replace(' ', '_')}.parquet", batch,
                                 master=master)]) for name, master in spark])


# --- predictions ------------------------------------------------------------------------------

def read_predictions(name: str, out: Path, labels: list[str], half: int) -> dict[int, tuple]:
    """id -> (label, probabilities in label order), from edgeclin predict's JSONL or Spark's Parquet."""
    if name.startswith("spark"):
        import pyarrow.parquet as pq

        table = pq.read_table(out / f"{name.replace(' ', '_')}.parquet", columns=["id", "label", "probabilities"])
        return {r["id"]: (r["label"], tuple(dict(r["probabilities"])[k] for k in labels)) for r in table.to_pylist()}
    files = [out / "single.jsonl"] if name == "single" else [out / "half1.jsonl", out / "half2.jsonl"]
    found, offset = {}, 0
    for file in files:
        for i, line in enumerate(file.read_text(encoding="utf-8").splitlines()):
            row = json.loads(line)
            found[offset + i] = (row["label"], tuple(row[f"p_{k}"] for k in labels))
        offset = half
    return found


def compare(reference: dict[int, tuple], found: dict[int, tuple]) -> dict:
    """Every id once; how many labels and probability vectors equal the reference's."""
    same_ids = sorted(found) == sorted(reference)
    labels = sum(found.get(i, (None,))[0] == r[0] for i, r in reference.items())
    exact = sum(found.get(i) == r for i, r in reference.items())
    worst = max((abs(a - b) for i, r in reference.items() if i in found for a, b in zip(r[1], found[i][1],
                                                                                         strict=True)), default=0.0)
    return {"rows": len(found), "every_id_once": same_ids, "labels_equal": labels, "identical_rows": exact,
            "identical": same_ids and exact == len(reference), "max_abs_probability_difference": worst}


# --- the run ----------------------------------------------------------------------------------

def run_all(args, paths: dict, labels: list[str], big: bool, cluster: str, daemons: set[int], env: dict) -> list:
    rows = paths["rows"] if big else paths["held_texts"]
    half = rows // 2
    out = args.work / ("big" if big else "held")
    results, reference = [], None
    for name, threads, commands in variants(args, paths, cluster, big):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        print(f"{'all rows' if big else 'held rows'}: {name} ...", flush=True)
        measured = run_variant(commands, env, daemons if name == "spark standalone" else set())
        found = read_predictions(name, out, labels, half)
        reference = reference or found
        cpu_s = measured["cores_ours"] * measured["wall_s"]  # robust to other work on a shared machine
        results.append({"variant": name, "threads": threads, "rows": rows, **measured,
                        "notes_per_s": round(rows / measured["wall_s"], 2),
                        "notes_per_cpu_s": round(rows / cpu_s, 2) if cpu_s else None,
                        "vs_single": compare(reference, found)})
        print(f"  {results[-1]['notes_per_s']} notes/s, {measured}", flush=True)
    return results


def environment(args, paths: dict) -> dict:
    from edgeclin import runtime
    from edgeclin.artifacts import BundleManifest
    from edgeclin.hardware import cpu_features
    from edgeclin.provenance import git_commit, library_versions

    features = cpu_features()
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    manifest = BundleManifest.read(args.bundle)
    return {"cpu": features.model, "isa": features.isa, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "java": java[0] if java else None, "commit": git_commit(),
            "spark_code_uncommitted": bool(subprocess.run(
                ["git", "status", "--porcelain", "--", "edgeclin/spark", "benchmarks/spark_throughput.py"], cwd=ROOT,
                capture_output=True, text=True).stdout.strip()),
            "versions": library_versions(("edgeclin", "onnxruntime", "openvino", "tokenizers", "numpy", "pyspark",
                                          "pyarrow")),
            "bundle": {"path": str(args.bundle), "chosen": manifest.chosen, "max_length": manifest.input.max_length,
                       "labels": len(manifest.labels), "model": manifest.source.get("model"),
                       "runs_on": runtime.load(args.bundle, threads=1, backend=args.backend).describe()},
            "rows": paths["rows"], "held_rows": paths["held_texts"], "batch_size": args.batch_size,
            "backend": args.backend, "parquet_parts": args.parts, "load_average_before": os.getloadavg()}


TARGETS = {"spark local[2]": 0.8, "spark standalone": 0.75}  # x the notes/s of the two half-data processes


def _notes(rows: list[dict], variant: str) -> float:
    return next(r["notes_per_s"] for r in rows if r["variant"] == variant)


def _table(rows: list[dict]) -> list[str]:
    halves = _notes(rows, "halves")
    lines = ["| variant | threads | rows | wall | notes/s | x halves | cores busy: ours / others | notes per CPU-s "
             "| labels = single | rows identical to single |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        check = r["vs_single"]
        lost = "" if check["every_id_once"] else " (ids lost or repeated!)"
        lines.append(f"| {r['variant']} | {r['threads']} | {r['rows']:,} | {r['wall_s']:.1f} s "
                     f"| {r['notes_per_s']:.1f} | {r['notes_per_s'] / halves:.2f} "
                     f"| {r['cores_ours']:.2f} / {r['cores_others']:.2f} | {r['notes_per_cpu_s'] or 0:.1f} "
                     f"| {check['labels_equal']:,} "
                     f"| {check['identical_rows']:,}{lost} |")
    return lines


def _markdown(record: dict) -> list[str]:
    env, bundle = record["environment"], record["environment"]["bundle"]
    targets = ", ".join(f"{name} {t['ratio']:.2f} (target {t['target']}: {'met' if t['met'] else 'MISSED'})"
                        for name, t in record["targets"].items())
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    return [f"All rows: {env['rows']:,} notes (the {env['held_rows']} mtsamples test notes repeated), batch size "
            f"{env['batch_size']}; each variant in fresh processes, start-up included.", "",
            *_table(record["all_rows"]), "",
            f"Targets (x the two half-data processes together): {targets}.", "",
            f"Held rows: the {env['held_rows']} test notes once, batch size 1 (a row's prediction depends on no "
            f"other row); identical in every variant: {'yes' if record['held_rows_identical'] else 'NO'}. On so few "
            "rows, notes/s is mostly start-up: a Spark job's fixed cost (JVM, executors, Python workers) shows here.",
            "",
            *_table(record["held_rows"]), "",
            f"CPU: {env['cpu']} ({env['cores']} cores; {', '.join(env['isa'])}); {env['java']}; "
            f"Python {env['python']}; {versions}; commit {env['commit']}"
            f"{' (edgeclin/spark not yet committed)' if env['spark_code_uncommitted'] else ''}.",
            f"Bundle: {bundle['chosen']}, max length {bundle['max_length']}, {bundle['labels']} labels "
            f"({bundle['path']}); --backend {env['backend']} runs it on {bundle['runs_on']} here. Load average "
            f"before/after: {env['load_average_before']} / {env['load_average_after']}.",
            *[line for note in record["notes"] for line in ("", note)], "", "Command:", "", "```bash",
            record["command"], "```"]


def write_results(record: dict, out: Path) -> None:
    halves = _notes(record["all_rows"], "halves")
    record["targets"] = {}
    for name, target in TARGETS.items():
        ratio = _notes(record["all_rows"], name) / halves
        record["targets"][name] = {"ratio": round(ratio, 3), "target": target, "met": ratio >= target}
    record["held_rows_identical"] = all(r["vs_single"]["identical"] for r in record["held_rows"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    lines = _markdown(record)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(ROOT))
    from spark_cluster import cluster_environment, standalone_cluster

    from edgeclin.artifacts import BundleManifest

    shutil.rmtree(args.work, ignore_errors=True)
    paths = prepare_data(args.data, args.rows, args.parts, args.work / "data")
    labels = BundleManifest.read(args.bundle).labels
    record = {"environment": environment(args, paths), "notes": args.note,
              "command": shlex.join([".venv/bin/python", *sys.argv])}
    env = dict(cluster_environment(), PYTHONWARNINGS="ignore")
    started: list = []
    try:
        with standalone_cluster(args.work / "cluster", workers=2, cores=1, started=started) as cluster:
            daemons = {p.pid for p in started}  # each its own session, which its executors join
            record["all_rows"] = run_all(args, paths, labels, True, cluster, daemons, env)
            record["held_rows"] = run_all(args, paths, labels, False, cluster, daemons, env)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    record["environment"]["load_average_after"] = os.getloadavg()
    write_results(record, args.out)


if __name__ == "__main__":
    main()
