"""Choose edgeclin's default LoRA and full fine-tuning settings by a small search.

Runs a grid of settings for both methods on two real datasets from ../shared/data,
two runs at a time (one thread each, so the 2-core machine is used fully), and writes
the table to benchmarks/results/search_defaults.{json,md}. Defaults are chosen on
*validation* macro-F1 averaged over the datasets; test scores are shown for reference.

    .venv/bin/python benchmarks/search_defaults.py            # the whole grid (~40 min on 2 cores)
    .venv/bin/python benchmarks/search_defaults.py --only mtsamples

Each dataset is cut (``--limit``) and shortened (``--max-length``) so the grid fits in
an hour on a 2-core CPU; the chosen defaults are then confirmed on full mtsamples runs
(see README, "Defaults").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"

DATASETS = {
    # name: options that keep one run to a few minutes on one core
    "mtsamples": ["--limit", "600", "--max-length", "128", "--epochs", "4"],
    "ade_corpus": ["--limit", "1200", "--max-length", "64", "--epochs", "3"],
}

GRID: list[tuple[str, list[str]]] = []
for lr in ("1e-3", "2e-3", "4e-3", "8e-3"):
    GRID.append((f"lora attention r8 a16 lr{lr}",
                 ["--method", "lora", "--target-modules", "attention", "--lora-r", "8", "--lora-alpha", "16",
                  "--lr", lr]))
for lr in ("1e-3", "2e-3", "4e-3"):  # 4e-3 already diverges on mtsamples: no higher
    GRID.append((f"lora all-linear r4 a8 lr{lr}",
                 ["--method", "lora", "--target-modules", "all-linear", "--lora-r", "4", "--lora-alpha", "8",
                  "--lr", lr]))
GRID.append(("lora paper qkv r8 a8 lr3e-4",
             ["--method", "lora", "--target-modules", "qkv", "--lora-r", "8", "--lora-alpha", "8", "--lr", "3e-4"]))
for lr in ("3e-5", "1e-4", "2e-4", "4e-4"):
    GRID.append((f"full lr{lr}", ["--method", "full", "--lr", lr]))
# does bf16 autocast keep accuracy? the same two settings in fp32 (mtsamples only)
PRECISION_CHECK = [
    ("lora attention r8 a16 lr2e-3 fp32", dict(GRID)["lora attention r8 a16 lr2e-3"] + ["--precision", "fp32"]),
    ("full lr1e-4 fp32", ["--method", "full", "--lr", "1e-4", "--precision", "fp32"]),
]


def run_one(dataset: str, name: str, options: list[str], out_root: Path) -> dict:
    out = out_root / f"{dataset}-{name.replace(' ', '_')}"
    cmd = [sys.executable, "-m", "edgeclin", "train", "--data", str(SHARED / dataset), "--quiet",
           "--overwrite", "-o", str(out), "--seed", "42", *DATASETS[dataset], *options]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    row = {"dataset": dataset, "setting": name, "options": options, "seconds": time.time() - start}
    if proc.returncode != 0:
        row["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        return row
    metrics = json.loads((out / "metrics.json").read_text())
    best = metrics["epochs"][metrics["best_epoch"] - 1]
    row.update(valid_macro_f1=best["valid"]["macro_f1"], test_macro_f1=metrics["test"]["macro_f1"],
               test_accuracy=metrics["test"]["accuracy"], best_epoch=metrics["best_epoch"],
               trainable_percent=metrics["parameters"]["trainable_percent"],
               train_seconds=metrics["training"]["wall_seconds"], precision=metrics["training"]["precision"])
    print(f"{dataset:11s} {name:38s} valid {100 * row['valid_macro_f1']:5.1f} test {100 * row['test_macro_f1']:5.1f}"
          f"  ({row['train_seconds']:.0f} s)", flush=True)
    return row


def write_tables(rows: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search_defaults.json").write_text(json.dumps(rows, indent=2) + "\n")
    datasets = sorted({r["dataset"] for r in rows})
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    by_key = {(r["dataset"], r["setting"]): r for r in rows}
    lines = ["| setting | trainable % | " + " | ".join(f"{d} valid / test macro-F1" for d in datasets)
             + " | mean valid |", "|---|---:|" + "---:|" * len(datasets) + "---:|"]
    for setting in settings:
        cells, valids, pct = [], [], None
        for d in datasets:
            r = by_key.get((d, setting))
            if r is None or "error" in r:
                cells.append("—" if r is None else "failed")
                continue
            pct = r["trainable_percent"]
            valids.append(r["valid_macro_f1"])
            cells.append(f"{100 * r['valid_macro_f1']:.1f} / {100 * r['test_macro_f1']:.1f}")
        mean = f"{100 * sum(valids) / len(valids):.1f}" if len(valids) == len(datasets) else "—"
        lines.append(f"| {setting} | {pct:.2f} | " + " | ".join(cells) + f" | {mean} |" if pct is not None
                     else f"| {setting} | — | " + " | ".join(cells) + " | — |")
    (RESULTS / "search_defaults.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(DATASETS), help="Run one dataset only.")
    parser.add_argument("--jobs", type=int, default=2, help="Runs at a time (one thread each).")
    parser.add_argument("--out", type=Path, default=Path("/tmp/edgeclin-search"), help="Where the run folders go.")
    parser.add_argument("--fresh", action="store_true", help="Rerun settings already in the results file.")
    args = parser.parse_args()
    jobs = [(d, name, opts) for d in DATASETS if args.only in (None, d) for name, opts in GRID]
    if args.only in (None, "mtsamples"):
        jobs += [("mtsamples", name, opts) for name, opts in PRECISION_CHECK]
    done: list[dict] = []
    results_file = RESULTS / "search_defaults.json"
    if results_file.exists() and not args.fresh:  # add new settings to an earlier search
        done = [r for r in json.loads(results_file.read_text()) if "error" not in r]
        finished = {(r["dataset"], r["setting"]) for r in done}
        jobs = [job for job in jobs if (job[0], job[1]) not in finished]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: run_one(*job, args.out), jobs))
    write_tables(done + rows)


if __name__ == "__main__":
    main()
