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
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgeclin.data import Example

TRUNCATION_STRATEGIES = ("head", "tail", "head+tail")


@dataclass
class EncodedSplit:
    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int]
    truncated: int = 0
    lengths: list[int] = field(default_factory=list)

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


def encode_examples(
    tokenizer,
    examples: list[Example],
    label2id: dict[str, int] | None,
    max_length: int,
    truncation: str = "head",
) -> EncodedSplit:
    """Tokenise examples; cut each to ``max_length`` tokens with ``truncation``."""
    if truncation not in TRUNCATION_STRATEGIES:
        raise ValueError(f"truncation must be one of {TRUNCATION_STRATEGIES}")
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples]
    has_pairs = any(p is not None for p in pairs)
    # no truncation and no length warning here: we cut ourselves, and count what we cut
    saved_max = tokenizer.model_max_length
    tokenizer.model_max_length = 10**9
    try:
        batch = tokenizer(texts, pairs if has_pairs else None, add_special_tokens=True, truncation=False)
    finally:
        tokenizer.model_max_length = saved_max
    uses_token_types = "token_type_ids" in batch
    all_ids, all_types, truncated = [], [] if uses_token_types else None, 0
    for i, ids in enumerate(batch["input_ids"]):
        types = batch["token_type_ids"][i] if uses_token_types else None
        if len(ids) > max_length:
            truncated += 1
            sequence_ids = batch.sequence_ids(i)
            segments: dict[int, list[int]] = {}
            for position, seq in enumerate(sequence_ids):
                if seq is not None:
                    segments.setdefault(seq, []).append(position)
            n_special = sum(seq is None for seq in sequence_ids)
            order = sorted(segments)
            budgets = _segment_budgets([len(segments[s]) for s in order], max_length - n_special)
            kept = {p for s, b in zip(order, budgets, strict=True) for p in _keep(segments[s], b, truncation)}
            keep = [p for p, seq in enumerate(sequence_ids) if seq is None or p in kept]
            ids = [ids[p] for p in keep]
            types = [types[p] for p in keep] if types is not None else None
        all_ids.append(ids)
        if all_types is not None:
            all_types.append(types)
    labels = [label2id[e.label] for e in examples] if label2id is not None else [-1] * len(examples)
    return EncodedSplit(all_ids, all_types, labels, truncated, [len(x) for x in all_ids])


def pad_batch(split: EncodedSplit, indices: list[int], pad_token_id: int) -> dict:
    """Pad a batch to its longest member (dynamic padding), as torch tensors."""
    import torch

    width = max(split.lengths[i] for i in indices)
    ids = torch.full((len(indices), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    types = torch.zeros((len(indices), width), dtype=torch.long) if split.token_type_ids is not None else None
    for row, i in enumerate(indices):
        n = split.lengths[i]
        ids[row, :n] = torch.tensor(split.input_ids[i])
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(split.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([split.labels[i] for i in indices])}
    if types is not None:
        batch["token_type_ids"] = types
    return batch
