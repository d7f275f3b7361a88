"""Students distilled from edgeclin's default LoRA teacher, against the same students trained without one.

For each dataset: the teacher (``edgeclin train --data DIR``, every default), students of 3 and 2
of its layers (3 also with ``--trim-vocab``) and the offline 3-layer MiniLM (``--student
minilm-l3``) distilled from it, and each student architecture trained on the gold labels alone
(``--alpha 0``: the same start, no teacher). Every model is exported with ``--int8``; each int8
bundle's batch-1 latency (a real ~128-token note, one thread) and end-to-end throughput on the test
split (all cores) are measured in a fresh process per variant, the variants alternated over rounds.
Writes the table, a metric-against-latency plot (the efficiency frontier) and the raw numbers to
``benchmarks/results/distill_students.*``.

    .venv/bin/python benchmarks/distill_students.py --datasets mtsamples,ade_corpus,ncbi_disease \\
        [--limit-train N] [--teacher mtsamples=runs/mtsamples-lora] --work /tmp/distill
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
EDGECLIN = [sys.executable, "-m", "edgeclin"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
MAX_LENGTH = {"ncbi_disease": 128}  # NER sentences are short: the README's NER setting


def edgeclin(*args) -> None:
    print("$ edgeclin " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    subprocess.run([*EDGECLIN, *map(str, args)], env=ENV, check=True)


STUDENTS = {"student 3 layers": ["--layers", 3], "student 2 layers": ["--layers", 2],
            "student minilm-l3": ["--student", "minilm-l3"],
            # the vocabulary cut to the pieces of the training and validation notes (most of a small file)
            "student 3 layers trimmed": ["--layers", 3, "--trim-vocab"]}


def runs_of(dataset: str, work: Path, teacher: Path | None, limit: int | None,
            students: list[str]) -> dict[str, Path]:
    """Train (or reuse) the teacher, the students and their baselines; return name -> run folder."""
    data = SHARED / dataset
    common = ["--quiet", "--allow-degenerate", *(["--max-length", MAX_LENGTH[dataset]] if dataset in MAX_LENGTH
                                                 else []), *(["--limit", limit] if limit else [])]
    folder = work / dataset
    runs = {"teacher (LoRA)": teacher or folder / "teacher"}
    if not (runs["teacher (LoRA)"] / "metrics.json").exists():
        edgeclin("train", "--data", data, "-o", runs["teacher (LoRA)"], *common)
    for name, how in ((name, STUDENTS[name]) for name in students):
        for alpha, suffix in ((0.5, "distilled"), (0.0, "without teacher")):
            out = folder / f"{name.replace(' ', '-')}-{suffix.replace(' ', '-')}"
            runs[f"{name}, {suffix}"] = out
            if not (out / "metrics.json").exists():
                edgeclin("distill", runs["teacher (LoRA)"], *how, "--alpha", alpha, "-o", out, "--quiet",
                         "--allow-degenerate", "--overwrite")  # the teacher's data, limit and max length
    return runs


def bundles(runs: dict[str, Path]) -> dict[str, Path]:
    out = {}
    for name, run in runs.items():
        bundle = run.with_name(run.name + "-int8")
        if not (bundle / "manifest.json").exists():
            edgeclin("export", run, "--int8", "-o", bundle, "--quiet", "--overwrite")
        out[name] = bundle
    return out


def speed_worker(spec: dict) -> dict:
    """In a fresh process: one bundle's batch-1 latency or its end-to-end throughput."""
    sys.path.insert(0, str(ROOT))
    from edgeclin import runtime
    from edgeclin.data import load_dataset

    model = runtime.load(spec["bundle"], threads=1 if spec["measure"] == "latency" else None)
    split = load_dataset(spec["data"], check=False, task=model.task).splits["test"]
    if spec["measure"] == "latency":
        example = min(split.examples, key=lambda e: abs(len(e.text.split()) * 1.3 - 128))
        call = (lambda: model.predict(words=[list(example.tokens)])) if example.tokens else \
            (lambda: model.predict([example.text]))
        for _ in range(5):
            call()
        samples = []
        for _ in range(50):
            start = time.perf_counter()
            call()
            samples.append(1000 * (time.perf_counter() - start))
        return {"p50_ms": float(np.median(samples)), "engine": model.describe()}
    start = time.perf_counter()
    model.evaluate(split.examples)
    return {"texts_per_s": len(split.examples) / (time.perf_counter() - start)}


def measure(bundle: Path, data: Path, what: str) -> dict:
    spec = json.dumps({"bundle": str(bundle), "data": str(data), "measure": what})
    threads = "1" if what == "latency" else str(os.cpu_count())
    proc = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True, text=True,
                          env={**ENV, "OMP_NUM_THREADS": threads}, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def speeds(bundle_of: dict[str, Path], data: Path, rounds: int) -> dict[str, dict]:
    samples = {name: {"latency": [], "throughput": []} for name in bundle_of}
    for _ in range(rounds):
        for what, key in (("latency", "p50_ms"), ("end_to_end", "texts_per_s")):
            for name, bundle in bundle_of.items():  # alternated: A B C A B C ...
                samples[name]["latency" if what == "latency" else "throughput"].append(measure(bundle, data,
                                                                                               what)[key])
    return {name: {k: float(np.median(v)) for k, v in s.items()} for name, s in samples.items()}


def row(name: str, run: Path, bundle: Path, speed: dict, teacher_speed: dict, teacher_metric: float,
        teacher_bytes: int) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    value = metrics["test"][metrics["selection_metric"]]
    return {"variant": name, "metric": metrics["selection_metric"], "test": value,
            "vs_teacher": value / teacher_metric, "trainable": metrics["parameters"]["trainable"],
            "parameters": metrics["parameters"]["total"], "model_onnx_bytes": manifest["files"]["model.onnx"]["bytes"],
            "vocabulary": (metrics.get("distill") or {}).get("vocabulary"),
            "int8_metric": next(v for v in manifest["gate"]["variants"] if v["name"] == manifest["chosen"])
            ["metrics"][metrics["selection_metric"]], **speed,
            "size_vs_teacher": manifest["files"]["model.onnx"]["bytes"] / teacher_bytes,
            "latency_speedup": teacher_speed["latency"] / speed["latency"],
            "throughput_speedup": speed["throughput"] / teacher_speed["throughput"]}


def report(results: dict, out: Path, env: dict) -> None:
    lines = ["# Distilled students", "", f"CPU: {env['cpu']}; ISA: {', '.join(env['isa'])}; {env['cores']} cores. "
             "Speed of the int8 bundles, each variant in a fresh process, alternated; medians.", ""]
    for dataset, rows in results.items():
        lines += [f"## {dataset}", "", "| variant | params | test metric | vs teacher | int8 model.onnx MB | "
                  "size vs teacher | batch-1 ms | speed-up | texts/s | speed-up |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['variant']} | {r['parameters'] / 1e6:.1f}M | {100 * r['test']:.1f} | {r['vs_teacher']:.3f} | "
                  f"{r['model_onnx_bytes'] / 1e6:.1f} | {r['size_vs_teacher']:.2f}x | {r['latency']:.1f} | "
                  f"{r['latency_speedup']:.2f}x | {r['throughput']:.1f} | {r['throughput_speedup']:.2f}x |"
                  for r in rows]
        trimmed = [r for r in rows if r["vocabulary"]]
        if trimmed:
            lines.append("")
        lines += [f"- {r['variant']}: vocabulary {r['vocabulary']['student']:,} of the teacher's "
                  f"{r['vocabulary']['teacher']:,} pieces; {r['vocabulary'].get('test_rows_read_otherwise')} of "
                  f"{r['vocabulary'].get('test_rows')} test rows read in other pieces than the teacher's within the "
                  "max length (words not in the training and validation notes)" for r in trimmed]
        lines.append("")
    (out / "distill_students.md").write_text("\n".join(lines) + f"\nCommand: `{' '.join(sys.argv)}`\n")
    (out / "distill_students.json").write_text(json.dumps({"results": results, "environment": env}, indent=2))
    plot(results, out)


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (dataset, rows) in zip(axes[0], results.items(), strict=True):
        for r in rows:
            ax.scatter(r["latency"], 100 * r["test"], marker="*" if "teacher" in r["variant"] else "o")
            ax.annotate(r["variant"], (r["latency"], 100 * r["test"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        ax.set(title=dataset, xlabel="int8 bundle, batch-1 ms (1 thread)", ylabel=f"test {rows[0]['metric']} (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "distill_students.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="mtsamples,ade_corpus,ncbi_disease")
    parser.add_argument("--teacher", action="append", default=[], help="DATASET=RUN: reuse a trained teacher")
    parser.add_argument("--limit-train", type=int, help="--limit for every run (a reduced run: say so)")
    parser.add_argument("--students", default=",".join(STUDENTS),
                        help=f"Comma list of: {', '.join(STUDENTS)} (each distilled and trained without teacher).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeclin-distill"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(speed_worker(json.loads(args.worker))))
        return
    sys.path.insert(0, str(ROOT))
    from edgeclin.hardware import environment

    teachers = dict(t.split("=", 1) for t in args.teacher)
    results = {}
    for dataset in args.datasets.split(","):
        runs = runs_of(dataset, args.work, Path(teachers[dataset]) if dataset in teachers else None, args.limit_train,
                       args.students.split(","))
        bundle_of = bundles(runs)
        speed = speeds(bundle_of, SHARED / dataset, args.rounds)
        teacher = json.loads((runs["teacher (LoRA)"] / "metrics.json").read_text())
        teacher_metric = teacher["test"][teacher["selection_metric"]]
        teacher_bytes = json.loads((bundle_of["teacher (LoRA)"] / "manifest.json").read_text()
                                   )["files"]["model.onnx"]["bytes"]
        results[dataset] = [row(name, runs[name], bundle_of[name], speed[name], speed["teacher (LoRA)"],
                                teacher_metric, teacher_bytes) for name in runs]
    args.out.mkdir(parents=True, exist_ok=True)
    report(results, args.out, environment())


if __name__ == "__main__":
    main()
