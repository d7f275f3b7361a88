"""Shared fixtures: tiny random models built in code, and small CSV datasets."""

from __future__ import annotations

import csv
import os
import re
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# edgeclin's cache (random-init bases, students, engine choices) of this test session only
os.environ.setdefault("EDGECLIN_CACHE", tempfile.mkdtemp(prefix="edgeclin-test-cache-"))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def shared_dataset(name: str) -> Path:
    """A dataset from ../shared/data; in CI its absence is a failure, not a skip."""
    path = SHARED_DATA / name
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI must have ../shared beside the checkout")
        pytest.skip(f"{path} not available")
    return path


def write_csv(path: Path, rows: list[tuple], header: tuple = ("text", "label")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# Our own invented phrases for the NER and multi-label fixtures (entity type or label -> phrases).
NER_PHRASES = {
    "Disease": ["diabetes mellitus", "heart failure", "asthma", "chronic kidney disease", "pneumonia",
                "atrial fibrillation", "migraine"],
    "Drug": ["metformin", "aspirin", "insulin glargine", "salbutamol", "warfarin"],
}
NER_TEMPLATES = ["the patient with {Disease} was given {Drug} .", "{Drug} was started for {Disease} today .",
                 "history of {Disease} , no {Drug} at home .", "she reports {Disease} and takes {Drug} daily .",
                 "no known {Disease} ; continue {Drug} ."]
MULTI_LABEL_PHRASES = {
    "cardiac": ["chest pain on exertion", "irregular pulse", "raised troponin"],
    "renal": ["rising creatinine", "reduced urine output", "kidney stones"],
    "respiratory": ["wheeze on auscultation", "productive cough", "low oxygen saturation"],
}
FILLER = ["seen in clinic", "follow up in two weeks", "vital signs recorded", "reviewed by the team"]
SYNTHETIC_WORDS = [p for ps in (*NER_PHRASES.values(), *MULTI_LABEL_PHRASES.values()) for p in ps] + \
    NER_TEMPLATES + FILLER


def synthetic_ner_rows(count: int, seed: int) -> list[dict]:
    """Invented sentences with BIO tags for two entity types."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        tokens, tags = [], []
        for part in rng.choice(NER_TEMPLATES).split():
            kind = part.strip("{}") if part.startswith("{") else None
            words = rng.choice(NER_PHRASES[kind]).split() if kind else [part]
            tokens += words
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1) if kind else ["O"]
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def synthetic_multilabel_rows(count: int, seed: int) -> list[tuple[str, str]]:
    """Invented notes mentioning findings of 1-3 systems; the label cell lists them, ';'-separated."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        labels = sorted(rng.sample(sorted(MULTI_LABEL_PHRASES), rng.choice([1, 1, 2, 3])))
        parts = [rng.choice(MULTI_LABEL_PHRASES[label]) for label in labels] + rng.sample(FILLER, 2)
        rng.shuffle(parts)
        rows.append((" , ".join(parts) + " .", ";".join(labels)))
    return rows


def measured_metric(manifest: dict, summary: dict, metric: str) -> float:
    """The gate metric export measured for the engine that ``predict`` ran (``auto`` may not pick onnxruntime)."""
    return next(c[metric] for c in manifest["runtime"]["candidates"]
                if (c["backend"], c["model"]) == (summary["backend"], summary["model_file"]))


@pytest.fixture(scope="session")
def ner_folder(tmp_path_factory) -> Path:
    import json

    folder = tmp_path_factory.mktemp("ner")
    for i, (name, size) in enumerate((("train", 160), ("valid", 40), ("test", 40))):
        with (folder / f"{name}.jsonl").open("w", encoding="utf-8") as handle:
            for row in synthetic_ner_rows(size, seed=i):
                handle.write(json.dumps(row) + "\n")
    return folder


@pytest.fixture(scope="session")
def multilabel_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("multilabel")
    for i, (name, size) in enumerate((("train", 160), ("valid", 48), ("test", 48))):
        write_csv(folder / f"{name}.csv", synthetic_multilabel_rows(size, seed=i))
    return folder


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory) -> Path:
    """A small copy of the synthetic demo data as CSV files (our own generated text)."""
    from edgeclin.demo_data import generate_demo_dataset

    folder = tmp_path_factory.mktemp("demo")
    for name, split in generate_demo_dataset(seed=0).items():
        size = 96 if name == "train" else 40
        write_csv(folder / f"{name}.csv", [(e.text, e.label) for e in split.examples[:size]])
    return folder


def _tiny_tokenizer(folder: Path):
    """A word-level WordPiece vocabulary built from the demo notes: no download needed."""
    from transformers import BertTokenizerFast

    from edgeclin.demo_data import generate_demo_dataset

    words = set(re.findall(r"\w+|[^\w\s]", " ".join(SYNTHETIC_WORDS).lower()))
    for split in generate_demo_dataset(seed=0).values():
        for example in split.examples:
            words.update(re.findall(r"\w+|[^\w\s]", example.text.lower()))
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL_TOKENS + sorted(words)) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT with its tokenizer, saved as a HF folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)  # the same tiny model in every test process
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = _tiny_tokenizer(folder)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=2)
    model = BertForSequenceClassification(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def lora_run(tiny_bert, demo_folder, tmp_path_factory):
    """A LoRA run of the tiny BERT on the demo slice (a few steps)."""
    from edgeclin.training import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "lora"
    return train(TrainConfig(model=str(tiny_bert), data=str(demo_folder), output=str(out), epochs=2, lr=5e-3,
                             max_length=48, precision="fp32", progress=False, allow_degenerate=True))


@pytest.fixture(scope="session")
def bundle(lora_run, tmp_path_factory):
    """The LoRA run exported as an int8 bundle (gate wide open: the tiny model is barely trained)."""
    from edgeclin.export import export

    return export(lora_run.output, tmp_path_factory.mktemp("export") / "bundle", int8=True, quiet=True,
                  max_drop=100.0).bundle
