"""Confirm edgeclin's defaults on the full mtsamples task, and deploy the LoRA run.

Runs, one after the other with all cores (so wall times are comparable):

    edgeclin train --data ../shared/data/mtsamples --method lora --max-length 256 --epochs 4
    edgeclin train --data ../shared/data/mtsamples --method full --max-length 256 --epochs 4
    edgeclin export <lora run> --int8
    edgeclin predict <bundle> --data ../shared/data/mtsamples/test.csv

and writes benchmarks/results/confirm_defaults.{json,md}: test metrics, trainable parameters,
wall time, samples/s and peak memory of both runs; the bundle's gate table, sizes, and the
metric that predict reproduces.

    .venv/bin/python benchmarks/confirm_defaults.py            # about 30 minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "mtsamples"
RESULTS = ROOT / "benchmarks" / "results"
EDGECLIN = [sys.executable, "-m", "edgeclin"]


def run(*args: str) -> None:
    print("$ edgeclin " + " ".join(args), flush=True)
    subprocess.run([*EDGECLIN, *args], check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def main() -> None:
    skip_training = "--skip-training" in sys.argv
    for method in ("lora", "full"):
        if not skip_training:
            run("train", "--data", str(DATA), "--method", method, "--max-length", "256", "--epochs", "4",
                "-o", f"runs/mtsamples-{method}", "--overwrite", "--quiet")
    run("merge", "runs/mtsamples-lora", "-o", "runs/mtsamples-lora-merged", "--overwrite")
    run("export", "runs/mtsamples-lora", "--int8", "-o", "export/mtsamples-lora", "--overwrite")
    run("predict", "export/mtsamples-lora", "--data", str(DATA / "test.csv"), "-o", "runs/mtsamples-lora-test.csv")

    rows = {}
    for method in ("lora", "full"):
        m = json.loads((ROOT / f"runs/mtsamples-{method}/metrics.json").read_text())
        rows[method] = {
            "test_macro_f1": m["test"]["macro_f1"], "test_accuracy": m["test"]["accuracy"],
            "test_auroc": m["test"]["auroc"], "best_epoch": m["best_epoch"],
            "valid_macro_f1": [e["valid"]["macro_f1"] for e in m["epochs"]],
            "trainable": m["parameters"]["trainable"], "total": m["parameters"]["total"],
            "trainable_percent": m["parameters"]["trainable_percent"],
            "wall_seconds": m["training"]["wall_seconds"], "samples_per_second": m["training"]["samples_per_second"],
            "precision": m["training"]["precision"], "lr": m["training"]["lr"],
            "peak_rss_mb": m["memory"]["peak_rss_mb"], "truncated_test": m["truncation"]["test"],
        }
    manifest = json.loads((ROOT / "export/mtsamples-lora/manifest.json").read_text())
    predicted = json.loads((ROOT / "runs/mtsamples-lora-test.csv.metrics.json").read_text())
    merged_weights = (ROOT / "runs/mtsamples-lora-merged/model.safetensors").stat().st_size
    result = {"runs": rows, "bundle": {
        "chosen": manifest["chosen"], "model_onnx_bytes": manifest["files"]["model.onnx"]["bytes"],
        "merged_safetensors_bytes": merged_weights, "gate": manifest["gate"], "predict_metrics": predicted["metrics"]}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "confirm_defaults.json").write_text(json.dumps(result, indent=2) + "\n")

    lines = ["| method | test macro-F1 | accuracy | AUROC | trainable params | wall time | samples/s | peak RSS | lr |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, r in rows.items():
        lines.append(f"| {method} | {100 * r['test_macro_f1']:.1f} | {100 * r['test_accuracy']:.1f} | "
                     f"{100 * r['test_auroc']:.1f} | {r['trainable']:,} ({r['trainable_percent']:.2f}%) | "
                     f"{r['wall_seconds'] / 60:.1f} min | {r['samples_per_second']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} MiB | {r['lr']:g} |")
    gap = 100 * (rows["full"]["test_macro_f1"] - rows["lora"]["test_macro_f1"])
    lines += ["", f"LoRA vs full: {gap:+.1f} macro-F1 points (positive: full is better).", "",
              "| bundle variant | macro-F1 | size MB | drop (points) | gate |", "|---|---:|---:|---:|---|"]
    for v in manifest["gate"]["variants"]:
        drop = "" if v["drop_points"] is None else f"{v['drop_points']:+.2f}"
        gate = "" if v["passed"] is None else ("pass" if v["passed"] else "fail")
        f1 = 100 * v["metrics"]["macro_f1"]
        lines.append(f"| {v['name']} | {f1:.1f} | {v['bytes'] / 1e6:.1f} | {drop} | {gate} |")
    size = manifest["files"]["model.onnx"]["bytes"]
    lines += ["", f"Chosen: {manifest['chosen']}; model.onnx {size / 1e6:.1f} MB = "
              f"{size / merged_weights:.2f}x the merged fp32 safetensors weights. "
              f"`edgeclin predict` on the test split: macro-F1 {100 * predicted['metrics']['macro_f1']:.1f}."]
    (RESULTS / "confirm_defaults.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
