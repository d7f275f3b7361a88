"""Tokenisation with visible truncation.

Clinical notes are often longer than a model's window (half of MTSamples exceeds 512
tokens), and silent truncation hides that. Here every text is tokenised in full, cut to
``max_length`` with the chosen strategy, and counted when cut:

- ``head``: keep the beginning;
- ``tail``: keep the end;
- ``head+tail``: keep the first quarter and the last three quarters of the budget
  (Sun et al. 2019 found head+tail best for long documents).

For text pairs the longer text is trimmed first, so a short statement survives a long
premise. Special tokens are kept where the tokenizer put them, so this works for any
fast tokenizer (BERT, RoBERTa, MPNet, ...).

NER examples arrive as words: each word is split into pieces, the word's tag sits on its
first piece (the others are ignored, label -100), and words beyond ``max_length`` are cut
from the end and counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from edgeclin.data import Example
from edgeclin.tasks import MULTI_LABEL, SINGLE_LABEL, TOKEN, first_pieces

IGNORE_INDEX = -100  # positions the loss and the metrics skip (PyTorch's default ignore_index)
# words of raw text for NER: runs of letters/digits, or one punctuation mark (BERT's own split)
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")

TRUNCATION_STRATEGIES = ("head", "tail", "head+tail")


@dataclass
class EncodedSplit:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list  # int per row; multi-hot floats (multi-label); int per piece (NER)
    truncated: int = 0
    lengths: list[int] = field(default_factory=list)
    word_ids: list[list[int | None]] = field(default_factory=list)  # NER: word of each piece

    def __len__(self) -> int:
        return len(self.input_ids)


def _keep(positions: list[int], count: int, strategy: str) -> list[int]:
    if count >= len(positions):
        return positions
    if count <= 0:
        return []
    if strategy == "head":
        return positions[:count]
    if strategy == "tail":
        return positions[len(positions) - count:]
    head = count // 4
    return positions[:head] + positions[len(positions) - (count - head):]


def _segment_budgets(sizes: list[int], available: int) -> list[int]:
    """Longest-first: shorten the longer segment until the total fits."""
    budgets = list(sizes)
    while sum(budgets) > available:
        longest = max(range(len(budgets)), key=lambda i: budgets[i])
        budgets[longest] -= 1
    return budgets


def plain_tokenizer(tokenizer):
    """A copy of the Rust ``tokenizers.Tokenizer`` with no truncation or padding set.

    Accepts a ``tokenizers.Tokenizer`` or a transformers fast tokenizer (its backend), so
    training and the torch-free runtime share this module.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if backend is tokenizer and tokenizer.truncation is None and tokenizer.padding is None:
        return tokenizer  # already plain: rebuilding costs more than encoding a sentence
    from tokenizers import Tokenizer

    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    return plain


def encode_texts(
    tokenizer,
    texts: list[str],
    pairs: list[str | None] | None,
    max_length: int,
    truncation: str = "head",
) -> tuple[list[list[int]], list[list[int]], int]:
    """Token ids and token type ids of each text (or pair), cut to ``max_length``; and how many were cut."""
    if truncation not in TRUNCATION_STRATEGIES:
        raise ValueError(f"truncation must be one of {TRUNCATION_STRATEGIES}")
    plain = plain_tokenizer(tokenizer)
    has_pairs = pairs is not None and any(p is not None for p in pairs)
    inputs = list(zip(texts, pairs, strict=True)) if has_pairs else texts
    encodings = plain.encode_batch(inputs, add_special_tokens=True)
    all_ids, all_types, truncated = [], [], 0
    for encoding in encodings:
        ids, types = encoding.ids, encoding.type_ids
        if len(ids) > max_length:
            truncated += 1
            sequence_ids = encoding.sequence_ids
            segments: dict[int, list[int]] = {}
            for position, seq in enumerate(sequence_ids):
                if seq is not None:
                    segments.setdefault(seq, []).append(position)
            n_special = sum(seq is None for seq in sequence_ids)
            order = sorted(segments)
            budgets = _segment_budgets([len(segments[s]) for s in order], max_length - n_special)
            kept = {p for s, b in zip(order, budgets, strict=True) for p in _keep(segments[s], b, truncation)}
            keep = [p for p, seq in enumerate(sequence_ids) if seq is None or p in kept]
            ids, types = [ids[p] for p in keep], [types[p] for p in keep]
        all_ids.append(ids)
        all_types.append(types)
    return all_ids, all_types, truncated


def encode_words(tokenizer, words: list[list[str]], max_length: int
                 ) -> tuple[list[list[int]], list[list[int]], list[list[int | None]], int]:
    """Pieces of pre-split words: ids, token types, the word of each piece; and how many were cut.

    Cutting keeps the special tokens and drops pieces from the end (NER labels every word,
    so there is no sensible "middle" to drop).
    """
    plain = plain_tokenizer(tokenizer)
    encodings = plain.encode_batch(words, is_pretokenized=True, add_special_tokens=True)
    all_ids, all_types, all_words, truncated = [], [], [], 0
    for encoding in encodings:
        ids, types, word_ids = encoding.ids, encoding.type_ids, list(encoding.word_ids)
        if len(ids) > max_length:
            truncated += 1
            n_special = sum(w is None for w in word_ids)
            budget = max_length - n_special
            keep, used = [], 0
            for position, word in enumerate(word_ids):
                if word is None:
                    keep.append(position)
                elif used < budget:
                    keep.append(position)
                    used += 1
            ids, types, word_ids = [ids[p] for p in keep], [types[p] for p in keep], [word_ids[p] for p in keep]
        all_ids.append(ids)
        all_types.append(types)
        all_words.append(word_ids)
    return all_ids, all_types, all_words, truncated


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Raw text as (word, start, end) character spans, for NER on text that is not pre-split."""
    return [(m.group(), m.start(), m.end()) for m in WORD_PATTERN.finditer(text)]


def piece_labels(word_ids: list[int | None], tags: tuple[str, ...], label2id: dict[str, int]) -> list[int]:
    """The tag id of each word on its first piece; IGNORE_INDEX elsewhere."""
    labels = [IGNORE_INDEX] * len(word_ids)
    for word, position in first_pieces(word_ids):
        labels[position] = label2id.get(tags[word], IGNORE_INDEX)  # a type unseen in training: not learnt
    return labels


def encode_examples(
    tokenizer,
    examples: list[Example],
    label2id: dict[str, int] | None,
    max_length: int,
    truncation: str = "head",
    task: str = SINGLE_LABEL,
) -> EncodedSplit:
    """Tokenise examples; cut each to ``max_length`` tokens with ``truncation``; encode labels for ``task``."""
    if task == TOKEN:
        ids, types, word_ids, truncated = encode_words(tokenizer, [list(e.tokens) for e in examples], max_length)
        labels = ([piece_labels(w, e.tags, label2id) for w, e in zip(word_ids, examples, strict=True)]
                  if label2id is not None else [[IGNORE_INDEX] * len(w) for w in word_ids])
        return EncodedSplit(ids, types, labels, truncated, [len(x) for x in ids], word_ids)
    ids, types, truncated = encode_texts(tokenizer, [e.text for e in examples], [e.text_pair for e in examples],
                                         max_length, truncation)
    if label2id is None:
        labels = [-1] * len(examples)
    elif task == MULTI_LABEL:
        labels = []
        for e in examples:
            row = [0.0] * len(label2id)
            for label in e.label_set:
                if label in label2id:  # a label the model never learnt (--eval-data): a miss in the metrics
                    row[label2id[label]] = 1.0
            labels.append(row)
    else:
        labels = [label2id[e.label] for e in examples]
    return EncodedSplit(ids, types, labels, truncated, [len(x) for x in ids])


def pad_arrays(input_ids: list[list[int]], token_type_ids: list[list[int]], pad_token_id: int) -> dict:
    """Pad to the longest member (dynamic padding), as int64 numpy arrays."""
    import numpy as np

    width = max(len(x) for x in input_ids)
    ids = np.full((len(input_ids), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(input_ids), width), dtype=np.int64)
    types = np.zeros((len(input_ids), width), dtype=np.int64)
    for row, (row_ids, row_types) in enumerate(zip(input_ids, token_type_ids, strict=True)):
        ids[row, :len(row_ids)] = row_ids
        mask[row, :len(row_ids)] = 1
        types[row, :len(row_types)] = row_types
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def pad_batch(split: EncodedSplit, indices: list[int], pad_token_id: int, with_token_types: bool = True) -> dict:
    """A padded training/evaluation batch as torch tensors, labels included."""
    import torch

    arrays = pad_arrays([split.input_ids[i] for i in indices], [split.token_type_ids[i] for i in indices],
                        pad_token_id)
    if not with_token_types:
        del arrays["token_type_ids"]
    batch = {name: torch.from_numpy(array) for name, array in arrays.items()}
    labels = [split.labels[i] for i in indices]
    if labels and isinstance(labels[0], list) and isinstance(labels[0][0] if labels[0] else 0, int):
        # NER: one label per piece, padded with the ignore index
        width = batch["input_ids"].shape[1]
        labels = [row + [IGNORE_INDEX] * (width - len(row)) for row in labels]
        batch["labels"] = torch.tensor(labels, dtype=torch.long)
    else:  # class ids, or multi-hot floats for BCE
        batch["labels"] = torch.tensor(labels)
    return batch
