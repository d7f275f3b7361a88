import pytest
import torch

from edgeclin.errors import EdgeclinError
from edgeclin.methods import get_method, lora_target_modules
from edgeclin.train import TrainConfig


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
    if model_type in ("bert", "mobilebert"):  # the pretrained pooler adapts too
        assert any("pooler" in name and "lora_A" in name for name in trainable)
    if model_type == "distilbert":  # pre_classifier starts random, so it trains in full
        assert any("pre_classifier" in name and "modules_to_save" in name for name in trainable)
    inputs = torch.randint(5, 100, (2, 7))
    loss = lora(input_ids=inputs, labels=torch.tensor([0, 2])).loss
    loss.backward()


def test_presets_resolve_per_architecture():
    assert lora_target_modules("bert", "qv") == ["query", "value", "pooler.dense"]
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
