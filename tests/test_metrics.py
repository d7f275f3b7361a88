import numpy as np
import pytest

from edgeclin.metrics import classification_metrics


def test_binary_metrics():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    m = classification_metrics(labels, probs)
    assert m["accuracy"] == 0.75
    assert m["auroc"] == 1.0  # ranking is perfect even though one prediction is wrong
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_multiclass_auroc_ignores_absent_classes():
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.4, 0.4]])
    m = classification_metrics(labels, probs)
    assert m["auroc"] == pytest.approx(1.0)  # class 2 never occurs: left out, not counted as 0.5
    assert m["accuracy"] == 1.0


def test_auroc_none_when_undefined():
    m = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]))
    assert m["auroc"] is None and m["accuracy"] == 0.5
