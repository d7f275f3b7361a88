"""Which input columns a job reads and keeps, checked on the driver; and each Arrow row as an Example.

A row whose text is null or empty is not dropped: it becomes an output row with an ``error``
value, so that the output has exactly one row per input row.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeclin.errors import EdgeclinError
from edgeclin.records import text_value
from edgeclin.schema import Columns, Example

ERROR_COLUMN = "error"
RENAMED_PREFIX = "input_"  # an input column named like an output column is kept under this prefix


@dataclass(frozen=True)
class InputColumns:
    """The columns a job reads (raw text and its pair, or pre-split words) and the ones it keeps."""

    text: str | None = None
    pair: str | None = None
    tokens: str | None = None  # NER: pre-split words (array<string>) instead of raw text
    keep: tuple[tuple[str, str], ...] = ()  # (input name, output name): every input column, or the id

    @property
    def renamed(self) -> dict[str, str]:
        return {source: target for source, target in self.keep if source != target}


def _types(schema) -> dict[str, str]:
    return {field.name: field.dataType.simpleString() for field in schema.fields}


def _require(types: dict[str, str], column: str, kind: str, expected: str) -> None:
    if column not in types:
        raise EdgeclinError(f"no column {column!r} in the data (columns present: {', '.join(types) or 'none'})")
    if types[column] != expected:
        raise EdgeclinError(f"column {column!r} holds {types[column]}, but the {kind} must be {expected}")


def resolve_columns(schema, columns: Columns, text_pair: bool, reads_words: bool, outputs: tuple[str, ...], *,
                    text_col: str | None = None, pair_col: str | None = None,
                    id_col: str | None = None) -> InputColumns:
    """The job's columns, the bundle's own names unless given; every one checked against ``schema``.

    ``columns`` are the names the bundle was trained with; a tagger (``reads_words``) reads
    pre-split words when the data has the trained tokens column and no text column was named.
    """
    types = _types(schema)
    if pair_col and not text_pair:
        raise EdgeclinError(f"--text-pair-col {pair_col!r}: this bundle reads single texts, not pairs")
    if reads_words and text_col is None and columns.tokens in types:
        _require(types, columns.tokens, "words column", "array<string>")
        chosen = InputColumns(tokens=columns.tokens)
    else:
        text = text_col or columns.text
        _require(types, text, "text column", "string")
        pair = (pair_col or columns.text_pair) if text_pair else None
        if text_pair:
            if not pair:
                raise EdgeclinError("this bundle classifies text pairs: name the second text column (pair_col)")
            _require(types, pair, "second text column", "string")
        chosen = InputColumns(text=text, pair=pair)
    if id_col is not None and id_col not in types:
        raise EdgeclinError(f"no id column {id_col!r} in the data (columns present: {', '.join(types)})")
    kept = [id_col] if id_col is not None else list(types)
    return InputColumns(chosen.text, chosen.pair, chosen.tokens, _output_names(kept, (*outputs, ERROR_COLUMN)))


def _output_names(kept: list[str], outputs: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Kept columns under their own names, except one that an output column would hide."""
    taken = set(kept) | set(outputs)
    pairs = []
    for name in kept:
        target = name
        while target in outputs or (target != name and target in taken):
            target = RENAMED_PREFIX + target
        taken.add(target)
        pairs.append((name, target))
    return tuple(pairs)


def _text_problem(value, column: str) -> str | None:
    # the rule edgeclin predict applies to a file's cells, so both accept the same texts
    return text_value({column: value}, column)[1]


def _words_problem(words, column: str) -> str | None:
    if not words:
        return f"empty value in column {column!r}"
    if any(not isinstance(w, str) or not w.strip() or any(ch.isspace() for ch in w) for w in words):
        return f"a word in {column!r} is empty or holds whitespace"
    return None


def examples_of(batch, columns: InputColumns) -> tuple[list[Example | None], list[str | None]]:
    """Each row of an Arrow batch as an Example, or None and the reason it cannot be predicted."""
    if columns.tokens:
        words = batch.column(columns.tokens).to_pylist()
        errors = [_words_problem(w, columns.tokens) for w in words]
        examples = [None if e else Example(text=" ".join(w), label="", tokens=tuple(w))
                    for w, e in zip(words, errors, strict=True)]
        return examples, errors
    texts = batch.column(columns.text).to_pylist()
    pairs = batch.column(columns.pair).to_pylist() if columns.pair else [None] * len(texts)
    errors = [_text_problem(t, columns.text) or (_text_problem(p, columns.pair) if columns.pair else None)
              for t, p in zip(texts, pairs, strict=True)]
    examples = [None if e else Example(text=t, label="", text_pair=p)
                for t, p, e in zip(texts, pairs, errors, strict=True)]
    return examples, errors
