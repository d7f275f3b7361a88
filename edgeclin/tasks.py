"""The three task types edgeclin trains, exports and serves, and what differs between them.

- ``single_label_classification``: one label per text (or text pair); softmax, cross-entropy;
  selected and gated on macro-F1.
- ``multi_label_classification``: a set of labels per text; sigmoid, binary cross-entropy;
  one decision threshold tuned on validation; selected and gated on micro-F1.
- ``token_classification`` (NER): a BIO tag per word; the label of a word is predicted at its
  first word piece; selected and gated on entity-level F1 (seqeval / CoNLL semantics).

This module is numpy-only: the torch-free runtime imports it.
"""

from __future__ import annotations

import numpy as np

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
TOKEN = "token_classification"
TASKS = (SINGLE_LABEL, MULTI_LABEL, TOKEN)

# the metric that picks the best epoch and gates int8 exports
SELECTION_METRIC = {SINGLE_LABEL: "macro_f1", MULTI_LABEL: "micro_f1", TOKEN: "f1"}
# optimum's exporter task names
EXPORT_TASK = {SINGLE_LABEL: "text-classification", MULTI_LABEL: "text-classification",
               TOKEN: "token-classification"}
# how each task's metrics are shown in tables: (key, heading)
DISPLAY_COLUMNS = {
    SINGLE_LABEL: [("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("weighted_f1", "weighted-F1"),
                   ("auroc", "AUROC")],
    MULTI_LABEL: [("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"), ("micro_auroc", "micro-AUROC"),
                  ("precision_at_1", "P@1")],
    TOKEN: [("f1", "entity F1"), ("precision", "precision"), ("recall", "recall"), ("accuracy", "token acc.")],
}
DEFAULT_THRESHOLD = 0.5


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    return task


def scores_from_logits(task: str, logits: np.ndarray) -> np.ndarray:
    """Class probabilities: softmax over the last axis, or independent sigmoids for multi-label."""
    logits = np.asarray(logits)
    if not np.issubdtype(logits.dtype, np.floating):
        logits = logits.astype(np.float64)
    # computed in the logits' own precision, so every path (export gate, predict, bench) gives
    # bit-identical probabilities for the same logits
    if task == MULTI_LABEL:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def first_pieces(word_ids: list[int | None]) -> list[tuple[int, int]]:
    """(word, position of its first piece) for each word that has pieces, in word order.

    Words cut by truncation are absent, and so are words the tokenizer turns into no piece at
    all (a soft hyphen, a zero-width space): always index by the word id, never by the rank.
    """
    pairs, seen = [], set()
    for position, word in enumerate(word_ids):
        if word is not None and word not in seen:
            seen.add(word)
            pairs.append((word, position))
    return pairs


def word_tags(scores: np.ndarray, word_ids: list[int | None], n_words: int, labels: list[str],
              outside: str = "O") -> list[str]:
    """A tag per word from per-piece probabilities; words cut off by truncation get ``outside``."""
    tags = [outside] * n_words
    for word, position in first_pieces(word_ids):
        tags[word] = labels[int(np.argmax(scores[position]))]
    return tags


def bio_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """Entities as (type, first word, last word + 1), CoNLL-style: a stray I- starts an entity."""
    spans: list[tuple[str, int, int]] = []
    kind, start = None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-")
        continues = prefix == "I" and name == kind
        if kind is not None and not continues:
            spans.append((kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = name, i
    return spans


def headline(task: str, metrics: dict) -> str:
    """The task's selection metric and its next display metric, e.g. "macro-F1 81.1, accuracy 82.3"."""
    columns = DISPLAY_COLUMNS[task]
    selected = SELECTION_METRIC[task]
    shown = [c for c in columns if c[0] == selected] + [c for c in columns if c[0] != selected][:1]
    return ", ".join(f"{heading} {100 * metrics[key]:.1f}" for key, heading in shown if metrics.get(key) is not None)
