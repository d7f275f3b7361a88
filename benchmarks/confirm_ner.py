"""NER on ncbi_disease: LoRA vs the full fine-tune, the int8 bundle vs fp32, and predict's spans.

Trains (two runs at a time, one thread each) unless the run folders exist:

    edgeclin train --data ../shared/data/ncbi_disease --max-length 128 --method full --epochs 4
    edgeclin train --data ../shared/data/ncbi_disease --max-length 128 --method lora <LORA_OPTIONS>

then exports the LoRA run twice (fp32, and --int8 gated on entity F1), runs edgeclin predict on
the test split with each bundle, checks that every predicted entity's character offsets point at
its text, and writes benchmarks/results/confirm_ner.{json,md}.

    .venv/bin/python benchmarks/confirm_ner.py --lora-run runs/ncbi-lora-e8 --full-run runs/ncbi-full
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from confirm_defaults import EDGECLIN, RESULTS, ROOT, run  # the same runner: edgeclin in a subprocess, offline

DATA = ROOT.parent / "shared" / "data" / "ncbi_disease"


def spans_check(predictions: Path) -> dict:
    """Every entity's [start, end) must be exactly its text; count entities and rows."""
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    entities = [(row["text"], e) for row in rows for e in row["entities"]]
    wrong = [e for text, e in entities if text[e["start"]:e["end"]] != e["text"]]
    return {"rows": len(rows), "entities": len(entities), "offset_mismatches": len(wrong),
            "example": next((e for _, e in entities), None)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lora-run", default="runs/ncbi-lora")
    parser.add_argument("--full-run", default="runs/ncbi-full")
    parser.add_argument("--lora-options", default="", help="extra train options for the LoRA run, if trained here")
    args = parser.parse_args()
    procs = []
    for method, folder, extra in (("full", args.full_run, ""), ("lora", args.lora_run, args.lora_options)):
        if not (ROOT / folder / "metrics.json").exists():
            command = [*EDGECLIN, "train", "--data", str(DATA), "--max-length", "128", "--method", method,
                       "-o", folder, "--overwrite", "--quiet", *extra.split()]
            procs.append(subprocess.Popen(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                                   "OMP_NUM_THREADS": "1"}))
    for proc in procs:
        if proc.wait() != 0:
            sys.exit("training failed")
    name = Path(args.lora_run).name
    run("export", args.lora_run, "-o", f"export/{name}-fp32", "--overwrite", "--quiet")
    run("export", args.lora_run, "--int8", "-o", f"export/{name}", "--overwrite", "--quiet")
    summary: dict = {"runs": {}, "bundles": {}}
    for method, folder in (("full", args.full_run), ("lora", args.lora_run)):
        m = json.loads((ROOT / folder / "metrics.json").read_text())
        record = json.loads((ROOT / folder / "run.json").read_text())
        summary["runs"][method] = {
            "folder": folder, "test": {k: m["test"][k] for k in ("f1", "precision", "recall")},
            "best_epoch": m["best_epoch"], "valid_f1": [e["valid"]["f1"] for e in m["epochs"]],
            "trainable": m["parameters"]["trainable"], "trainable_percent": m["parameters"]["trainable_percent"],
            "wall_seconds": m["training"]["wall_seconds"], "lr": m["training"]["lr"],
            "peak_rss_mb": m["memory"]["peak_rss_mb"],
            "options": {k: record["config"][k] for k in ("method", "epochs", "lr", "lora_r", "lora_alpha",
                                                         "target_modules", "max_length")},
        }
    for kind in ("fp32", "int8"):
        bundle = f"export/{name}" + ("-fp32" if kind == "fp32" else "")
        out = ROOT / "runs" / f"{name}-{kind}-test.jsonl"
        run("predict", bundle, "--data", str(DATA / "test.jsonl"), "-o", str(out))
        manifest = json.loads((ROOT / bundle / "manifest.json").read_text())
        predicted = json.loads(Path(str(out) + ".metrics.json").read_text())["metrics"]
        summary["bundles"][kind] = {"chosen": manifest["chosen"], "bytes": manifest["files"]["model.onnx"]["bytes"],
                                    "predict_f1": predicted["f1"], "predict_precision": predicted["precision"],
                                    "predict_recall": predicted["recall"], "spans": spans_check(out),
                                    "runtime": manifest.get("runtime", {}).get("preferred")}
    lora, full = summary["runs"]["lora"]["test"]["f1"], summary["runs"]["full"]["test"]["f1"]
    fp32, int8 = summary["bundles"]["fp32"]["predict_f1"], summary["bundles"]["int8"]["predict_f1"]
    summary["gaps_points"] = {"full_minus_lora": 100 * (full - lora), "fp32_minus_int8_bundle": 100 * (fp32 - int8)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "confirm_ner.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| run | test entity F1 | precision | recall | trainable | wall time | options |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for method, r in summary["runs"].items():
        o = r["options"]
        options = f"epochs {o['epochs']}, lr {r['lr']}" + (
            f", r {o['lora_r']}, alpha {o['lora_alpha']}, {o['target_modules']}" if method == "lora" else "")
        lines.append(f"| {method} | {100 * r['test']['f1']:.1f} | {100 * r['test']['precision']:.1f} | "
                     f"{100 * r['test']['recall']:.1f} | {r['trainable']:,} ({r['trainable_percent']:.2f}%) | "
                     f"{r['wall_seconds'] / 60:.1f} min | {options} |")
    lines += ["", "| LoRA bundle | model.onnx MB | entity F1 (edgeclin predict, test) | entities | offset mismatches |",
              "|---|---:|---:|---:|---:|"]
    for kind, b in summary["bundles"].items():
        lines.append(f"| {kind}: {b['chosen']} | {b['bytes'] / 1e6:.1f} | {100 * b['predict_f1']:.1f} | "
                     f"{b['spans']['entities']} | {b['spans']['offset_mismatches']} |")
    gaps = summary["gaps_points"]
    lines += ["", f"Full minus LoRA: {gaps['full_minus_lora']:+.1f} points; fp32 minus int8 bundle: "
              f"{gaps['fp32_minus_int8_bundle']:+.2f} points."]
    (RESULTS / "confirm_ner.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
