"""Multi-label classification and token classification (NER) through train, export and predict."""

import json

import numpy as np
import pytest
from conftest import measured_metric

from edgeclin import runtime
from edgeclin.data import Columns, describe, load_dataset, read_split
from edgeclin.encoding import IGNORE_INDEX, encode_words, first_pieces, split_words
from edgeclin.errors import EdgeclinError
from edgeclin.metrics import entity_metrics, multilabel_metrics, tune_threshold
from edgeclin.schema import InputFormat
from edgeclin.tasks import MULTI_LABEL, TOKEN, bio_spans, get_task, word_tags
from edgeclin.training import PROMPT_ENCODER, TrainConfig, train


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- data -----------------------------------------------------------------------------------

def test_ner_data_is_recognised_and_labels_ordered(ner_folder):
    dataset = load_dataset(ner_folder)
    assert dataset.task == TOKEN
    assert dataset.labels == ["O", "B-Disease", "I-Disease", "B-Drug", "I-Drug"]
    example = dataset.splits["train"].examples[0]
    assert example.text == " ".join(example.tokens) and len(example.tags) == len(example.tokens)
    counts = describe(dataset)["train"]["label_counts"]
    assert set(counts) == {"Disease", "Drug"} and counts["Disease"] == 160  # one entity of each per sentence


@pytest.mark.parametrize("row, message", [
    ({"tokens": ["a", "b"], "tags": ["O"]}, "2 tokens but 1 tags"),
    ({"tokens": ["a"], "tags": ["DISEASE"]}, "is not BIO"),
    ({"tokens": "a b", "tags": ["O", "O"]}, "must be a list of strings"),
    ({"tokens": ["a b"], "tags": ["O"]}, "holds whitespace"),
])
def test_bad_ner_rows_name_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "train.jsonl", [{"tokens": ["ok"], "tags": ["O"]}, row])
    with pytest.raises(EdgeclinError, match=rf"train.jsonl, line 2: .*{message}"):
        read_split(path, "train", Columns(), task=TOKEN)


def test_multilabel_csv_and_jsonl_lists(tmp_path, multilabel_folder):
    dataset = load_dataset(multilabel_folder, multi_label=True)
    assert dataset.task == MULTI_LABEL and dataset.labels == ["cardiac", "renal", "respiratory"]
    assert all(e.label_set and e.label == ";".join(e.label_set) for e in dataset.splits["train"].examples)
    # JSONL label lists switch multi-label on by themselves; an empty list is a row without labels
    rows = [{"text": "a", "label": ["x", "y"]}, {"text": "b", "label": []}, {"text": "c", "label": ["y"]}]
    for split in ("train", "valid", "test"):
        write_jsonl(tmp_path / f"{split}.jsonl", rows)
    lists = load_dataset(tmp_path)
    assert lists.task == MULTI_LABEL and [e.label_set for e in lists.splits["test"].examples] == [
        ("x", "y"), (), ("y",)]


def test_multilabel_unseen_label_is_an_error(tmp_path, multilabel_folder):
    for split in ("train", "valid"):
        (tmp_path / f"{split}.csv").write_text((multilabel_folder / f"{split}.csv").read_text())
    (tmp_path / "test.csv").write_text("text,label\nsome note,cardiac;oncology\n")
    with pytest.raises(EdgeclinError, match="'oncology' never occur"):
        load_dataset(tmp_path, multi_label=True)


# --- encoding and spans -----------------------------------------------------------------------

def test_labels_sit_on_the_first_word_piece(tiny_bert):
    from edgeclin.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_bert))
    words = ["chronic", "kidneydisease", "."]  # the middle word splits into several pieces ([UNK] or pieces)
    ids, _, word_ids, cut = encode_words(tokenizer, [words], 64)
    assert cut == 0 and word_ids[0][0] is None and word_ids[0][-1] is None
    assert [word for word, _ in first_pieces(word_ids[0])] == [0, 1, 2]
    from edgeclin.data import Example

    example = Example(text=" ".join(words), label="", tokens=tuple(words), tags=("B-Disease", "I-Disease", "O"))
    encoded = get_task(TOKEN).encode(tokenizer, [example], {"O": 0, "B-Disease": 1, "I-Disease": 2}, InputFormat(64))
    labels = encoded.labels[0]
    assert [labels[p] for _, p in first_pieces(encoded.word_ids[0])] == [1, 2, 0]
    assert sum(label != IGNORE_INDEX for label in labels) == 3
    # truncation keeps [CLS] ... [SEP] and drops pieces from the end
    ids, _, word_ids, cut = encode_words(tokenizer, [words * 20], 10)
    assert cut == 1 and len(ids[0]) == 10 and word_ids[0][-1] is None


def test_a_word_without_pieces_does_not_shift_the_others(tiny_bert):
    """BERT's normaliser deletes a soft hyphen or zero-width space: that word has no piece at all."""
    from edgeclin.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_bert))
    words = ["asthma", "\u00ad", "aspirin"]
    _, _, word_ids, _ = encode_words(tokenizer, [words], 32)
    assert [word for word, _ in first_pieces(word_ids[0])] == [0, 2]
    scores = np.zeros((len(word_ids[0]), 3))
    for word, position in first_pieces(word_ids[0]):
        scores[position, 1 if word == 0 else 2] = 1.0
    assert word_tags(scores, word_ids[0], 3, ["O", "B-Disease", "B-Drug"]) == ["B-Disease", "O", "B-Drug"]


def test_bio_spans_and_character_offsets():
    assert bio_spans(["B-D", "I-D", "O", "I-X", "B-D", "B-D"]) == [("D", 0, 2), ("X", 3, 4), ("D", 4, 5),
                                                                      ("D", 5, 6)]
    text = "Started  warfarin (5mg) for AF-related stroke."
    words = split_words(text)
    assert all(text[start:end] == word for word, start, end in words)
    assert [w for w, _, _ in words][:6] == ["Started", "warfarin", "(", "5mg", ")", "for"]


def test_tagger_turns_word_tags_into_character_spans(monkeypatch, ner_run, tmp_path):
    """Entities come from the words' tags and point at the exact characters of the input text."""
    from edgeclin.export import export

    bundle = export(ner_run.output, tmp_path / "bundle", quiet=True).bundle
    tagger = runtime.load(bundle)
    text = "Given  aspirin for heart failure, then (metformin)."
    words = [w for w, _, _ in split_words(text)]
    wanted = {"aspirin": "B-Drug", "heart": "B-Disease", "failure": "I-Disease", "metformin": "B-Drug"}

    def fake_scores(rows, batch_size=32):
        out = []
        for row in rows:
            scores = np.zeros((len(row), len(tagger.labels)), dtype=np.float32)
            for i, word in enumerate(row):
                scores[i, tagger.labels.index(wanted.get(word, "O"))] = 0.9
            out.append(scores)
        return out, [False] * len(rows)

    monkeypatch.setattr(tagger, "_word_scores", fake_scores)
    [result] = tagger.predict([text])
    assert result.words == words
    spans = [(e.type, e.start, e.end, e.text) for e in result.entities]
    assert spans == [("Drug", 7, 14, "aspirin"), ("Disease", 19, 32, "heart failure"),
                     ("Drug", 40, 49, "metformin")]
    assert all(text[s:e] == t for _, s, e, t in spans)


# --- metrics ----------------------------------------------------------------------------------

def test_entity_metrics_need_exact_boundaries_and_type():
    true = [["B-D", "I-D", "O", "B-X"], ["B-D", "O"]]
    pred = [["B-D", "O", "O", "B-X"], ["B-D", "O"]]  # first entity cut short: a miss and a false positive
    m = entity_metrics(true, pred)
    assert m["entities"] == 3 and m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["per_type"]["X"]["f1"] == 1.0 and m["per_type"]["D"]["f1"] == pytest.approx(0.5)


def test_multilabel_metrics_and_threshold():
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    probabilities = np.array([[0.8, 0.1, 0.35], [0.2, 0.7, 0.1], [0.9, 0.3, 0.2], [0.1, 0.2, 0.4]])
    threshold = tune_threshold(targets, probabilities)
    assert 0.2 < threshold <= 0.35  # 0.5 would miss the true 0.35 and 0.4 and 0.3
    m = multilabel_metrics(targets, probabilities, threshold)
    assert m["micro_f1"] > multilabel_metrics(targets, probabilities, 0.5)["micro_f1"]
    assert m["precision_at_1"] == 1.0 and m["micro_auroc"] > 0.9 and m["threshold"] == threshold


# --- train / export / predict -----------------------------------------------------------------

@pytest.fixture(scope="module")
def ner_run(tiny_bert, ner_folder, tmp_path_factory):
    return train(TrainConfig(model=str(tiny_bert), data=str(ner_folder), output=str(tmp_path_factory.mktemp("r") / "n"),
                             epochs=3, lr=2e-2, batch_size=8, max_length=32, precision="fp32", progress=False,
                             allow_degenerate=True))


def test_ner_run_records_entity_metrics(ner_run):
    metrics = json.loads((ner_run.output / "metrics.json").read_text())
    assert metrics["task"] == TOKEN and metrics["selection_metric"] == "f1"
    assert {"precision", "recall", "f1", "per_type"} <= set(metrics["test"])
    assert metrics["test"]["f1"] > 0.5  # a clean invented task: a few epochs learn it
    labels = json.loads((ner_run.output / "labels.json").read_text())
    assert labels["task"] == TOKEN and labels["labels"][0] == "O"


def test_ner_export_gate_and_predict(ner_run, ner_folder, tmp_path):
    from edgeclin.export import export
    from edgeclin.predict import predict_file

    result = export(ner_run.output, tmp_path / "bundle", int8=True, quiet=True, max_drop=100.0)
    manifest = result.manifest
    assert manifest["task"] == TOKEN and manifest["gate"]["metric"] == "f1"
    fp32 = manifest["gate"]["variants"][0]["metrics"]
    assert fp32["f1"] == pytest.approx(ner_run.metrics["test"]["f1"], abs=1e-6)  # ONNX fp32 == PyTorch

    out = tmp_path / "pred.jsonl"
    summary = predict_file(result.bundle, ner_folder / "test.jsonl", out)
    chosen = next(v for v in manifest["gate"]["variants"] if v["name"] == manifest["chosen"])
    assert summary["metrics"]["f1"] == pytest.approx(measured_metric(manifest, summary, "f1"))
    if summary["backend"] == "onnxruntime":
        assert summary["metrics"]["f1"] == pytest.approx(chosen["metrics"]["f1"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 40 and all(len(r["tags"]) == len(r["tokens"]) for r in rows)
    for row in rows:
        for entity in row["entities"]:
            assert row["text"][entity["start"]:entity["end"]] == entity["text"]

    raw = tmp_path / "raw.csv"
    raw.write_text('text\n"The patient with asthma was given aspirin."\n')
    predict_file(result.bundle, raw, tmp_path / "raw.jsonl")  # raw text: split into words as BERT does
    [row] = [json.loads(line) for line in (tmp_path / "raw.jsonl").read_text().splitlines()]
    assert "entities" in row and "tags" not in row
    assert all(row["text"][e["start"]:e["end"]] == e["text"] for e in row["entities"])


def test_multilabel_train_export_predict(tiny_bert, multilabel_folder, tmp_path):
    from edgeclin.export import export
    from edgeclin.predict import predict_file

    run = train(TrainConfig(model=str(tiny_bert), data=str(multilabel_folder), multi_label=True,
                            output=str(tmp_path / "run"), epochs=3, lr=2e-2, batch_size=8, max_length=32,
                            precision="fp32", progress=False, allow_degenerate=True))
    metrics = run.metrics
    assert metrics["task"] == MULTI_LABEL and metrics["selection_metric"] == "micro_f1"
    assert {"micro_f1", "macro_f1", "micro_auroc", "macro_auroc", "precision_at_1"} <= set(metrics["test"])
    labels = json.loads((run.output / "labels.json").read_text())
    # the test split is scored at the threshold tuned on validation at the best epoch
    best = metrics["epochs"][metrics["best_epoch"] - 1]["valid"]
    assert labels["threshold"] == best["threshold"] == metrics["test"]["threshold"]

    result = export(run.output, tmp_path / "bundle", int8=True, quiet=True, max_drop=100.0)
    assert result.manifest["gate"]["metric"] == "micro_f1" and result.manifest["threshold"] == labels["threshold"]
    fp32 = result.manifest["gate"]["variants"][0]["metrics"]
    assert fp32["micro_f1"] == pytest.approx(metrics["test"]["micro_f1"], abs=1e-6)

    out = tmp_path / "pred.csv"
    summary = predict_file(result.bundle, multilabel_folder / "test.csv", out)
    assert summary["task"] == MULTI_LABEL and "micro_f1" in summary["metrics"]
    import csv

    rows = list(csv.DictReader(out.open()))
    assert {"p_cardiac", "p_renal", "p_respiratory", "label", "true_label"} <= set(rows[0])
    threshold = labels["threshold"]
    for row in rows:
        chosen = {name for name in ("cardiac", "renal", "respiratory") if float(row[f"p_{name}"]) >= threshold}
        assert set(filter(None, row["label"].split(";"))) == chosen


@pytest.mark.parametrize("method", ["full", "lora", "ia3", "prefix", "prompt", "ptuning"])
@pytest.mark.parametrize("task_folder", ["ner_folder", "multilabel_folder"])
def test_every_method_trains_each_task(request, tiny_bert, tmp_path, method, task_folder):
    """The paper's grid on the new task types: each PEFT method trains NER and multi-label runs."""
    folder = request.getfixturevalue(task_folder)
    run = train(TrainConfig(model=str(tiny_bert), data=str(folder), multi_label=task_folder == "multilabel_folder",
                            method=method, output=str(tmp_path / "run"), max_steps=2, batch_size=8, max_length=32,
                            precision="fp32", progress=False, allow_degenerate=True))
    assert run.metrics["task"] == (TOKEN if task_folder == "ner_folder" else MULTI_LABEL)
    assert run.metrics["parameters"]["trainable"] > 0
    if method in ("prefix", "prompt", "ptuning"):  # virtual tokens must not shift the NER outputs
        assert run.metrics["test"][run.metrics["selection_metric"]] is not None
    assert not (run.output / PROMPT_ENCODER).exists()  # a snapshot's file, not the published adapter's


@pytest.mark.parametrize("method", ["prompt", "ptuning", "prefix"])
def test_virtual_tokens_do_not_shift_token_outputs(tiny_bert, method):
    """peft prepends prompt/P-tuning tokens without shifting NER labels or logits; edgeclin aligns them."""
    import torch

    from edgeclin.methods import get_method
    from edgeclin.models import load_classifier

    model = get_method(method).prepare(load_classifier(str(tiny_bert), ["O", "B-X", "I-X"], task=TOKEN),
                                       TrainConfig(num_virtual_tokens=4))
    ids = torch.randint(5, 50, (2, 7))
    output = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.zeros_like(ids))
    assert output.logits.shape == (2, 7, 3) and torch.isfinite(output.loss)


def test_bench_and_cli_on_a_multilabel_bundle(tiny_bert, multilabel_folder, tmp_path):
    """bench and the CLI report a multi-label run by its own metrics (micro-F1), not macro-F1/accuracy."""
    from click.testing import CliRunner

    from edgeclin.bench import bench
    from edgeclin.cli import main

    result = CliRunner().invoke(main, ["train", "--model", str(tiny_bert), "--data", str(multilabel_folder),
                                       "--multi-label", "--max-steps", "2", "--max-length", "32", "--quiet",
                                       "--allow-degenerate",
                                       "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "micro-F1" in result.output
    result = CliRunner().invoke(main, ["export", str(tmp_path / "run"), "--int8", "--max-drop", "100", "--quiet",
                                       "-o", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    out = bench([tmp_path / "bundle"], data=multilabel_folder, batch_sizes=(1,), seq_lens=(16,), threads=(1,),
                warmup=1, repeats=2, rounds=1, out=tmp_path / "bench", progress=False)
    report = (out / "report.md").read_text()
    assert "micro-F1" in report
    rows = json.loads((out / "results.json").read_text())["end_to_end"]
    assert rows and all(r["task"] == MULTI_LABEL and "micro_f1" in r["metrics"] for r in rows if "metrics" in r)


def test_sweep_reports_each_task_by_its_metric(tiny_bert, ner_folder, multilabel_folder, tmp_path):
    from edgeclin.sweep import run_sweep

    for folder, options, metric in ((ner_folder, {}, "f1"), (multilabel_folder, {"multi_label": True}, "micro_f1")):
        out = tmp_path / folder.name
        run_sweep([str(tiny_bert)], ["full", "lora"], output=out, data=str(folder), progress=False, max_steps=2,
                  max_length=32, precision="fp32", **options)
        table = (out / "sweep.md").read_text()
        task = TOKEN if folder == ner_folder else MULTI_LABEL
        assert f"## {task}: test {metric}" in table and f"| test {metric} | Δ full |" in table


def test_ner_predict_columns(ner_run, ner_folder, tmp_path):
    from click.testing import CliRunner

    from edgeclin.cli import main
    from edgeclin.export import export

    bundle = export(ner_run.output, tmp_path / "bundle", quiet=True).bundle
    result = CliRunner().invoke(main, ["predict", str(bundle), "--data", str(ner_folder / "test.jsonl"),
                                       "--text-pair-col", "other"])
    assert result.exit_code == 2 and "NER bundles tag single texts, not pairs" in result.stderr
    renamed = tmp_path / "renamed.jsonl"
    rows = [json.loads(line) for line in (ner_folder / "test.jsonl").read_text().splitlines()]
    write_jsonl(renamed, [{"tokens": r["tokens"], "gold": r["tags"]} for r in rows])
    result = CliRunner().invoke(main, ["predict", str(bundle), "--data", str(renamed), "--label-col", "gold",
                                       "--backend", "onnxruntime", "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out.jsonl.metrics.json").read_text())
    assert summary["metrics"]["f1"] == pytest.approx(json.loads((bundle / "manifest.json").read_text())
                                                     ["gate"]["variants"][0]["metrics"]["f1"])
