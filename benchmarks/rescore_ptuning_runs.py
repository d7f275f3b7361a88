"""Re-score the test split of P-tuning runs trained before snapshots kept the prompt encoder.

Until then, the test of the best epoch loaded peft's saved adapter — P-tuning's encoder *output* —
into a model that still ran the encoder, so the prompt went through the MLP twice and the recorded
test score was wrong. Training, the validation scores (and so the best epoch) and the saved adapter
were right. This scores each run's saved adapter as ``edgeclin`` loads it for inference (peft's
inference mode: the prompt the fixed training tests with) on the run's own test rows, and rewrites
``metrics.json``'s ``test``, keeping the recorded value under ``test_before_rescore``. A run
already re-scored is left as it is.

    .venv/bin/python benchmarks/rescore_ptuning_runs.py RUN [RUN ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rescore(path: Path) -> str:
    from edgeclin.artifacts import open_model_folder
    from edgeclin.files import write_json
    from edgeclin.run_data import run_examples
    from edgeclin.torch_model import reference_scores

    adapter = path / "adapter_config.json"
    if not adapter.is_file() or json.loads(adapter.read_text())["peft_type"] != "P_TUNING":
        return f"{path}: not a P-tuning run, left as it is"
    metrics = json.loads((path / "metrics.json").read_text())
    if "test_before_rescore" in metrics:
        return f"{path}: re-scored already"
    run = open_model_folder(path)
    test, _ = reference_scores(run, run_examples(run, "test"))
    metrics["test_before_rescore"], metrics["test"] = metrics["test"], test
    write_json(path / "metrics.json", metrics)
    key = metrics["selection_metric"]
    return f"{path}: test {key} {100 * metrics['test_before_rescore'][key]:.1f} -> {100 * test[key]:.1f}"


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    sys.path.insert(0, str(ROOT))
    for folder in sys.argv[1:]:
        print(rescore(Path(folder)), flush=True)


if __name__ == "__main__":
    main()
