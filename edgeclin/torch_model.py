"""The trained model in PyTorch: loaded in fp32 from a run folder, and run on encoded rows.

Merge, export and bench compare against this model, so it is loaded one way everywhere:
an adapter on its own base (``PeftModel``, unmerged), or the whole model of a full run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeclin.artifacts import ADAPTER_CONFIG, RunFolder
from edgeclin.encoding import EncodedSplit
from edgeclin.errors import EdgeclinError
from edgeclin.files import read_json
from edgeclin.tasks import get_task


def base_model_path(run: RunFolder) -> str:
    """Where the adapter's base weights are: re-resolved by name, so runs move between machines."""
    from edgeclin.models import resolve_model

    recorded = run.record.resolved.base_model if run.record else None
    if recorded and Path(recorded).is_dir():  # the very weights it was trained on
        return recorded
    if run.record is not None:
        try:
            return resolve_model(run.config.model, init=run.config.init).path
        except EdgeclinError:
            pass
    named = read_json(run.path / ADAPTER_CONFIG).get("base_model_name_or_path")
    if named:
        return resolve_model(named).path
    raise EdgeclinError(f"{run.path}: cannot tell which base model the adapter belongs to")


def check_mergeable(run: RunFolder) -> None:
    from edgeclin.methods import METHODS, NOT_MERGEABLE, method_of_adapter

    method = method_of_adapter(read_json(run.path / ADAPTER_CONFIG).get("peft_type", ""))
    if method is None and run.record is not None:
        method = METHODS.get(run.config.method)
    if method is not None and not method.mergeable:
        raise EdgeclinError(f"{run.path} was trained with {method.name} tuning, which cannot be merged or exported: "
                            f"{NOT_MERGEABLE}")


def load_torch_model(run: RunFolder):
    """The trained model in fp32, eval mode: PeftModel for an adapter, plain model otherwise."""
    from edgeclin.models import load_classifier

    if not run.is_adapter:
        return load_classifier(str(run.path), task=run.task).eval()
    from peft import PeftModel

    base = load_classifier(base_model_path(run), run.labels, task=run.task)
    try:
        model = PeftModel.from_pretrained(base, str(run.path), is_trainable=False)
    except Exception as exc:
        raise EdgeclinError(f"{run.path}: the adapter does not fit its base model: {exc}") from None
    return model.eval()


def torch_logits(model, encoded: EncodedSplit, task: str, pad_id: int, token_types: bool,
                 batch_size: int = 32) -> list[np.ndarray]:
    """The model's logits of each encoded row: (classes,), or (pieces, tags) for NER."""
    import torch

    strategy = get_task(task)
    outputs = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            rows = list(range(start, min(start + batch_size, len(encoded))))
            batch = strategy.batch(encoded, rows, pad_id, token_types)
            batch.pop("labels")
            logits = model(**batch).logits.float().numpy()
            outputs.extend(row[:encoded.lengths[i]] if row.ndim == 2 else row for i, row in zip(rows, logits,
                                                                                                 strict=True))
    return outputs


def max_difference(a: list, b: list) -> float:
    """Largest absolute difference between two lists of per-row arrays."""
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def reference_scores(run: RunFolder, examples: list, model=None) -> tuple[dict, list[np.ndarray]]:
    """The PyTorch model's metrics and probabilities per row (fp32, unmerged adapter if any), tokenised
    exactly as the run's ``input_format`` says: the reference every exported variant is checked against."""
    from edgeclin.models import load_tokenizer

    strategy = get_task(run.task)
    tokenizer = load_tokenizer(str(run.path))
    encoded = strategy.encode(tokenizer, examples, {label: i for i, label in enumerate(run.labels)},
                              run.input_format)
    model = model if model is not None else load_torch_model(run)
    logits = torch_logits(model, encoded, run.task, tokenizer.pad_token_id or 0,
                          "token_type_ids" in tokenizer.model_input_names)
    scores = [strategy.scores(row) for row in logits]
    metrics, _ = strategy.evaluate(examples, encoded, scores, run.labels, run.threshold)
    return metrics, scores
