"""Metric functions, computed with scikit-learn and seqeval. Which one a task uses is in ``edgeclin.tasks``."""

from __future__ import annotations

import numpy as np


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float | None]:
    """Accuracy, macro-F1, weighted-F1 and AUROC (binary, or macro one-vs-rest).

    Scores are fractions in [0, 1]. AUROC is averaged over the classes that occur in
    ``labels`` (a class absent from a split has no ROC curve); it is None when no class
    has both positives and negatives.
    """
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predictions = probabilities.argmax(axis=1)
    result: dict[str, float | None] = {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(labels, predictions, average="weighted", zero_division=0)),
    }
    n_classes = probabilities.shape[1]
    if n_classes == 2:
        both = len(np.unique(labels)) == 2
        result["auroc"] = float(roc_auc_score(labels, probabilities[:, 1])) if both else None
    else:
        per_class = [
            roc_auc_score(labels == c, probabilities[:, c])
            for c in range(n_classes)
            if 0 < (labels == c).sum() < len(labels)
        ]
        result["auroc"] = float(np.mean(per_class)) if per_class else None
    return result


def tune_threshold(targets: np.ndarray, probabilities: np.ndarray) -> float:
    """The decision threshold (0.05 … 0.95) with the best micro-F1; ties go to the one nearest 0.5."""
    from sklearn.metrics import f1_score

    grid = np.round(np.arange(0.05, 0.951, 0.05), 2)
    scores = [f1_score(targets, probabilities >= t, average="micro", zero_division=0) for t in grid]
    best = max(scores)
    return float(min((t for t, s in zip(grid, scores, strict=True) if s == best), key=lambda t: abs(t - 0.5)))


def multilabel_metrics(targets: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """Micro/macro-F1 at ``threshold``, micro/macro AUROC and precision@k (k = 1, 3, 5).

    Macro scores average over the labels that occur in ``targets`` (AUROC needs positives and
    negatives; F1 of an absent label is undefined). Precision@k: of the k most probable labels
    of a row, the fraction that are true, averaged over rows.
    """
    from sklearn.metrics import f1_score, roc_auc_score

    targets = np.asarray(targets).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predictions = (probabilities >= threshold).astype(int)
    present = np.flatnonzero(targets.sum(axis=0) > 0)
    result: dict[str, float | None] = {
        "micro_f1": float(f1_score(targets, predictions, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(targets[:, present], predictions[:, present], average="macro",
                                   zero_division=0)) if len(present) else None,
        "threshold": float(threshold),
    }
    rankable = [c for c in range(targets.shape[1]) if 0 < targets[:, c].sum() < len(targets)]
    result["macro_auroc"] = (float(np.mean([roc_auc_score(targets[:, c], probabilities[:, c]) for c in rankable]))
                             if rankable else None)
    flat = targets.ravel()
    result["micro_auroc"] = float(roc_auc_score(flat, probabilities.ravel())) if 0 < flat.sum() < len(flat) else None
    order = np.argsort(-probabilities, axis=1)
    for k in (1, 3, 5):
        if k <= targets.shape[1]:
            top = np.take_along_axis(targets, order[:, :k], axis=1)
            result[f"precision_at_{k}"] = float(top.sum(axis=1).mean() / k)
    result["exact_match"] = float((predictions == targets).all(axis=1).mean())
    return result


def entity_metrics(true_tags: list[list[str]], predicted_tags: list[list[str]]) -> dict:
    """Entity-level precision, recall and F1 (seqeval, CoNLL semantics), micro-averaged and per type.

    An entity counts only when its type and both boundaries match. Token accuracy is added
    for reference.
    """
    from seqeval.metrics import classification_report

    report = classification_report(true_tags, predicted_tags, output_dict=True, zero_division=0)
    micro = report["micro avg"]
    per_type = {name: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]),
                       "support": int(v["support"])}
                for name, v in report.items() if not name.endswith(" avg")}
    tokens = sum(len(t) for t in true_tags)
    correct = sum(a == b for t, p in zip(true_tags, predicted_tags, strict=True) for a, b in zip(t, p, strict=True))
    return {"precision": float(micro["precision"]), "recall": float(micro["recall"]), "f1": float(micro["f1-score"]),
            "accuracy": correct / max(tokens, 1), "entities": int(micro["support"]), "per_type": per_type}
