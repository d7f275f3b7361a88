"""Does `edgeclin data mimic` stream? Time and peak memory on a 1 GB NOTEEVENTS-format file.

Generates SYNTHETIC MIMIC-III tables (tests/builder_fixtures.py: a NOTEEVENTS.csv of
``--size-mb`` with ~53,000 admissions per GB, as many as the whole of MIMIC-III, and matching
ADMISSIONS and DIAGNOSES_ICD) in a scratch folder outside the repository, runs
``edgeclin data mimic --task dia`` on it as a child process, and reads that process's peak
resident memory from ``os.wait4`` (the kernel's accounting of the child alone). The memory
must stay far below the file size: under 1 GB for a 1 GB file. The scratch folder is deleted
afterwards. Writes benchmarks/results/mimic_streaming.{json,md}.

    .venv/bin/python benchmarks/mimic_streaming.py                 # 1024 MB, about 2 minutes on 2 cores
    .venv/bin/python benchmarks/mimic_streaming.py --size-mb 100   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LIMIT_MB = 1024


def run_measured(command: list[str]) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak RSS in MiB) of that process alone."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(command)}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1024)
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "edgeclin-mimic-streaming",
                        help="Where the generated files go (deleted afterwards).")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from edgeclin.hardware import cpu_model

    shutil.rmtree(args.scratch, ignore_errors=True)
    source, output = args.scratch / "mimic", args.scratch / "mimic-dia"
    try:
        started = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "tests" / "builder_fixtures.py"), "mimic-large", "--size-mb",
                        str(args.size_mb), str(source)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        generate_s = time.perf_counter() - started
        notes_mb = (source / "NOTEEVENTS.csv").stat().st_size / 1e6
        wall, peak = run_measured([sys.executable, "-m", "edgeclin", "data", "mimic",
                                   "--notes", str(source / "NOTEEVENTS.csv"),
                                   "--admissions", str(source / "ADMISSIONS.csv"),
                                   "--diagnoses", str(source / "DIAGNOSES_ICD.csv"),
                                   "--task", "dia", "-o", str(output), "--quiet"])
        built = json.loads((output / "build.json").read_text())
    finally:
        shutil.rmtree(args.scratch, ignore_errors=True)
    result = {
        "notes_file_mb": round(notes_mb, 1),
        "notes_rows": built["notes"]["rows read"],
        "admissions": built["admissions_in_table"],
        "rows_written": sum(built["rows"].values()),
        "wall_s": round(wall, 1),
        "mb_per_s": round(notes_mb / wall, 1),
        "peak_rss_mib": round(peak, 1),
        "limit_mib": LIMIT_MB,
        "passed": peak < LIMIT_MB,
        "generate_s": round(generate_s, 1),
        "environment": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mimic_streaming.json").write_text(json.dumps(result, indent=2) + "\n")
    env = result["environment"]
    lines = [
        "| notes file | notes | admissions | rows written | wall time | throughput | peak RSS | limit |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {notes_mb:,.0f} MB | {result['notes_rows']:,} | {result['admissions']:,} | {result['rows_written']:,} | "
        f"{wall:.1f} s | {result['mb_per_s']:.1f} MB/s | {peak:,.0f} MiB | {LIMIT_MB:,} MiB |",
        "",
        f"`edgeclin data mimic --task dia` on SYNTHETIC MIMIC-III-format files; {env['cpu']}, {env['cores']} cores, "
        f"Python {env['python']}.",
    ]
    (RESULTS / "mimic_streaming.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not result["passed"]:
        raise SystemExit(f"peak RSS {peak:.0f} MiB is over {LIMIT_MB} MiB")


if __name__ == "__main__":
    main()
