import json

import pytest
from conftest import write_csv

from edgeclin.data import DEMO_DATA, Columns, describe, documented_pair_column, load_dataset, read_split, subsample
from edgeclin.errors import EdgeclinError


def make_folder(tmp_path, train, valid=None, test=None, header=("text", "label")):
    valid = valid or [("fine note", "a"), ("other note", "b")]
    test = test or [("third note", "a"), ("fourth note", "b")]
    write_csv(tmp_path / "train.csv", train, header)
    write_csv(tmp_path / "valid.csv", valid, header)
    write_csv(tmp_path / "test.csv", test, header)
    return tmp_path


def test_reads_csv_folder_and_sorts_labels(tmp_path):
    folder = make_folder(tmp_path, [("x one", "b"), ("x two", "a"), ("x three", "b")])
    dataset = load_dataset(folder)
    assert dataset.labels == ["a", "b"]
    assert len(dataset.splits["train"].examples) == 3
    assert describe(dataset)["train"]["label_counts"] == {"a": 1, "b": 2}


def test_reads_jsonl_and_text_pairs(tmp_path):
    for name in ("train", "valid", "test"):
        rows = [{"premise": "p1", "hypothesis": "h1", "y": "yes"}, {"premise": "p2", "hypothesis": "h2", "y": "no"}]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dataset = load_dataset(tmp_path, columns=Columns("premise", "y", "hypothesis"))
    assert dataset.splits["valid"].examples[0].text_pair == "h1"


def test_documented_pair_column_is_read_without_an_option(tmp_path):
    """text,text_pair,label (the layout data.py documents) trains on pairs with --data alone."""
    pairs = make_folder(tmp_path / "pairs", [("p1", "h1", "yes"), ("p2", "h2", "no")],
                        [("p3", "h3", "yes"), ("p4", "h4", "no")], [("p5", "h5", "yes"), ("p6", "h6", "no")],
                        header=("text", "text_pair", "label"))
    assert documented_pair_column(pairs, None, Columns()) == "text_pair"
    assert documented_pair_column(None, pairs / "train.csv", Columns()) == "text_pair"
    assert documented_pair_column(pairs, None, Columns(text_pair="other")) is None  # the user named one
    single = make_folder(tmp_path / "single", [("x one", "a"), ("x two", "b")])
    assert documented_pair_column(single, None, Columns()) is None
    assert documented_pair_column(DEMO_DATA, None, Columns()) is None
    ner = tmp_path / "ner.jsonl"
    ner.write_text(json.dumps({"tokens": ["a"], "tags": ["O"], "text_pair": "x"}) + "\n")
    assert documented_pair_column(None, ner, Columns()) is None  # NER tags single texts


def test_missing_file_is_named(tmp_path):
    make_folder(tmp_path, [("a", "a"), ("b", "b")])
    (tmp_path / "valid.csv").unlink()
    with pytest.raises(EdgeclinError, match="missing valid split"):
        load_dataset(tmp_path)
    with pytest.raises(EdgeclinError, match=r"data file not found: .*nope\.csv"):
        read_split(tmp_path / "nope.csv", "train", Columns())


def test_missing_column_lists_present_columns(tmp_path):
    path = write_csv(tmp_path / "train.csv", [("a", "b")], header=("note", "label"))
    with pytest.raises(EdgeclinError) as info:
        read_split(path, "train", Columns())
    assert "no column 'text'" in str(info.value) and "columns present: note, label" in str(info.value)


def test_empty_row_names_file_line_and_column(tmp_path):
    path = write_csv(tmp_path / "train.csv", [("good", "a"), ("", "b"), ("fine", "b")])
    with pytest.raises(EdgeclinError) as info:
        read_split(path, "train", Columns())
    message = str(info.value)
    assert "train.csv, line 3" in message and "column 'text'" in message and "--skip-bad-rows" in message
    split = read_split(path, "train", Columns(), skip_bad_rows=True)
    assert split.skipped_rows == 1 and len(split.examples) == 2


def test_non_utf8_row_is_reported_and_skippable(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"text,label\ngood text,a\nbad \xff\xfe text,b\nmore,b\n")
    with pytest.raises(EdgeclinError, match=r"line 3: text in column 'text' is not valid UTF-8"):
        read_split(path, "train", Columns())
    split = read_split(path, "train", Columns(), skip_bad_rows=True)
    assert split.skipped_rows == 1 and [e.text for e in split.examples] == ["good text", "more"]


def test_invalid_jsonl_line_names_line_and_column(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": }\n')
    with pytest.raises(EdgeclinError, match=r"train.jsonl, line 2, column \d+: invalid JSON"):
        read_split(path, "train", Columns())


def test_unseen_label_in_test_is_refused(tmp_path):
    folder = make_folder(tmp_path, [("a", "a"), ("b", "b")], test=[("c", "a"), ("d", "zebra")])
    with pytest.raises(EdgeclinError, match=r"test.csv: label\(s\) 'zebra' never occur in the training data"):
        load_dataset(folder)


def test_single_class_is_refused(tmp_path):
    folder = make_folder(tmp_path, [("a", "a"), ("b", "a")], valid=[("c", "a")], test=[("d", "a")])
    with pytest.raises(EdgeclinError, match="only one class"):
        load_dataset(folder)


def test_subsample_is_deterministic_and_order_preserving(demo_folder):
    examples = read_split(demo_folder / "train.csv", "train", Columns()).examples
    first, second = subsample(examples, 20, seed=1), subsample(examples, 20, seed=1)
    assert first == second and len(first) == 20
    assert subsample(examples, 20, seed=2) != first
    positions = [examples.index(e) for e in first]
    assert positions == sorted(positions)


def test_demo_data_is_synthetic_and_not_trivial():
    from edgeclin.demo_data import generate_demo_dataset

    splits = generate_demo_dataset(seed=0)
    assert splits == generate_demo_dataset(seed=0)
    train = splits["train"].examples
    assert all("SYNTHETIC" in e.text for e in train)
    assert len({e.label for e in train}) == 5
    # label noise: some notes' complaint belongs to another specialty's template
    from edgeclin.demo_data import SPECIALTIES

    mislabelled = sum(not any(c in e.text for c in SPECIALTIES[e.label]["complaint"]) for e in train)
    assert 0.02 * len(train) < mislabelled < 0.1 * len(train)


def test_form_feeds_and_line_separators_stay_inside_their_row(tmp_path):
    path = write_csv(tmp_path / "train.csv", [("page one\x0cpage two", "a"), ("para\u2028graph", "b")])
    texts = [e.text for e in read_split(path, "train", Columns()).examples]
    assert texts == ["page one\x0cpage two", "para\u2028graph"]
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text(json.dumps({"text": "a\u2028b", "label": "x"}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert read_split(jsonl, "train", Columns()).examples[0].text == "a\u2028b"
