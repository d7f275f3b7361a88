import pytest
import torch

from edgeclin.errors import EdgeclinError
from edgeclin.methods import get_method, lora_target_modules
from edgeclin.training import TrainConfig


def tiny_model(model_type: str):
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        DistilBertConfig,
        MobileBertConfig,
        MPNetConfig,
        RobertaConfig,
    )

    common = dict(vocab_size=120, num_labels=3, max_position_embeddings=64)
    configs = {
        "bert": BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, **common),
        "roberta": RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                                 **common),
        "mpnet": MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                             **common),
        "distilbert": DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=48, **common),
        "mobilebert": MobileBertConfig(hidden_size=32, embedding_size=16, intra_bottleneck_size=16,
                                       true_hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=48, num_feedforward_networks=2, **common),
    }
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(configs[model_type])


@pytest.mark.parametrize("model_type", ["bert", "roberta", "mpnet", "distilbert", "mobilebert"])
@pytest.mark.parametrize("targets", ["qkv", "attention", "all-linear"])
def test_lora_applies_to_each_architecture_and_trains_the_head(model_type, targets):
    model = tiny_model(model_type)
    lora = get_method("lora").prepare(model, TrainConfig(target_modules=targets, lora_r=2, lora_alpha=4))
    trainable = [name for name, p in lora.named_parameters() if p.requires_grad]
    assert any("lora_A" in name for name in trainable)
    head = "out_proj" if model_type in ("roberta", "mpnet") else "classifier"
    assert any(head in name and "modules_to_save" in name for name in trainable), trainable
    if model_type in ("bert", "mobilebert"):  # the pretrained pooler trains in full, with no LoRA on it
        assert any("pooler.dense.modules_to_save" in name for name in trainable), trainable
        assert not any("pooler" in name and "lora_" in name for name in trainable), trainable
    if model_type == "distilbert":  # pre_classifier starts random, so it trains in full
        assert any("pre_classifier" in name and "modules_to_save" in name for name in trainable)
    inputs = torch.randint(5, 100, (2, 7))
    loss = lora(input_ids=inputs, labels=torch.tensor([0, 2])).loss
    loss.backward()


def test_presets_resolve_per_architecture():
    assert lora_target_modules("bert", "qv") == ["query", "value"]
    assert lora_target_modules("distilbert", "attention") == ["q_lin", "k_lin", "v_lin", "out_lin"]
    assert lora_target_modules("mpnet", "qkv") == ["q", "k", "v"]
    assert lora_target_modules("anything", "q_proj, v_proj") == ["q_proj", "v_proj"]
    with pytest.raises(EdgeclinError, match="no LoRA target preset for model type 'gpt2'"):
        lora_target_modules("gpt2", "attention")


def test_full_trains_everything_and_unknown_method_is_refused():
    model = tiny_model("bert")
    for p in model.parameters():
        p.requires_grad = False
    model = get_method("full").prepare(model, TrainConfig(method="full"))
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(EdgeclinError, match="unknown method 'ia4'"):
        get_method("ia4")


def test_random_pooler_trains_in_full(tmp_path, tiny_bert):
    """A checkpoint without pooler weights: the pooler starts random, and trains in full like a pretrained one."""
    from safetensors.torch import load_file, save_file

    from edgeclin.models import load_classifier_with_info

    folder = tmp_path / "no-pooler"
    folder.mkdir()
    for item in tiny_bert.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    weights = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if "pooler" not in k}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    loaded = load_classifier_with_info(str(folder), ["a", "b", "c"])
    assert "bert.pooler.dense.weight" in loaded.new_weights
    lora = get_method("lora").prepare(loaded.model, TrainConfig(), new_weights=loaded.new_weights)
    trainable = [name for name, p in lora.named_parameters() if p.requires_grad]
    assert any("pooler.dense.modules_to_save" in name for name in trainable), trainable
    assert not any("pooler" in name and "lora_" in name for name in trainable)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    from edgeclin.models import load_classifier

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(EdgeclinError, match="safetensors only"):
        load_classifier(str(tmp_path), ["a", "b"])


@pytest.mark.parametrize("model_type", ["bert", "roberta", "mpnet", "distilbert", "mobilebert"])
@pytest.mark.parametrize("method", ["ia3", "prefix", "prompt", "ptuning"])
def test_other_peft_methods_train_on_each_architecture(model_type, method):
    model = tiny_model(model_type)
    if method == "prefix" and model_type != "bert":
        with pytest.raises(EdgeclinError, match="prefix tuning works on bert models only"):
            get_method(method).prepare(model, TrainConfig(method=method))
        return
    peft_model = get_method(method).prepare(model, TrainConfig(method=method, num_virtual_tokens=4))
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and len(trainable) < len(list(peft_model.named_parameters()))
    inputs = torch.randint(5, 100, (2, 7))
    loss = peft_model(input_ids=inputs, attention_mask=torch.ones_like(inputs), labels=torch.tensor([0, 2])).loss
    loss.backward()
    assert any(p.grad is not None for n, p in peft_model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("method", ["lora", "ia3", "prefix", "prompt", "ptuning"])
def test_every_adapter_trains_the_pretrained_pooler_in_full(method):
    """A frozen pooler that was never trained for the task held these methods at the majority class."""
    peft_model = get_method(method).prepare(tiny_model("bert"), TrainConfig(method=method, num_virtual_tokens=4))
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert any("pooler.dense.modules_to_save" in name for name in trainable), sorted(trainable)
    assert any("classifier.modules_to_save" in name for name in trainable)


def test_the_head_learning_rate_groups_the_head_apart():
    from edgeclin.training import parameter_groups

    peft_model = get_method("prompt").prepare(tiny_model("bert"), TrainConfig(method="prompt", num_virtual_tokens=4))
    body, head = parameter_groups(peft_model, 3e-2, 2e-3, [])
    names = {id(p): n for n, p in peft_model.named_parameters()}
    assert (body["lr"], head["lr"]) == (3e-2, 2e-3)
    assert all(".modules_to_save." in names[id(p)] for p in head["params"])
    assert not any(".modules_to_save." in names[id(p)] for p in body["params"])
    trainable = sum(p.requires_grad for p in peft_model.parameters())
    assert len(body["params"]) + len(head["params"]) == trainable
    # the same rate, or none: one group (so a state saved before the head had a rate loads again)
    assert len(parameter_groups(peft_model, 3e-2, None, [])) == len(parameter_groups(peft_model, 3e-2, 3e-2, [])) == 1
    # a full fine-tune: the head is what started random
    full = get_method("full").prepare(tiny_model("bert"), TrainConfig(method="full"))
    body, head = parameter_groups(full, 2e-4, 1e-3, ["classifier.weight", "classifier.bias"])
    assert len(head["params"]) == 2 and head["lr"] == 1e-3


def test_a_head_resized_to_other_labels_counts_as_new_weights(tiny_bert):
    """A checkpoint with a 2-label head loaded for 3 labels: the resized classifier started random (it trains
    at --head-lr in a full fine-tune)."""
    from edgeclin.models import load_classifier_with_info

    loaded = load_classifier_with_info(str(tiny_bert), ["a", "b", "c"])
    assert {"classifier.weight", "classifier.bias"} <= set(loaded.new_weights)


@pytest.mark.parametrize("method", ["ptuning", "prompt"])
def test_a_snapshot_restores_the_prompt_encoder_it_trained(method, tmp_path):
    """peft's adapter file holds P-tuning's encoder *output*; loaded into a model that still runs the
    encoder (the test of the best epoch, a resumed run), that output went through the MLP twice."""
    from edgeclin.artifacts import LabelsFile
    from edgeclin.training import PROMPT_ENCODER, _load_trainable_state, _save_model_folder

    def peft_model():
        torch.manual_seed(0)  # the same base and the same untrained prompt encoder each time
        return get_method(method).prepare(tiny_model("bert"), TrainConfig(method=method, num_virtual_tokens=4))

    trained, restored = peft_model(), peft_model()
    with torch.no_grad():  # what training changes: the prompt encoder and the head
        for parameter in trained.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter))
    tokenizer = type("NoTokenizer", (), {"save_pretrained": lambda self, folder: None})()
    _save_model_folder(tmp_path, trained, tokenizer, LabelsFile(["a", "b", "c"]))
    assert (tmp_path / PROMPT_ENCODER).is_file()
    _load_trainable_state(restored, tmp_path)
    ids = torch.randint(5, 100, (2, 7))
    trained.eval(), restored.eval()
    torch.testing.assert_close(restored(input_ids=ids).logits, trained(input_ids=ids).logits)
