"""The export gate: every graph variant scored with the task metric against the fp32 ONNX model.

optimum's own export check only warns when outputs differ (optimum #978); here a variant
that loses more than ``max_drop`` points of the task's selection metric does not pass, and
the fp32 graph itself must reproduce the PyTorch model's probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeclin.tasks import get_task

EXPORT_TOLERANCE = 1e-3  # fp32 ONNX vs PyTorch, max difference of any class probability


@dataclass
class Variant:
    name: str
    path: Path
    settings: dict
    metrics: dict = field(default_factory=dict)
    drop: float | None = None  # gate-metric points lost against fp32 ONNX
    passed: bool | None = None
    files: list[Path] = field(default_factory=list)  # all the variant's files, when more than its graph

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files) if self.files else self.path.stat().st_size

    def judge(self, reference: dict, metric: str, max_drop: float) -> bool:
        """Record the drop against ``reference`` metrics; pass if it is at most ``max_drop`` points."""
        self.drop = 100 * (reference[metric] - self.metrics[metric])
        self.passed = self.drop <= max_drop
        return self.passed

    def as_record(self) -> dict:
        return {"name": self.name, "settings": self.settings, "metrics": self.metrics, "bytes": self.size,
                "drop_points": self.drop, "passed": self.passed}


def print_table(variants: list[Variant], source: dict | None, task: str) -> None:
    from rich.console import Console
    from rich.table import Table

    strategy = get_task(task)
    metric = strategy.selection_metric
    shown = [c for c in strategy.display_columns if c[0] == metric]
    shown += [c for c in strategy.display_columns if c[0] != metric][:1]
    fp32_size = variants[0].size

    def pct(metrics: dict, key: str) -> str:
        return "n/a" if metrics.get(key) is None else f"{100 * metrics[key]:.1f}"

    table = Table(title=f"export gate ({metric.replace('_', '-')}, points)")
    for column in ("variant", *(h for _, h in shown), "size MB", "size vs fp32", "drop", "gate"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    if source:
        table.add_row("pytorch fp32 (source)", *(pct(source, k) for k, _ in shown), "", "", "", "")
    for v in variants:
        gate = "" if v.passed is None else ("pass" if v.passed else "FAIL")
        table.add_row(v.name, *(pct(v.metrics, k) for k, _ in shown), f"{v.size / 1e6:.1f}",
                      f"{v.size / fp32_size:.2f}x", "" if v.drop is None else f"{v.drop:+.2f}", gate)
    Console(stderr=True, width=120).print(table)
