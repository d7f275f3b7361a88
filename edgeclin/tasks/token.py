"""Token classification (NER): a BIO tag per word, predicted at the word's first piece;
selected and gated on entity-level F1 (seqeval, CoNLL semantics).

Data is JSONL with ``tokens`` (the words) and ``tags``. The exported tagger takes pre-split
words or raw text (split into words as BERT does) and returns entities with character offsets.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgeclin.encoding import (
    IGNORE_INDEX,
    EncodedSplit,
    encode_words,
    encode_words_marking_cuts,
    first_pieces,
    split_words,
)
from edgeclin.errors import EdgeclinError
from edgeclin.inference import OnnxModel
from edgeclin.metrics import entity_metrics
from edgeclin.records import first_records, has_bad_bytes, read_split_with, text_example
from edgeclin.schema import ColumnChoice, Columns, Dataset, Example, InputFormat, Split
from edgeclin.tasks.base import Task

OUTSIDE = "O"


def word_tags(scores: np.ndarray, word_ids: list[int | None], n_words: int, labels: list[str]) -> list[str]:
    """A tag per word from per-piece probabilities; words cut off by truncation get ``O``."""
    tags = [OUTSIDE] * n_words
    for word, position in first_pieces(word_ids):
        tags[word] = labels[int(np.argmax(scores[position]))]
    return tags


def bio_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """Entities as (type, first word, last word + 1), CoNLL-style: a stray I- starts an entity."""
    spans: list[tuple[str, int, int]] = []
    kind, start = None, 0
    for i, tag in enumerate([*tags, OUTSIDE]):
        prefix, _, name = tag.partition("-")
        continues = prefix == "I" and name == kind
        if kind is not None and not continues:
            spans.append((kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = name, i
    return spans


def piece_labels(word_ids: list[int | None], tags: tuple[str, ...], label2id: dict[str, int]) -> list[int]:
    """The tag id of each word on its first piece; IGNORE_INDEX elsewhere."""
    labels = [IGNORE_INDEX] * len(word_ids)
    for word, position in first_pieces(word_ids):
        labels[position] = label2id.get(tags[word], IGNORE_INDEX)  # a type unseen in training: not learnt
    return labels


@dataclass
class Entity:
    type: str
    start: int  # character offsets in the input text, end exclusive
    end: int
    text: str
    score: float  # mean probability of the entity's word tags

    def as_dict(self) -> dict:
        return {"type": self.type, "start": self.start, "end": self.end, "text": self.text,
                "score": round(self.score, 6)}


@dataclass
class TaggedText:
    """NER result of one text: its words, a tag per word, and the entities they form."""

    text: str
    words: list[str]
    tags: list[str]
    entities: list[Entity]
    truncated: bool = False  # longer than the model's max length: the later words are tagged O


class Tagger(OnnxModel):
    """An ONNX token classifier (NER): words in, a BIO tag per word and character-offset entities out."""

    def word_scores(self, words: list[list[str]], batch_size: int = 32) -> list[np.ndarray]:
        """Tag probabilities at each word's first piece, (words, tags) per text; cut words get O."""
        return self._word_scores(words, batch_size)[0]

    def _word_scores(self, words: list[list[str]], batch_size: int) -> tuple[list[np.ndarray], list[bool]]:
        ids, types, word_ids, cut = encode_words_marking_cuts(self.tokenizer, words, self.max_length)
        if not ids:
            return [], []
        logits = self.run_encoded(ids, types, batch_size)
        out = []
        outside = self.labels.index(OUTSIDE) if OUTSIDE in self.labels else 0
        for row_words, row_word_ids, row_logits in zip(words, word_ids, logits, strict=True):
            scores = np.zeros((len(row_words), len(self.labels)), dtype=np.float32)
            scores[:, outside] = 1.0
            pairs = first_pieces(row_word_ids)
            if pairs:
                found, positions = (list(x) for x in zip(*pairs, strict=True))
                scores[found] = self.strategy.scores(row_logits[positions])
            out.append(scores)
        return out, cut

    def predict_words(self, words: list[list[str]], batch_size: int = 32) -> list[list[str]]:
        """A tag per word of each pre-split text."""
        return [[self.labels[i] for i in s.argmax(axis=1)] for s in self.word_scores(words, batch_size)]

    def predict(self, texts: list[str] | None = None, *, words: list[list[str]] | None = None,
                batch_size: int = 32) -> list[TaggedText]:
        """Entities of raw ``texts`` (split into words as BERT does) or of pre-split ``words``.

        Entity offsets index the text: the raw text, or for ``words`` the words joined by single spaces.
        """
        if batch_size < 1:
            raise EdgeclinError("batch size must be at least 1")
        if (texts is None) == (words is None):
            raise EdgeclinError("give either texts or words")
        texts, spans = (texts, [split_words(t) for t in texts]) if texts is not None else _joined(words)
        scores, cut = self._word_scores([[w for w, _, _ in row] for row in spans], batch_size)
        return [self._tagged(text, row, s, c) for text, row, s, c in zip(texts, spans, scores, cut, strict=True)]

    def _tagged(self, text: str, row: list[tuple[str, int, int]], scores: np.ndarray, cut: bool) -> TaggedText:
        tags = [self.labels[i] for i in scores.argmax(axis=1)]
        entities = [Entity(kind, row[first][1], row[last - 1][2], text[row[first][1]:row[last - 1][2]],
                           float(scores[first:last].max(axis=1).mean())) for kind, first, last in bio_spans(tags)]
        return TaggedText(text, [w for w, _, _ in row], tags, entities, cut)


def _joined(words: list[list[str]]) -> tuple[list[str], list[list[tuple[str, int, int]]]]:
    """Pre-split words as texts (joined by single spaces) with each word's character span."""
    texts, spans = [], []
    for row in words:
        offsets, position = [], 0
        for word in row:
            offsets.append((word, position, position + len(word)))
            position += len(word) + 1
        texts.append(" ".join(row))
        spans.append(offsets)
    return texts, spans


def _align_virtual_tokens(model, count: int) -> None:
    """Prompt/P-tuning: keep labels and logits aligned with the real tokens.

    peft prepends the virtual tokens to the input but neither shifts the labels nor drops the
    virtual positions from the logits (loss fails on mismatched lengths); so here the labels get
    ``count`` ignored positions in front, and the logits lose them.
    """
    import torch.nn.functional as F

    forward = model.forward

    def aligned_forward(*args, labels=None, **kwargs):
        if labels is not None:
            labels = F.pad(labels, (count, 0), value=IGNORE_INDEX)
        output = forward(*args, labels=labels, **kwargs)
        output.logits = output.logits[:, count:]
        return output

    model.forward = aligned_forward


class TokenTask(Task):
    name = "token_classification"
    short_name = "NER"
    selection_metric = "f1"
    display_columns = (("f1", "entity F1"), ("precision", "precision"), ("recall", "recall"),
                       ("accuracy", "token acc."))
    export_task = "token-classification"
    auto_model = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    predictor = Tagger
    answers_entities = True
    reads_pairs = False

    def matches_data(self, records: list[dict], columns: Columns, multi_label: bool) -> bool:
        present = {key for record in records for key in record}
        return columns.text not in present and columns.tokens in present

    def matches_model_config(self, config: dict) -> bool:
        return any(a.endswith("ForTokenClassification") for a in config.get("architectures") or [])

    def read_split(self, path: Path, name: str, columns: Columns, skip_bad_rows: bool = False) -> Split:
        path = Path(path)
        if path.suffix != ".jsonl":
            raise EdgeclinError(f"{path}: token classification (NER) data must be JSONL with "
                                f"{columns.tokens!r} and {columns.tags!r} lists")
        wanted = [c for c in (columns.tokens, columns.tags) if c]
        return read_split_with(path, name, wanted, lambda r: _token_example(r, columns), skip_bad_rows, kind="key")

    def example_labels(self, example: Example) -> set[str]:
        return set(example.tags)

    def label_counts(self, examples: list[Example]) -> dict[str, int]:
        return dict(sorted(Counter(t[2:] for e in examples for t in e.tags if t.startswith("B-")).items()))

    def label_names(self, dataset: Dataset) -> list[str]:
        train = dataset.splits["train"]
        types = {tag[2:] for e in train.examples for tag in e.tags if tag != OUTSIDE}
        if not types:
            raise EdgeclinError(f"{train.source}: no entities (every tag is O) in the training data")
        # every type gets both B- and I- (a rare type may show only B- in training); O first, then each
        # type's B-/I- together: readable ids in config.json. A type that occurs only in valid/test is
        # scored (every mention a miss), not refused: common in real corpora (rare PHI types).
        return [OUTSIDE] + [f"{prefix}-{kind}" for kind in sorted(types) for prefix in "BI"]

    def encode(self, tokenizer, examples: list[Example], label2id: dict[str, int] | None,
               fmt: InputFormat) -> EncodedSplit:
        ids, types, word_ids, truncated = encode_words(tokenizer, [list(e.tokens) for e in examples], fmt.max_length)
        labels = [piece_labels(w, e.tags, label2id) if label2id is not None and e.tags else [IGNORE_INDEX] * len(w)
                  for w, e in zip(word_ids, examples, strict=True)]
        return EncodedSplit(ids, types, labels, truncated, word_ids=word_ids)

    def label_tensor(self, labels: list, width: int):
        import torch

        return torch.tensor([row + [IGNORE_INDEX] * (width - len(row)) for row in labels], dtype=torch.long)

    def without_labels(self, columns: Columns) -> Columns:
        return replace(columns, tags=None)

    def gold_loss(self, logits, labels, labelled):
        import torch.nn.functional as F

        if not bool((labels != IGNORE_INDEX).any()):  # a batch of unlabelled rows only
            return logits.sum() * 0.0
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)

    def distill_mask(self, split: EncodedSplit, indices: list[int], width: int):
        """Each word's first piece, where its tag is predicted (also in unlabelled rows)."""
        import torch

        mask = torch.zeros((len(indices), width), dtype=torch.bool)
        for row, index in enumerate(indices):
            for _, position in first_pieces(split.word_ids[index]):
                mask[row, position] = True
        return mask

    def columns_record(self, columns: Columns) -> dict:
        return {"tokens": columns.tokens, "tags": columns.tags}

    def adapt_prompt_model(self, peft_model, num_virtual_tokens: int) -> None:
        _align_virtual_tokens(peft_model, num_virtual_tokens)

    def evaluate(self, examples, encoded, scores, labels, threshold=None, tune=False) -> tuple[dict, list]:
        predictions = [word_tags(s, w, len(e.tokens), labels)
                       for s, w, e in zip(scores, encoded.word_ids, examples, strict=True)]
        return entity_metrics([list(e.tags) for e in examples], predictions), predictions

    def degenerate(self, metrics: dict, predictions: list, labels: list[str]) -> str | None:
        if metrics.get("entities") and not any(tag != OUTSIDE for row in predictions for tag in row):
            return "no entity predicted at all (every word tagged O)"
        return None

    def read_prediction_input(self, model, path: Path, given: ColumnChoice,
                              skip_bad_rows: bool = False) -> tuple[Split, bool]:
        """JSONL with pre-split words (and tags, to score), or any file with a text column (raw text)."""
        if given.text_pair:
            raise EdgeclinError("--text-pair-col: NER bundles tag single texts, not pairs")
        present = {key for record in first_records(path) for key in record}
        trained = model.manifest.columns
        if given.text is None and trained.tokens in present:
            tags = given.label or (trained.tags if trained.tags in present else None)
            columns = Columns(tokens=trained.tokens, tags=tags)
            return self.read_split(path, "predict", columns, skip_bad_rows), bool(tags)
        if given.label:
            raise EdgeclinError("--label-col: raw-text NER input has no tags to score against; give JSONL "
                                f"with {trained.tokens!r} and tags lists to get metrics")
        columns = Columns(text=given.text or "text", label=None)
        return read_split_with(path, "predict", [columns.text], lambda r: text_example(r, columns),
                               skip_bad_rows), False

    def prediction_rows(self, model, examples: list[Example], labelled: bool = False,
                        batch_size: int = 32) -> tuple[list[dict], dict]:
        """Examples with ``tokens`` are tagged word by word; the others as raw text."""
        if examples and not examples[0].tokens:
            tagged = model.predict([e.text for e in examples], batch_size=batch_size)
            rows = [{"text": t.text, "entities": [e.as_dict() for e in t.entities]} for t in tagged]
            return rows, {"rows": len(rows), "truncated_rows": sum(t.truncated for t in tagged)}
        tagged = model.predict(words=[list(e.tokens) for e in examples], batch_size=batch_size)
        summary: dict = {"rows": len(examples), "truncated_rows": sum(t.truncated for t in tagged)}
        if labelled:
            unknown = self.unknown_labels(examples, model.labels)
            summary.update(metrics=entity_metrics([list(e.tags) for e in examples], [t.tags for t in tagged]),
                           scored_rows=len(examples), **({"unknown_labels": unknown} if unknown else {}))
        rows = []
        for example, result in zip(examples, tagged, strict=True):
            row: dict = {"text": result.text, "tokens": result.words}
            if labelled:
                row["true_tags"] = list(example.tags)
            rows.append({**row, "tags": result.tags, "entities": [e.as_dict() for e in result.entities]})
        return rows, summary


def _token_example(record: dict, columns: Columns) -> tuple[Example | None, str | None]:
    """An NER row, or the reason it is unusable."""
    tokens = record.get(columns.tokens)
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        return None, f"{columns.tokens!r} must be a list of strings"
    if not tokens:
        return None, f"empty {columns.tokens!r} list"
    if any(not t.strip() or any(ch.isspace() for ch in t) for t in tokens):
        return None, f"a word in {columns.tokens!r} is empty or holds whitespace"
    if any(has_bad_bytes(t) for t in tokens):
        return None, f"text in {columns.tokens!r} is not valid UTF-8"
    tags: list[str] = []
    if columns.tags:
        tags = record.get(columns.tags)
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            return None, f"{columns.tags!r} must be a list of strings"
        if len(tags) != len(tokens):
            return None, f"{len(tokens)} tokens but {len(tags)} tags"
        bad = next((t for t in tags if t != OUTSIDE and (t[:2] not in ("B-", "I-") or len(t) < 3)), None)
        if bad is not None:
            return None, f"tag {bad!r} is not BIO (O, B-type or I-type)"
    return Example(text=" ".join(tokens), label="", tokens=tuple(tokens), tags=tuple(tags)), None
