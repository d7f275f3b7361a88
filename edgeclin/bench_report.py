"""What ``edgeclin bench`` writes: results.json and .csv, report.md with ratios, two plots; and ``--compare``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from edgeclin.errors import EdgeclinError
from edgeclin.files import OutputFolder, read_json, write_json
from edgeclin.tasks import SINGLE_LABEL, get_task

CSV_HEADER = ["kind", "variant", "precision", "threads", "batch", "seq_len", "p50_ms", "p90_ms", "p99_ms",
              "texts_per_s", "metric", "metric_value", "peak_rss_mb", "load_s", "bytes", "status"]


def _main_metric(row: dict) -> str:
    """The metric that stands for a variant's accuracy: its task's selection metric."""
    return get_task(row.get("task", SINGLE_LABEL)).selection_metric


def _csv_rows(results: dict) -> list[list]:
    rows = [["latency", r["variant"], r.get("precision"), r.get("threads"), r.get("batch"), r.get("seq_len"),
             r.get("p50_ms"), r.get("p90_ms"), r.get("p99_ms"), "", "", "", "", "", "", r.get("status", "ok")]
            for r in results["latency"]]
    for r in results["end_to_end"]:
        metric = _main_metric(r)
        rows.append(["end_to_end", r["variant"], r.get("precision"), r.get("threads"), "", r.get("max_length"), "",
                     "", "", r.get("texts_per_s"), metric, (r.get("metrics") or {}).get(metric), r.get("peak_rss_mb"),
                     r.get("load_s"), r.get("bytes"), r.get("status", "ok")])
    return rows


def write_outputs(results: dict, out: Path, overwrite: bool = False) -> None:
    """Every output file, built beside ``out`` and renamed into place together."""
    with OutputFolder(out, overwrite, what="bench folder") as folder:
        write_json(folder.staging / "results.json", results)
        with (folder.staging / "results.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_HEADER)
            writer.writerows(_csv_rows(results))
        (folder.staging / "report.md").write_text(report_markdown(results))
        plot(results, folder.staging)
        folder.publish()


def _baseline_name(results: dict) -> str | None:
    return next((v["name"] for v in results["variants"] if v.get("baseline")), None)


def _latency_lines(results: dict, baseline: str | None) -> list[str]:
    lines = ["## Latency (ms; each variant in a fresh process, alternated over rounds)", "",
             "| variant | threads | batch | seq | p50 ms [rounds' min-max] | p90 ms | p99 ms | speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base_p50 = {(r["threads"], r["batch"], r["seq_len"]): r["p50_ms"] for r in results["latency"]
                if r["variant"] == baseline and "p50_ms" in r}
    for r in results["latency"]:
        if "p50_ms" not in r:
            lines.append(f"| {r['variant']} | | | | {r['status']} | | | |")
            continue
        ref = base_p50.get((r["threads"], r["batch"], r["seq_len"]))
        ratio = f"{ref / r['p50_ms']:.2f}x" if ref else ""
        spread = f" [{r['round_p50_min_ms']:.2f}-{r['round_p50_max_ms']:.2f}]" if "round_p50_min_ms" in r else ""
        lines.append(f"| {r['variant']} | {r['threads']} | {r['batch']} | {r['seq_len']} | {r['p50_ms']:.2f}{spread} | "
                     f"{r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {ratio} |")
    return lines


def _end_to_end_lines(results: dict, baseline: str | None) -> list[str]:
    task = next((r["task"] for r in results["end_to_end"] if "task" in r), SINGLE_LABEL)
    shown = get_task(task).display_columns[:2]
    lines = ["", "## End to end on the test split (fresh process per variant)", "",
             f"| variant | texts/s | speed-up | {shown[0][1]} | {shown[1][1]} | peak RSS MiB | load s | size MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    ref = next((r.get("texts_per_s") for r in results["end_to_end"] if r["variant"] == baseline), None)
    for r in results["end_to_end"]:
        if "texts_per_s" not in r:
            lines.append(f"| {r['variant']} | {r['status']} | | | | | | |")
            continue
        m = r["metrics"]
        ratio = f"{r['texts_per_s'] / ref:.2f}x" if ref else ""
        values = " | ".join("n/a" if m.get(key) is None else f"{100 * m[key]:.1f}" for key, _ in shown)
        lines.append(f"| {r['variant']} | {r['texts_per_s']:.1f} | {ratio} | {values} | {r['peak_rss_mb']:.0f} | "
                     f"{r['load_s']:.2f} | {r['bytes'] / 1e6:.1f} |")
    return lines


def report_markdown(results: dict) -> str:
    env = results["environment"]
    baseline = _baseline_name(results)
    lines = ["# edgeclin bench", "",
             f"CPU: {env['cpu']} ({env['cores']} cores; ISA: {', '.join(env['isa'])}); GPU: {env['gpu'] or 'none'}; "
             f"threads measured: {env['threads_measured']}; commit {env['git_commit']}.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v), "",
             f"Baseline (1.00x): **{baseline}**. Ratios are baseline time / variant time (higher is faster), "
             "measured side by side in this run.", "", *_latency_lines(results, baseline)]
    if results["end_to_end"]:
        lines += _end_to_end_lines(results, baseline)
    return "\n".join(lines) + "\n"


def _plot_latency(results: dict, folder: Path, plt) -> None:
    rows = [r for r in results["latency"] if "p50_ms" in r]
    threads, length = min(r["threads"] for r in rows), min(r["seq_len"] for r in rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        points = sorted((r["batch"], r["p50_ms"]) for r in rows
                        if r["variant"] == variant and r["threads"] == threads and r["seq_len"] == length)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=variant)
    ax.set(xlabel="batch size", ylabel="p50 latency (ms)", xscale="log", yscale="log",
           title=f"latency vs batch size ({length} tokens, {threads} thread(s))")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "latency_vs_batch.png", dpi=120)
    plt.close(fig)


def _plot_accuracy(results: dict, folder: Path, plt) -> None:
    e2e = {r["variant"]: r for r in results["end_to_end"] if "texts_per_s" in r}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    metric = _main_metric(next(iter(e2e.values())))
    for name, r in e2e.items():
        value = r["metrics"].get(metric)
        if value is not None:
            ax.scatter(1000 / r["texts_per_s"], 100 * value)
            ax.annotate(name, (1000 / r["texts_per_s"], 100 * value), fontsize=7)
    ax.set(xlabel="ms per text, end to end", ylabel=metric.replace("_", "-"), title="accuracy vs latency")
    fig.tight_layout()
    fig.savefig(folder / "accuracy_vs_latency.png", dpi=120)
    plt.close(fig)


def plot(results: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if any("p50_ms" in r for r in results["latency"]):
        _plot_latency(results, folder, plt)
    if any("texts_per_s" in r for r in results["end_to_end"]):
        _plot_accuracy(results, folder, plt)


def _load_results(path) -> dict:
    try:
        results = read_json(Path(path))
    except FileNotFoundError:
        raise EdgeclinError(f"no such results file: {path}") from None
    except json.JSONDecodeError as exc:
        raise EdgeclinError(f"{path}, line {exc.lineno}, column {exc.colno}: invalid JSON") from None
    if not isinstance(results, dict) or "latency" not in results:
        raise EdgeclinError(f"{path} is not an edgeclin bench results.json")
    return results


def _keyed(results: dict, kind: str) -> dict:
    if kind == "latency":
        return {(r["variant"], f"{r['threads']} thr, batch {r['batch']}, {r['seq_len']} tok"): r["p50_ms"]
                for r in results["latency"] if "p50_ms" in r}
    return {(r["variant"], "end to end texts/s"): r["texts_per_s"] for r in results["end_to_end"] if "texts_per_s" in r}


def compare(first: str | Path, second: str | Path) -> str:
    """A table of second/first ratios for every measurement the two results files share."""
    a, b = _load_results(first), _load_results(second)
    lines = [f"# {second} vs {first} (ratio > 1: the second is faster)", "",
             "| variant | setting | first | second | ratio |", "|---|---|---:|---:|---:|"]
    shared = 0
    for kind, unit in (("latency", "ms"), ("end_to_end", "texts/s")):
        ka, kb = _keyed(a, kind), _keyed(b, kind)
        for key in ka.keys() & kb.keys():
            shared += 1
            ratio = ka[key] / kb[key] if kind == "latency" else kb[key] / ka[key]
            lines.append(f"| {key[0]} | {key[1]} | {ka[key]:.2f} {unit} | {kb[key]:.2f} {unit} | {ratio:.2f}x |")
    if not shared:
        raise EdgeclinError(f"{first} and {second} share no measurement (different variants or settings)")
    return "\n".join(lines) + "\n"
