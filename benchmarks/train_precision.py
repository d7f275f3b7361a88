"""Does bf16 autocast train faster on this CPU, at the same accuracy? Side by side, interleaved.

Times the same short LoRA and full training runs (fixed steps, real mtsamples notes at 256
tokens) in fp32 and bf16, alternating fp32/bf16 for ``--repeats`` rounds, nothing else running.
Accuracy at equal settings comes from the default search (benchmarks/search_defaults.py runs two
settings in both precisions). Writes benchmarks/results/train_precision.{json,md}.

    .venv/bin/python benchmarks/train_precision.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "mtsamples"
RESULTS = ROOT / "benchmarks" / "results"


def samples_per_second(method: str, precision: str) -> float:
    out = Path(tempfile.mkdtemp()) / "run"
    subprocess.run([sys.executable, "-m", "edgeclin", "train", "--data", str(DATA), "--method", method,
                    "--precision", precision, "--max-length", "256", "--limit", "160", "--max-steps", "10",
                    "--batch-size", "16", "-o", str(out), "--quiet"], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True)
    return json.loads((out / "metrics.json").read_text())["training"]["samples_per_second"]


def main() -> None:
    repeats = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 2
    rows = []
    for method in ("lora", "full"):
        speeds: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(repeats):
            for precision in ("fp32", "bf16"):
                speeds[precision].append(samples_per_second(method, precision))
        fp32, bf16 = statistics.median(speeds["fp32"]), statistics.median(speeds["bf16"])
        rows.append({"method": method, "fp32_samples_per_s": fp32, "bf16_samples_per_s": bf16,
                     "speedup": bf16 / fp32, "all": speeds})
        print(f"{method}: fp32 {fp32:.1f}, bf16 {bf16:.1f} samples/s ({bf16 / fp32:.2f}x)", flush=True)
    sys.path.insert(0, str(ROOT))
    from edgeclin.hardware import environment

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_precision.json").write_text(json.dumps({"rows": rows, "environment": environment()},
                                                             indent=2) + "\n")
    lines = ["| method | fp32 samples/s | bf16 samples/s | bf16 speed-up |", "|---|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['fp32_samples_per_s']:.1f} | {r['bf16_samples_per_s']:.1f} | "
              f"{r['speedup']:.2f}x |" for r in rows]
    (RESULTS / "train_precision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
