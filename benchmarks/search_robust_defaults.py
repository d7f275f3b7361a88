"""Defaults chosen for robustness: every setting on every task type, three seeds, with gradient clipping.

Each (method, setting) is trained on reduced slices of the four shared datasets (single-label
mtsamples and ade_corpus, nli4ct sentence pairs, ncbi_disease NER) with seeds 0, 1, 2. Multi-label
(--datasets "ncbi_disease categories (multi-label)"): each ncbi_disease sentence labelled with the
kinds of disease its tagged mentions name (neoplasm, deficiency, neuromuscular, syndrome, other;
none for a sentence without a mention), built in --work from ../shared at run time. A multi-label
task built from the MIMIC fixtures can be added too, but its codes carry no signal.
A setting's score on a dataset is its validation selection metric divided by the best any setting
of any method reached there; the table gives each setting's worst case (over datasets and seeds),
its mean, and how many runs collapsed. The chosen default of a method, per task group (NER, the
rest), is the setting with the best worst case, no collapse, and a mean within a point of the
method's best mean.

    .venv/bin/python benchmarks/search_robust_defaults.py [--methods lora,full] [--settings 'lr 2e-3;lr 4e-3']
        [--jobs 2] [--finished-only] [--seeds 0,1,2] [--datasets mtsamples,ade_corpus]
    .venv/bin/python benchmarks/search_robust_defaults.py --methods ia3,prompt,ptuning,prefix \
        --datasets mtsamples,ade_corpus --results search_peft_defaults

A model of BERT-base size (110M, edgeclin/defaults.py's BASE_SIZE) costs about 8x MiniLM-L6 per step,
so its full fine-tune rate was searched on one slice per task group, one seed:

    .venv/bin/python benchmarks/search_robust_defaults.py --model mpnet-base --methods full,lora \
        --settings 'lr 5e-5;lr 1e-4;lr 2e-4;lr 2e-3' --datasets ade_corpus-800 --seeds 0 \
        --work /tmp/edgeclin-base-search --results search_base_size_defaults
    .venv/bin/python benchmarks/search_robust_defaults.py --model mpnet-base --methods full \
        --settings 'lr 5e-5 head 2e-3;lr 2e-4 head 2e-3' --datasets 'ncbi_disease-600 (NER)' --seeds 0 \
        --work /tmp/edgeclin-base-search --results search_base_size_ner_defaults

Writes benchmarks/results/search_robust_defaults.{json,md} (or --results NAME). Finished runs are reused on a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
SEEDS = (0, 1, 2)

DATASETS = {  # name: (data folder, options that keep a run to a few minutes on one core)
    "mtsamples": (SHARED / "mtsamples", ["--limit", "600", "--max-length", "128", "--epochs", "4"]),
    "ade_corpus": (SHARED / "ade_corpus", ["--limit", "1200", "--max-length", "64", "--epochs", "3"]),
    "nli4ct (pairs)": (SHARED / "nli4ct", ["--limit", "600", "--max-length", "128", "--epochs", "3",
                                           "--text-pair-col", "text_pair"]),
    "ncbi_disease (NER)": (SHARED / "ncbi_disease", ["--limit", "1200", "--max-length", "64", "--epochs", "3"]),
    "ncbi_disease categories (multi-label)": ("ncbi_categories", ["--limit", "1200", "--max-length", "64",
                                                                  "--epochs", "3", "--multi-label"]),
    # the grid's slice at train's defaults (benchmarks/results/grid_ade), where a 110M full fine-tune collapsed
    "ade_corpus-800": (SHARED / "ade_corpus", ["--limit", "800"]),
    # NER at base size: half the rows of the NER slice, for the cost of a 110M model on one core
    "ncbi_disease-600 (NER)": (SHARED / "ncbi_disease", ["--limit", "600", "--max-length", "64", "--epochs", "3"]),
    "mimic-dia fixture (multi-label)": ("multilabel_fixture", ["--max-length", "128", "--epochs", "4",
                                                               "--multi-label"]),
}
# The MIMIC fixture's codes are drawn at random, independently of its invented text: no model can learn
# them, so every setting "collapses" to one label set there and the dataset cannot rank settings. It stays
# here for a fixture whose codes follow its text (not yet written), and is left out by default.
BASE_SIZE_SLICES = ("ade_corpus-800", "ncbi_disease-600 (NER)")  # for --model mpnet-base (110M) only
SEARCHED = [name for name in DATASETS if "fixture" not in name and name not in BASE_SIZE_SLICES]
SETTINGS = {
    "lora": [("lr 1e-3", ["--lr", "1e-3"]), ("lr 2e-3", ["--lr", "2e-3"]), ("lr 4e-3", ["--lr", "4e-3"]),
             ("lr 4e-3, no clipping", ["--lr", "4e-3", "--max-grad-norm", "0"]), ("lr auto", ["--lr", "auto"])],
    # the head at LoRA's rate: is a full fine-tune at 2e-4 a weak baseline on few steps? (its head starts random)
    "full": [("lr 1e-4", ["--lr", "1e-4"]), ("lr 2e-4", ["--lr", "2e-4"]), ("lr 4e-4", ["--lr", "4e-4"]),
             ("lr 2e-4 head 2e-3", ["--lr", "2e-4", "--head-lr", "2e-3"]), ("lr auto", ["--lr", "auto"])],
    # IA3 and the virtual-token methods train the pooler and classifier in full (edgeclin/methods.py); their
    # vectors and tokens may want a far higher rate than that head, hence the settings with --head-lr. The
    # settings are those a probe on ade_corpus and mtsamples slices (seed 0) found to leave the majority class.
    "ia3": [("lr 1e-2", ["--lr", "1e-2"]), ("lr 3e-2 head 2e-3", ["--lr", "3e-2", "--head-lr", "2e-3"])],
    "prompt": [("lr 3e-2 head 2e-3", ["--lr", "3e-2", "--head-lr", "2e-3"])],
    "ptuning": [("lr 1e-3", ["--lr", "1e-3"]), ("lr 3e-3", ["--lr", "3e-3"])],
    "prefix": [("lr 1e-2", ["--lr", "1e-2"])],
}
# Rates for a 110M model (--model mpnet-base): 5e-5 is the usual one for BERT-base (Devlin et al. 2019). Run
# only when --settings names them, so the small models' search stays as it was
BASE_SIZE_SETTINGS = {"full": [("lr 5e-5", ["--lr", "5e-5"]), ("lr 5e-5 head 2e-3", ["--lr", "5e-5", "--head-lr",
                                                                                    "2e-3"])]}
PEFT_METHODS = "ia3,prompt,ptuning,prefix"


# The kind of disease a mention names, by its words (first match wins; a mention matching none is "other").
DISEASE_KINDS = {"neoplasm": r"cancer|carcinom|tumou?r|neoplas|leuka?emi|lymphom|melanom|sarcom|blastom|adenom|"
                             r"polyposis",
                 "deficiency": r"deficien", "neuromuscular": r"dystroph|myopath|atroph|ataxia|neuropath|palsy",
                 "syndrome": r"syndrome"}


def _mentions(tokens: list[str], tags: list[str]) -> list[str]:
    spans: list[list[str]] = []
    for token, tag in zip(tokens, tags, strict=True):
        if tag.startswith("B-") or (tag.startswith("I-") and not spans):
            spans.append([token])
        elif tag.startswith("I-"):
            spans[-1].append(token)
        else:
            spans.append([])  # closes the open mention
    return [" ".join(span) for span in spans if span]


def ncbi_categories(work: Path) -> Path:
    """A multi-label task with signal, from ncbi_disease: each sentence's kinds of disease mention."""
    import csv
    import re

    folder = work / "ncbi-categories"
    if (folder / "test.csv").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        with (folder / f"{split}.csv").open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["text", "label"])
            for line in (SHARED / "ncbi_disease" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                kinds = {next((k for k, p in DISEASE_KINDS.items() if re.search(p, m.lower())), "other")
                         for m in _mentions(row["tokens"], row["tags"])}
                writer.writerow([" ".join(row["tokens"]), ";".join(sorted(kinds))])
    return folder


def multilabel_fixture(work: Path) -> Path:
    """A multi-label task (diagnosis code sets) built by edgeclin data mimic from the SYNTHETIC fixtures."""
    folder = work / "mimic-dia"
    if not (folder / "train.csv").exists():
        sys.path.insert(0, str(ROOT / "tests"))
        import builder_fixtures

        fx = builder_fixtures.write_mimic_iii(work / "mimic-raw", patients=600)
        subprocess.run([sys.executable, "-m", "edgeclin", "data", "mimic", "--notes", fx.notes, "--admissions",
                        fx.admissions, "--diagnoses", fx.diagnoses, "--task", "dia", "-o", folder, "--quiet",
                        "--overwrite"], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return folder


BUILDERS = {"ncbi_categories": ncbi_categories, "multilabel_fixture": multilabel_fixture}  # DATASETS' built folders


def run_folder(job: tuple, work: Path, model: str | None) -> Path:
    """One folder per run; a run of another --model than the default one is named after it too."""
    dataset, method, setting, _, seed, _ = job
    sys.path.insert(0, str(ROOT))
    from edgeclin.files import safe_name  # a folder given as --model: its name, not its path

    prefix = f"{safe_name(model)}-" if model else ""
    return work / "runs" / (f"{prefix}{dataset.split()[0]}-{method}-{setting.replace(' ', '_').replace(',', '')}"
                            f"-seed{seed}")


def run_one(job: tuple, work: Path, model: str | None) -> dict:
    dataset, method, setting, options, seed, data = job
    out = run_folder(job, work, model)
    row = {"dataset": dataset, "method": method, "setting": setting, "seed": seed, "model": model or "default"}
    if not (out / "metrics.json").exists():
        cmd = [sys.executable, "-m", "edgeclin", "train", "--data", str(data), "--method", method, "--seed", str(seed),
               "--quiet", "--overwrite", "--allow-degenerate", "-o", str(out), *DATASETS[dataset][1], *options,
               *(["--model", model] if model else [])]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            return {**row, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    metrics = json.loads((out / "metrics.json").read_text())
    best = metrics["epochs"][metrics["best_epoch"] - 1]
    row.update(metric=metrics["selection_metric"], valid=best["valid"][metrics["selection_metric"]],
               test=metrics["test"][metrics["selection_metric"]], degenerate=metrics.get("degenerate"),
               train_seconds=metrics["training"]["wall_seconds"], majority=majority_baseline(dataset, seed, data))
    print(f"{dataset:32s} {method:8s} {setting:22s} seed {seed}: valid {100 * row['valid']:.1f}"
          + (f" COLLAPSED ({row['degenerate']})" if row["degenerate"] else ""), flush=True)
    return row


def majority_baseline(dataset: str, seed: int, data: Path) -> float | None:
    """Test macro-F1 of always answering the training split's most frequent label, on the rows the run saw
    (a classification dataset; None for NER)."""
    if task_group(dataset) != "classification":  # NER; multi-label, whose most frequent label set is empty
        return None
    sys.path.insert(0, str(ROOT))
    from sklearn.metrics import f1_score

    from edgeclin.data import load_dataset
    from edgeclin.schema import Columns

    options = DATASETS[dataset][1]
    limit = int(options[options.index("--limit") + 1]) if "--limit" in options else None
    pair = options[options.index("--text-pair-col") + 1] if "--text-pair-col" in options else None
    splits = load_dataset(data, limit=limit, seed=seed, columns=Columns(text_pair=pair),
                          multi_label="--multi-label" in options).splits
    train = [e.label for e in splits["train"].examples]
    truth = [e.label for e in splits["test"].examples]
    return float(f1_score(truth, [max(set(train), key=train.count)] * len(truth), average="macro"))


def task_group(dataset: str) -> str:
    """Defaults are chosen per group: NER and multi-label may have their own (edgeclin/defaults.py), single-label
    and pairs share one."""
    return "NER" if "NER" in dataset else "multi-label" if "multi-label" in dataset else "classification"


def setting_key(row: dict) -> tuple[str, str, str]:
    """What a table row is about: (method, setting, task group)."""
    return row["method"], row["setting"], task_group(row["dataset"])


def summarise(rows: list[dict]) -> list[dict]:
    ok = [r for r in rows if "error" not in r]
    best = {d: max(r["valid"] for r in ok if r["dataset"] == d) for d in {r["dataset"] for r in ok}}
    table = []
    for key in dict.fromkeys(map(setting_key, rows)):
        method, setting, group = key
        mine = [r for r in ok if setting_key(r) == key]
        ratios = [r["valid"] / best[r["dataset"]] if best[r["dataset"]] else 0.0 for r in mine]
        ran = {d: [r["valid"] for r in mine if r["dataset"] == d] for d in best}
        per_dataset = {d: sum(values) / len(values) for d, values in ran.items() if values}
        table.append({"method": method, "setting": setting, "group": group, "runs": len(mine),
                      "failed": sum(1 for r in rows if setting_key(r) == key and "error" in r),
                      "collapsed": sum(bool(r["degenerate"]) for r in mine),
                      "worst": min(ratios) if ratios else None, "mean": sum(ratios) / len(ratios) if ratios else None,
                      "per_dataset_valid": per_dataset, "worst_over_majority": _worst_margin(mine)})
    return table


def _worst_margin(rows: list[dict]) -> float | None:
    """The smallest gap, in test points, between a run and the majority-class answer (classification only)."""
    margins = [r["test"] - r["majority"] for r in rows if r.get("majority") is not None]
    return min(margins) if margins else None


def choose(table: list[dict]) -> dict[str, str]:
    """Per method and task group: the best worst case among the settings that never collapsed, never failed
    and have a mean within a point of the best mean. Keys: "method / group"."""
    chosen = {}
    for method, group in dict.fromkeys((t["method"], t["group"]) for t in table):
        mine = [t for t in table if (t["method"], t["group"]) == (method, group) and t["mean"] is not None]
        if not mine:
            continue
        best_mean = max(t["mean"] for t in mine)
        fine = [t for t in mine if not t["collapsed"] and not t["failed"] and t["mean"] >= best_mean - 0.01]
        pick = max(fine or mine, key=lambda t: (t["worst"], t["mean"]))
        chosen[f"{method} / {group}"] = pick["setting"]
    return chosen


def write(rows: list[dict], name: str) -> None:
    table = summarise(rows)
    chosen = choose(table)
    datasets = sorted({r["dataset"] for r in rows})
    lines = ["| method | tasks | setting | worst (of best) | mean (of best) | collapsed | test over majority (worst) | "
             + " | ".join(f"{d} valid" for d in datasets) + " | chosen |",
             "|---|---|---|---:|---:|---:|---:|" + "---:|" * len(datasets) + "---|"]
    for t in table:
        cells = " | ".join(f"{100 * t['per_dataset_valid'][d]:.1f}" if d in t["per_dataset_valid"] else ""
                           for d in datasets)
        mark = "**yes**" if chosen.get(f"{t['method']} / {t['group']}") == t["setting"] else ""
        worst, mean = (f"{t[k]:.3f}" if t[k] is not None else "–" for k in ("worst", "mean"))
        margin = t.get("worst_over_majority")
        margin = f"{100 * margin:+.1f}" if margin is not None else ""
        lines.append(f"| {t['method']} | {t['group']} | {t['setting']} | {worst} | {mean} | "
                     f"{t['collapsed']}/{t['runs']} | {margin} | {cells} | {mark} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from edgeclin.hardware import environment
    from edgeclin.provenance import git_commit, library_versions

    record = {"rows": rows, "table": table, "chosen": chosen, "environment": environment(),
              "versions": library_versions(), "commit": git_commit(), "command": " ".join(sys.argv)}
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    env = record["environment"]
    seeds = "; ".join(f"{d} {sorted({r['seed'] for r in rows if r['dataset'] == d})}" for d in datasets)
    (RESULTS / f"{name}.md").write_text(
        "\n".join(lines) + f"\n\nSeeds per dataset (every setting ran each): {seeds}.\n\n"
        f"Chosen (method / tasks: setting): {chosen}\n\nCommand: `{record['command']}`; "
        f"CPU {env['cpu']} (flags: {', '.join(env['isa'])}), {env['cores']} cores, one thread per run; "
        f"torch {record['versions'].get('torch')}, commit {record['commit']}.\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="lora,full")
    parser.add_argument("--datasets", default=",".join(SEARCHED), help=f"Of: {', '.join(DATASETS)}.")
    parser.add_argument("--settings", help="Only these settings (names, ';'-separated, e.g. 'lr 2e-3;lr 4e-3').")
    parser.add_argument("--jobs", type=int, default=2, help="Runs at a time (one thread each).")
    parser.add_argument("--finished-only", action="store_true",
                        help="Tabulate the runs already finished in --work; start none (the table says how many).")
    parser.add_argument("--model", help="Train this model (an offline preset such as mpnet-base, or a folder) "
                                            "instead of edgeclin's default; its runs are named after it.")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgeclin-robust-search"))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="Comma list (default: 0,1,2).")
    parser.add_argument("--results", default="search_robust_defaults",
                        help="Name of the results files in benchmarks/results/ (e.g. search_peft_defaults "
                             f"for --methods {PEFT_METHODS}).")
    args = parser.parse_args()
    data = {d: DATASETS[d][0] if isinstance(DATASETS[d][0], Path) else BUILDERS[DATASETS[d][0]](args.work)
            for d in args.datasets.split(",")}
    keep = args.settings.split(";") if args.settings else None
    # seed-major: every setting gets one seed on every dataset before any gets a second
    jobs = [(d, m, name, opts, seed, data[d]) for seed in map(int, args.seeds.split(","))
            for m in args.methods.split(",")
            for name, opts in SETTINGS[m] + [s for s in BASE_SIZE_SETTINGS.get(m, []) if keep and s[0] in keep]
            if keep is None or name in keep for d in data]
    if args.finished_only:  # a (dataset, seed) only where every setting finished it: worst cases over equal counts
        done = {(job[0], job[4]) for job in jobs}
        unfinished = [job for job in jobs if not (run_folder(job, args.work, args.model) / "metrics.json").exists()]
        done -= {(job[0], job[4]) for job in unfinished}
        jobs = [job for job in jobs if (job[0], job[4]) in done]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: run_one(job, args.work, args.model), jobs))
    write(rows, args.results)


if __name__ == "__main__":
    main()
