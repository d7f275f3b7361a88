"""Vocabulary trimming for distilled students (edgeclin.vocabulary), on MiniLM's real WordPiece vocabulary."""

from __future__ import annotations

import pytest
import torch

from edgeclin.errors import EdgeclinError
from edgeclin.models import load_tokenizer, resolve_model
from edgeclin.schema import Example
from edgeclin.tasks import SINGLE_LABEL, get_task
from edgeclin.vocabulary import changed_rows, trim_embeddings, trim_tokenizer, used_pieces

NOTES = ["Patient denies chest pain; troponin negative.", "Echocardiogram shows dilated cardiomyopathy.",
         "Knee effusion after a fall, aspirated 30 mL."]


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return load_tokenizer(resolve_model("minilm-l6").path)


@pytest.fixture()
def trimmed(minilm_tokenizer, tmp_path):
    task = get_task(SINGLE_LABEL)
    vocabulary = used_pieces(minilm_tokenizer, task, [[Example(text, "x") for text in NOTES]])
    return vocabulary, trim_tokenizer(minilm_tokenizer, vocabulary, tmp_path), task


def test_the_notes_read_the_same_pieces_and_unseen_words_smaller_ones(minilm_tokenizer, trimmed):
    vocabulary, tokenizer, task = trimmed
    assert len(tokenizer) == len(vocabulary.kept) < len(minilm_tokenizer) == vocabulary.teacher_size
    for note in NOTES:
        assert tokenizer.tokenize(note) == minilm_tokenizer.tokenize(note)
    assert changed_rows(minilm_tokenizer, tokenizer, vocabulary, task, [Example(n, "x") for n in NOTES]) == 0
    unseen = "pneumothorax"
    pieces = tokenizer.tokenize(unseen)
    assert pieces != minilm_tokenizer.tokenize(unseen) and "[UNK]" not in pieces
    assert "".join(p.removeprefix("##") for p in pieces) == unseen
    assert changed_rows(minilm_tokenizer, tokenizer, vocabulary, task, [Example(unseen, "x")]) == 1


def test_the_embedding_rows_follow_their_pieces(minilm_tokenizer, trimmed):
    from transformers import BertConfig, BertForSequenceClassification

    vocabulary, tokenizer, _ = trimmed
    model = BertForSequenceClassification(BertConfig(vocab_size=len(minilm_tokenizer), hidden_size=8,
                                                     num_hidden_layers=1, num_attention_heads=2, intermediate_size=8))
    before = model.get_input_embeddings().weight.detach().clone()
    trim_embeddings(model, vocabulary)
    after = model.get_input_embeddings().weight
    assert model.config.vocab_size == after.shape[0] == len(tokenizer)
    for piece in ("chest", "##pathy", "[CLS]", "q"):
        assert torch.equal(after[tokenizer.convert_tokens_to_ids(piece)],
                           before[minilm_tokenizer.convert_tokens_to_ids(piece)])
    ids = tokenizer(NOTES[0], return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape == (1, 2)  # the smaller table is what the model reads


def test_special_ids_are_renumbered_and_the_padding_id_never_moves():
    from transformers import BertConfig, BertForSequenceClassification

    from edgeclin.vocabulary import Vocabulary

    def model():  # MPNet-like ids: positions count from the padding id
        return BertForSequenceClassification(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                                                        num_attention_heads=2, intermediate_size=8, pad_token_id=1,
                                                        bos_token_id=0, eos_token_id=3))
    kept = model()
    trim_embeddings(kept, Vocabulary((0, 1, 3, 5, 7), 10))
    assert (kept.config.pad_token_id, kept.config.bos_token_id, kept.config.eos_token_id) == (1, 0, 2)
    assert kept.get_input_embeddings().padding_idx == 1 and kept.config.vocab_size == 5
    with pytest.raises(EdgeclinError, match="would move the padding id 1"):
        trim_embeddings(model(), Vocabulary((0, 2, 3, 5), 10))
    with pytest.raises(EdgeclinError, match="eos_token_id"):
        trim_embeddings(model(), Vocabulary((0, 1, 5), 10))


def test_only_wordpiece_vocabularies_are_trimmed(minilm_tokenizer):
    import json

    backend = json.loads(minilm_tokenizer.backend_tokenizer.to_str())
    backend["model"]["type"] = "BPE"
    fake = type("Fake", (), {"backend_tokenizer": type("B", (), {"to_str": lambda self: json.dumps(backend)})()})()
    with pytest.raises(EdgeclinError, match="needs a WordPiece tokenizer"):
        used_pieces(fake, get_task(SINGLE_LABEL), [])
