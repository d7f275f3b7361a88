"""Task metrics, computed with scikit-learn."""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


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
