"""Model cards: the README.md of a run folder and of a bundle, written from their records.

What a reviewer in a hospital asks first: which base model and method, trained on how many
rows of what, scoring what on how large a test split, how many inputs were cut, what it is
for and not for, and under which licence the base model is. A bundle's card adds the export
gate (fp32 against int8, sizes) and the CPU its engines were measured on.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgeclin.artifacts import BundleManifest, RunRecord
from edgeclin.tasks import get_task

LIMITS = ("Not validated for clinical decisions: it is a research and engineering artifact. Check it on your own "
          "data and population before any use that touches patient care; it was trained on the data named here, "
          "which may differ from yours in specialty, institution, language and time.")


def base_model_licence(model_path: str) -> str:
    """The ``license:`` of the base model's own card, when it has one."""
    card = Path(model_path) / "README.md"
    if card.is_file():
        match = re.search(r"^license:\s*(\S+)", card.read_text(encoding="utf-8", errors="replace"), re.MULTILINE)
        if match:
            return match.group(1)
    return "not stated in the base model's folder: check its own model card"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _metric_rows(task: str, metrics: dict) -> list[str]:
    columns = get_task(task).display_columns
    return ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---:|" * len(columns),
            "| " + " | ".join(_pct(metrics.get(k)) for k, _ in columns) + " |"]


def _data_lines(record: RunRecord, metrics: dict) -> list[str]:
    lines = ["| split | source | rows | skipped rows | cut to max length |", "|---|---|---:|---:|---:|"]
    for name, split in record.data.items():
        cut = (metrics.get("truncation") or {}).get(name, {}).get("truncated", "n/a")
        lines.append(f"| {name} | {split.get('source')} | {split.get('rows')} | {split.get('skipped_rows', 0)} | "
                     f"{cut} |")
    return lines


def run_card(record: RunRecord, metrics: dict) -> str:
    config, resolved = record.config, record.resolved
    p = metrics.get("parameters", {})
    test_rows = record.data.get("test", {}).get("rows")
    epochs, metric = metrics.get("training", {}).get("epochs_run"), get_task(resolved.task).selection_metric
    lines = [f"# {config.model} fine-tuned with {config.method} ({resolved.task})", "",
             f"- Base model: `{config.model}` (`{resolved.model_path}`), licence: "
             f"{base_model_licence(resolved.model_path)}",
             f"- Method: {config.method}, learning rate {resolved.lr:g}, {epochs} epoch(s), best epoch "
             f"{metrics.get('best_epoch')} by validation {metric}",
             f"- Trainable parameters: {p.get('trainable', 0):,} of {p.get('total', 0):,} "
             f"({p.get('trainable_percent', 0):.2f}%)",
             f"- Inputs: at most {config.max_length} tokens ({config.truncation} kept when longer)",
             f"- Labels ({len(resolved.labels)}): {', '.join(resolved.labels[:20])}"
             + (" ..." if len(resolved.labels) > 20 else ""), ""]
    if metrics.get("init") == "random":
        lines += ["**Random weights (--init random): the scores below mean nothing.**", ""]
    if metrics.get("degenerate"):
        lines += [f"**Collapsed at its best epoch: {metrics['degenerate']}.**", ""]
    lines += [f"## Test split ({test_rows} rows), best epoch", "",
              *_metric_rows(resolved.task, metrics.get("test", {})), "", "## Data", "", *_data_lines(record, metrics),
              "", "## Intended use and limits", "", LIMITS, "",
              f"Trained by edgeclin {record.versions.get('edgeclin')} (commit {record.git_commit}); every option is in "
              "`run.json`, every number in `metrics.json`.", ""]
    return "\n".join(lines)


def bundle_card(manifest: BundleManifest) -> str:
    gate = manifest.gate
    metric = gate.get("metric")
    lines = [f"# edgeclin bundle: {manifest.source.get('model') or manifest.model_type} ({manifest.task})", "",
             f"- Source: {manifest.source.get('kind')} `{manifest.source.get('path')}` "
             f"(method {manifest.source.get('method')})",
             f"- Chosen graph: {manifest.chosen}; inputs of at most {manifest.input.max_length} tokens",
             f"- Gate: {metric}, at most {gate.get('max_drop_points')} points below the fp32 ONNX model, on "
             f"{gate.get('eval_examples')} examples of {gate.get('eval_data')}", "",
             f"| variant | {metric} | size MB | drop (points) | gate |", "|---|---:|---:|---:|---|"]
    for v in gate.get("variants", []):
        drop = "" if v.get("drop_points") is None else f"{v['drop_points']:+.2f}"
        passed = "" if v.get("passed") is None else ("pass" if v["passed"] else "fail")
        lines.append(f"| {v['name']} | {_pct(v['metrics'].get(metric))} | {v['bytes'] / 1e6:.1f} | {drop} | "
                     f"{passed} |")
    lines += [f"| {g['name']} (`{file}`, for other engines) | {_pct(g['metrics'].get(metric))} | "
              f"{g['bytes'] / 1e6:.1f} | {g['drop_points']:+.2f} | {'pass' if g.get('passed') else 'fail'} |"
              for file, g in manifest.graphs.items()]
    runtime = manifest.runtime or {}
    if runtime:
        cpu = runtime.get("cpu", {})
        lines += ["", f"Engines measured on {cpu.get('model')} ({', '.join(cpu.get('isa', []))}), batch 1, "
                  "one thread:",
                  "", "| backend | graph | precision | p50 ms | passed |", "|---|---|---|---:|---|"]
        lines += [f"| {c['backend']} | {c['model']} | {c['precision']} | "
                  + (f"{c['p50_ms']:.2f} | {c['passed']} |" if "p50_ms" in c else f"– | cannot load it: {c['error']} |")
                  for c in runtime.get("candidates", [])]
        preferred = runtime.get("preferred", {})
        lines += ["", f"`--backend auto` runs {preferred.get('backend')} ({preferred.get('precision')}) on this "
                  "kind of CPU, onnxruntime on `model.onnx` elsewhere."]
    lines += ["", "## Intended use and limits", "", LIMITS, "", "Every file is checksummed in `manifest.json`; "
              "`edgeclin predict` refuses a bundle whose bytes changed.", ""]
    return "\n".join(lines)
