from edgeclin.schema import Example, InputFormat
from edgeclin.tasks import SINGLE_LABEL, get_task


def encode_examples(tokenizer, examples, label2id, max_length, truncation="head"):
    return get_task(SINGLE_LABEL).encode(tokenizer, examples, label2id, InputFormat(max_length, truncation))


def words(n, prefix="w"):
    return " ".join(f"{prefix}{i}" for i in range(n))


def test_truncation_strategies_keep_the_right_part(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    # "cough" and "pain" are single tokens in the tiny vocabulary
    text = " ".join(["cough"] * 10 + ["pain"] * 10)
    examples = [Example(text, "a"), Example("cough", "a")]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    cough, pain = tokenizer.convert_tokens_to_ids(["cough", "pain"])

    head = encode_examples(tokenizer, examples, {"a": 0}, max_length=10, truncation="head")
    assert head.truncated == 1 and head.input_ids[0] == [cls] + [cough] * 8 + [sep]
    assert head.input_ids[1] == [cls, cough, sep]
    tail = encode_examples(tokenizer, examples, {"a": 0}, max_length=10, truncation="tail")
    assert tail.input_ids[0] == [cls] + [pain] * 8 + [sep]
    both = encode_examples(tokenizer, examples, {"a": 0}, max_length=10, truncation="head+tail")
    assert both.input_ids[0] == [cls] + [cough] * 2 + [pain] * 6 + [sep]


def test_pairs_trim_the_longer_text_first(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    premise, statement = " ".join(["cough"] * 30), "pain pain pain"
    encoded = encode_examples(tokenizer, [Example(premise, "a", statement)], {"a": 0}, 16, "head")
    ids, types = encoded.input_ids[0], encoded.token_type_ids[0]
    assert len(ids) == 16 and encoded.truncated == 1
    pain = tokenizer.convert_tokens_to_ids("pain")
    assert ids.count(pain) == 3  # the short statement survives whole
    assert types.count(1) == 4  # statement + its [SEP]


def test_pad_batch_pads_to_longest(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    encoded = encode_examples(tokenizer, [Example("cough", "a"), Example("cough pain pain", "b")],
                              {"a": 0, "b": 1}, 32)
    batch = get_task(SINGLE_LABEL).batch(encoded, [0, 1], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, 5)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [0, 1]
