"""Tokenisation with visible truncation, and padding: the primitives every task encodes with.

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

Pre-split words (NER) are cut from the end, keeping the special tokens. Which labels go
with the pieces is the task's business (``edgeclin.tasks``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from edgeclin.schema import TRUNCATION_STRATEGIES

IGNORE_INDEX = -100  # positions the loss and the metrics skip (PyTorch's default ignore_index)
# words of raw text for NER: runs of letters/digits, or one punctuation mark (BERT's own split)
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")


@dataclass
class EncodedSplit:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list  # per row: a class id, a multi-hot row, or a label per piece (NER); -1 unlabelled
    truncated: int = 0
    lengths: list[int] = field(default_factory=list)
    word_ids: list[list[int | None]] = field(default_factory=list)  # pre-split words: the word of each piece

    def __post_init__(self) -> None:
        if not self.lengths:
            self.lengths = [len(x) for x in self.input_ids]

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


def _cut(encoding, max_length: int, truncation: str) -> list[int]:
    """Positions to keep of an encoding longer than ``max_length``: specials, and each segment's share."""
    sequence_ids = encoding.sequence_ids
    segments: dict[int, list[int]] = {}
    for position, seq in enumerate(sequence_ids):
        if seq is not None:
            segments.setdefault(seq, []).append(position)
    n_special = sum(seq is None for seq in sequence_ids)
    order = sorted(segments)
    budgets = _segment_budgets([len(segments[s]) for s in order], max_length - n_special)
    kept = {p for s, b in zip(order, budgets, strict=True) for p in _keep(segments[s], b, truncation)}
    return [p for p, seq in enumerate(sequence_ids) if seq is None or p in kept]


def encode_texts(tokenizer, texts: list[str], pairs: list[str | None] | None, max_length: int,
                 truncation: str = "head") -> tuple[list[list[int]], list[list[int]], int]:
    """Token ids and token type ids of each text (or pair), cut to ``max_length``; and how many were cut."""
    if truncation not in TRUNCATION_STRATEGIES:
        raise ValueError(f"truncation must be one of {TRUNCATION_STRATEGIES}")
    plain = plain_tokenizer(tokenizer)
    has_pairs = pairs is not None and any(p is not None for p in pairs)
    inputs = list(zip(texts, pairs, strict=True)) if has_pairs else texts
    all_ids, all_types, truncated = [], [], 0
    for encoding in plain.encode_batch(inputs, add_special_tokens=True):
        ids, types = encoding.ids, encoding.type_ids
        if len(ids) > max_length:
            truncated += 1
            keep = _cut(encoding, max_length, truncation)
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
    ids, types, word_ids, cut = encode_words_marking_cuts(tokenizer, words, max_length)
    return ids, types, word_ids, sum(cut)


def encode_words_marking_cuts(tokenizer, words: list[list[str]], max_length: int
                              ) -> tuple[list[list[int]], list[list[int]], list[list[int | None]], list[bool]]:
    """``encode_words``, with whether each row was cut instead of the count."""
    plain = plain_tokenizer(tokenizer)
    all_ids, all_types, all_words, cut = [], [], [], []
    for encoding in plain.encode_batch(words, is_pretokenized=True, add_special_tokens=True):
        ids, types, word_ids = encoding.ids, encoding.type_ids, list(encoding.word_ids)
        cut.append(len(ids) > max_length)
        if cut[-1]:
            budget = max_length - sum(w is None for w in word_ids)
            pieces = [p for p, w in enumerate(word_ids) if w is not None][:budget]
            keep = sorted({p for p, w in enumerate(word_ids) if w is None} | set(pieces))
            ids, types, word_ids = [ids[p] for p in keep], [types[p] for p in keep], [word_ids[p] for p in keep]
        all_ids.append(ids)
        all_types.append(types)
        all_words.append(word_ids)
    return all_ids, all_types, all_words, cut


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


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Raw text as (word, start, end) character spans, for NER on text that is not pre-split."""
    return [(m.group(), m.start(), m.end()) for m in WORD_PATTERN.finditer(text)]


def pad_arrays(input_ids: list[list[int]], token_type_ids: list[list[int]], pad_token_id: int) -> dict:
    """Pad to the longest member (dynamic padding), as int64 numpy arrays."""
    width = max(len(x) for x in input_ids)
    ids = np.full((len(input_ids), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(input_ids), width), dtype=np.int64)
    types = np.zeros((len(input_ids), width), dtype=np.int64)
    for row, (row_ids, row_types) in enumerate(zip(input_ids, token_type_ids, strict=True)):
        ids[row, :len(row_ids)] = row_ids
        mask[row, :len(row_ids)] = 1
        types[row, :len(row_types)] = row_types
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of similar length (less padding), shortest first; stable for equal lengths."""
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    order = np.argsort(np.asarray(lengths), kind="stable").tolist()
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
