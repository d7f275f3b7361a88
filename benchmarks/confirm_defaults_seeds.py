"""edgeclin's defaults on the whole shared datasets over three seeds: LoRA against the full fine-tune.

Each cell is a plain run with nothing but the data and a seed (42 is train's own default, so that cell
is exactly ``edgeclin train --data DIR`` or ``--method full``):

    edgeclin train --data ../shared/data/DATASET --method {lora,full} --seed {42,1,2}

A whole run takes 15-60 minutes on 2 cores, so the 24 cells do not fit one sitting. Each finished
cell is added to benchmarks/results/confirm_defaults_seeds.json at once, with the defaults that
applied, the commit and the CPU; a later sitting skips every cell whose defaults are still the
table's and runs the rest (an interrupted run resumes from its last epoch). The summary
(confirm_defaults_seeds.md) checks the defaults issue's first target per dataset: no run collapses,
and LoRA's mean test metric is at least 98% of the full fine-tune's.

    .venv/bin/python benchmarks/confirm_defaults_seeds.py                       # every missing cell
    .venv/bin/python benchmarks/confirm_defaults_seeds.py --datasets mtsamples --seeds 42
    .venv/bin/python benchmarks/confirm_defaults_seeds.py --summary-only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
NAME = "confirm_defaults_seeds"
DATASETS = ("mtsamples", "ncbi_disease", "nli4ct", "ade_corpus")  # cheapest whole run first
METHODS = ("lora", "full")
SEEDS = (42, 1, 2)
TARGET_RATIO = 0.98

sys.path.insert(0, str(ROOT))


def defaults_key(dataset: str, method: str) -> dict:
    """What the table fills for this method on this dataset's task now: a cell with other values is stale."""
    from edgeclin.data import detect_task, find_split_files
    from edgeclin.defaults import defaults_for
    from edgeclin.schema import Columns

    task = detect_task(find_split_files(SHARED / dataset)["train"], Columns()).name  # the header, not every row
    return {"task": task, **defaults_for(method, task).values()}


def short_commit(commit: str | None) -> str:
    """The commit the run recorded at its start (run.json), shortened: the code it trained with."""
    return "unknown" if not commit else commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")


def train(dataset: str, method: str, seed: int, work: Path, stale: bool) -> dict:
    """One cell: resumed if an earlier sitting was cut off mid-run; run afresh if its defaults were stale."""
    out = work / f"{dataset}-{method}-seed{seed}"
    if stale or not (out / "metrics.json").exists():
        from edgeclin.artifacts import PartialRun

        if not stale and PartialRun(out).finished_epoch() is not None:
            cmd = ["train", "--resume", str(out), "--quiet"]
        else:
            cmd = ["train", "--data", str(SHARED / dataset), "--method", method, "--seed", str(seed),
                   "--allow-degenerate", "--quiet", "--overwrite", "-o", str(out)]
        print(f"$ edgeclin {' '.join(cmd)}", flush=True)
        subprocess.run([sys.executable, "-m", "edgeclin", *cmd], check=True, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    metrics = json.loads((out / "metrics.json").read_text())
    record = json.loads((out / "run.json").read_text())
    name = metrics["selection_metric"]
    return {"dataset": dataset, "method": method, "seed": seed, "metric": name,
            "test": metrics["test"][name], "valid": metrics["epochs"][metrics["best_epoch"] - 1]["valid"][name],
            "degenerate": metrics.get("degenerate"), "best_epoch": metrics["best_epoch"],
            "epochs": len(metrics["epochs"]), "train_seconds": metrics["training"]["wall_seconds"],
            "lr": record["resolved"]["lr"], "head_lr": record["resolved"].get("head_lr"),
            "applied": record["resolved"].get("defaults", {}).get("applied", {}),
            "text_pair_col": record["config"].get("text_pair_col"), "max_length": record["config"]["max_length"],
            "commit": short_commit(record.get("git_commit")),
            "cpu": _cpu(record["environment"])}


def _cpu(environment: dict) -> str:
    """The CPU the run recorded (edgeclin.hardware.environment): model, ISA flags, cores."""
    return f"{environment.get('cpu')}, {', '.join(environment.get('isa', [])) or 'no ISA flags'}, " \
           f"{environment.get('cores')} cores"


def majority(dataset: str) -> float | None:
    """Test macro-F1 of always answering the training split's most frequent label (None for NER)."""
    from sklearn.metrics import f1_score

    from edgeclin.data import load_dataset

    data = load_dataset(SHARED / dataset, check=False)
    if data.task == "token_classification":
        return None
    train_labels = [e.label for e in data.splits["train"].examples]
    truth = [e.label for e in data.splits["test"].examples]
    return float(f1_score(truth, [max(set(train_labels), key=train_labels.count)] * len(truth), average="macro"))


def summarise(cells: list[dict], baselines: dict) -> list[str]:
    lines = ["| dataset | metric | LoRA mean | LoRA worst | full mean | full worst | LoRA / full | "
             "collapsed | seeds (LoRA, full) | majority | target met |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for dataset in DATASETS:
        lora = [c for c in cells if c["dataset"] == dataset and c["method"] == "lora"]
        full = [c for c in cells if c["dataset"] == dataset and c["method"] == "full"]
        if not lora and not full:
            continue
        collapsed = sum(bool(c["degenerate"]) for c in lora + full)
        ratio = mean(c["test"] for c in lora) / mean(c["test"] for c in full) if lora and full else None
        complete = len(lora) == len(full) == len(SEEDS)
        met = "–" if ratio is None else ("yes" if ratio >= TARGET_RATIO and not collapsed else "no")
        lines.append(
            f"| {dataset} | {(lora or full)[0]['metric']} | {_pct(lora, mean)} | {_pct(lora, min)} | "
            f"{_pct(full, mean)} | {_pct(full, min)} | {'' if ratio is None else f'{ratio:.3f}'} | {collapsed} | "
            f"{len(lora)}, {len(full)} of {len(SEEDS)} | "
            f"{'' if baselines.get(dataset) is None else f'{100 * baselines[dataset]:.1f}'} | "
            f"{met}{'' if complete else ' (so far)'} |")
    lines += ["", "| dataset | method | seed | test | valid | best epoch | collapsed | lr | defaults applied | "
                  "pair column | train min | commit |", "|---|---|---:|---:|---:|---:|---|---:|---|---|---:|---|"]
    for c in sorted(cells, key=lambda c: (DATASETS.index(c["dataset"]), c["method"], c["seed"])):
        lines.append(f"| {c['dataset']} | {c['method']} | {c['seed']} | {100 * c['test']:.1f} | "
                     f"{100 * c['valid']:.1f} | {c['best_epoch']}/{c['epochs']} | {c['degenerate'] or 'no'} | "
                     f"{_rate(c)} | {_applied(c['applied'])} | {c['text_pair_col'] or ''} | "
                     f"{c['train_seconds'] / 60:.1f} | {c['commit']} |")
    cpus = sorted({c["cpu"] for c in cells})
    return [*lines, "", f"CPU: {'; '.join(cpus)}. Test metric in points (macro-F1, or entity F1 for NER)."]


def _pct(cells: list[dict], how) -> str:
    return f"{100 * how(c['test'] for c in cells):.1f}" if cells else ""


def _rate(cell: dict) -> str:
    head = cell["head_lr"]
    return f"{cell['lr']:g}" + ("" if not head or head == cell["lr"] else f" head {head:g}")


def _applied(applied: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in applied.items()) or "(all given)"


def load() -> dict:
    path = RESULTS / f"{NAME}.json"
    return json.loads(path.read_text()) if path.exists() else {"cells": [], "majority": {}}


def save(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for suffix, text in (("json", json.dumps(result, indent=2) + "\n"),
                         ("md", "\n".join(summarise(result["cells"], result["majority"])) + "\n")):
        tmp = RESULTS / f".{NAME}.{suffix}.tmp"
        tmp.write_text(text)
        os.replace(tmp, RESULTS / f"{NAME}.{suffix}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeclin-confirm-seeds"),
                        help="Where the run folders go (kept, so a cut-off sitting resumes).")
    parser.add_argument("--summary-only", action="store_true", help="Rewrite the .md from the .json; run nothing.")
    args = parser.parse_args()
    result = load()
    if not args.summary_only:
        for seed in map(int, args.seeds.split(",")):
            for dataset in args.datasets.split(","):
                result["majority"].setdefault(dataset, majority(dataset))
                for method in args.methods.split(","):
                    run_cell(result, dataset, method, seed, args.work)
    save(result)
    print((RESULTS / f"{NAME}.md").read_text())


def run_cell(result: dict, dataset: str, method: str, seed: int, work: Path) -> None:
    key = defaults_key(dataset, method)
    same = [c for c in result["cells"] if (c["dataset"], c["method"], c["seed"]) == (dataset, method, seed)]
    if same and same[0].get("defaults") == key:
        return
    cell = {**train(dataset, method, seed, work, stale=bool(same)), "defaults": key}
    result["cells"] = [c for c in result["cells"] if c not in same] + [cell]
    save(result)
    print(f"{dataset} {method} seed {seed}: test {100 * cell['test']:.1f}"
          + (f" COLLAPSED ({cell['degenerate']})" if cell["degenerate"] else ""), flush=True)


if __name__ == "__main__":
    main()
