"""A student's vocabulary cut to the pieces its notes use (``edgeclin distill --trim-vocab``).

A small encoder's word-embedding table is most of its file: MiniLM's 30,522 x 384 table is
11.7M of a 3-layer student's 17.4M weights, so fewer layers alone cannot shrink the file much.
A WordPiece vocabulary cut to every piece the user's notes use, plus every single character,
tokenises those notes exactly as before — WordPiece takes the longest piece it knows at each
position, and every piece it took is still there — and splits a word it never met into smaller
pieces that remain, instead of into [UNK]. ``edgeclin.distill`` checks the first claim on every
training, validation and unlabelled note before it trains.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from edgeclin.errors import EdgeclinError
from edgeclin.schema import InputFormat

UNCUT = InputFormat(max_length=1_000_000)  # every piece of a note, not only those within the max length
# settings of the original tokenizer that a rebuilt one must not inherit
NOT_COPIED = ("name_or_path", "vocab_file", "tokenizer_file", "added_tokens_decoder")
# what must not change when the tokenizer is rebuilt over fewer pieces (the backend's settings)
KEPT_SETTINGS = ("normalizer", "pre_tokenizer", "decoder")
KEPT_MODEL_SETTINGS = ("type", "unk_token", "continuing_subword_prefix", "max_input_chars_per_word")


@dataclass(frozen=True)
class Vocabulary:
    """The kept pieces: the student's id ``i`` is the teacher's id ``kept[i]`` (ascending)."""

    kept: tuple[int, ...]
    teacher_size: int

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.kept).encode()).hexdigest()[:10]

    @cached_property
    def to_teacher(self) -> np.ndarray:
        """The teacher's id of each student id."""
        return np.asarray(self.kept, dtype=np.int64)

    def describe(self) -> dict:
        return {"teacher": self.teacher_size, "student": len(self.kept)}


def _backend_settings(tokenizer) -> dict:
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    return {**{k: backend.get(k) for k in KEPT_SETTINGS}, **{k: backend["model"].get(k) for k in KEPT_MODEL_SETTINGS}}


def check_wordpiece(tokenizer) -> None:
    kind = _backend_settings(tokenizer)["type"]
    if kind != "WordPiece":
        raise EdgeclinError(f"--trim-vocab needs a WordPiece tokenizer (the BERT family); this model's is {kind}")


def used_pieces(tokenizer, task, example_sets: list[list]) -> Vocabulary:
    """Every piece of the notes (whole, not cut to the max length), the special tokens and every single character."""
    check_wordpiece(tokenizer)
    vocab = tokenizer.get_vocab()
    kept = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    kept.update(i for piece, i in vocab.items() if len(piece.removeprefix("##")) == 1)  # no word falls to [UNK]
    for examples in example_sets:
        for row in task.encode(tokenizer, examples, None, UNCUT).input_ids:
            kept.update(row)
    return Vocabulary(tuple(sorted(kept)), len(vocab))


def trim_tokenizer(tokenizer, vocabulary: Vocabulary, folder: Path):
    """The same tokenizer, every setting kept, over the kept pieces (renumbered); saved in ``folder``."""
    from tokenizers import Tokenizer

    by_id = {i: piece for piece, i in tokenizer.get_vocab().items()}
    new_id = {old: new for new, old in enumerate(vocabulary.kept)}
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    backend["model"]["vocab"] = {by_id[old]: new for old, new in new_id.items()}
    for token in backend.get("added_tokens") or []:
        token["id"] = new_id[token["id"]]
    backend["post_processor"] = _renumbered(backend.get("post_processor"), new_id)
    if backend.get("padding"):
        backend["padding"]["pad_id"] = new_id[backend["padding"]["pad_id"]]
    settings = {k: v for k, v in tokenizer.init_kwargs.items() if k not in NOT_COPIED}
    trimmed = type(tokenizer)(tokenizer_object=Tokenizer.from_str(json.dumps(backend)), **settings)
    if len(trimmed) != len(new_id) or _backend_settings(trimmed) != _backend_settings(tokenizer):
        raise EdgeclinError("--trim-vocab: this tokenizer cannot be rebuilt on fewer pieces with the same settings; "
                            "distil without --trim-vocab")
    trimmed.save_pretrained(folder)
    return trimmed


def _renumbered(node, new_id: dict[int, int]):
    """A post-processor with its special tokens' ids in the cut vocabulary (Bert, Roberta, Template, Sequence)."""
    if isinstance(node, list):
        if len(node) == 2 and isinstance(node[0], str) and isinstance(node[1], int):  # Bert's ["[SEP]", 102]
            return [node[0], new_id[node[1]]]
        return [_renumbered(item, new_id) for item in node]
    if isinstance(node, dict):  # Template's {"ids": [102], ...}
        return {k: [new_id[i] for i in v] if k == "ids" else _renumbered(v, new_id) for k, v in node.items()}
    return node


def trim_embeddings(model, vocabulary: Vocabulary) -> None:
    """Keep the word-embedding rows of the kept pieces, and renumber the special ids the config names."""
    import torch

    if model.get_output_embeddings() is not None:
        raise EdgeclinError("--trim-vocab: this model ties its output layer to the vocabulary")
    new_id = {old: new for new, old in enumerate(vocabulary.kept)}
    pad = model.config.pad_token_id
    if pad is not None and new_id.get(pad) != pad:  # MPNet and RoBERTa number positions from a fixed pad id
        raise EdgeclinError(f"--trim-vocab would move the padding id {pad}; distil without --trim-vocab")
    for name in ("bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        old = getattr(model.config, name, None)
        if old is not None and old not in new_id:
            raise EdgeclinError(f"--trim-vocab: the model's {name} ({old}) is not a piece of its tokenizer")
        if old is not None:
            setattr(model.config, name, new_id[old])
    table = model.get_input_embeddings()
    rows = table.weight.detach()[torch.as_tensor(vocabulary.kept)].clone()
    model.set_input_embeddings(torch.nn.Embedding.from_pretrained(rows, freeze=False, padding_idx=pad))
    model.config.vocab_size = len(vocabulary.kept)


def changed_rows(teacher_tokenizer, student_tokenizer, vocabulary: Vocabulary, task, examples: list,
                 fmt: InputFormat = UNCUT) -> int:
    """How many notes the student's tokenizer reads otherwise than the teacher's (ids as the teacher's, and types)."""
    to_teacher = vocabulary.to_teacher
    teacher = task.encode(teacher_tokenizer, examples, None, fmt)
    student = task.encode(student_tokenizer, examples, None, fmt)
    return sum(t != to_teacher[s].tolist() or t_types != s_types for t, s, t_types, s_types in
               zip(teacher.input_ids, student.input_ids, teacher.token_type_ids, student.token_type_ids, strict=True))
