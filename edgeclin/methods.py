"""Fine-tuning methods: each is a named way to turn a loaded model into a trainable one.

A method decides which parameters train and how its result is saved. New methods
(IA3, prefix tuning, ...) are added by registering another ``Method``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgeclin.errors import EdgeclinError


@dataclass(frozen=True)
class ArchitectureModules:
    """Where LoRA goes in one architecture (module-name suffixes, as peft matches them)."""

    attention: tuple[str, ...]  # query/key/value projections
    attention_output: tuple[str, ...]
    feed_forward: tuple[str, ...]
    # pretrained dense layers between the encoder and the classifier (BERT's pooler), trained in full
    # beside every adapter: never trained for the task, frozen it held IA3 and the virtual-token methods
    # at the majority class, and adapted by LoRA it trailed training it in full (README, "Defaults")
    head_pretrained: tuple[str, ...] = ()
    # layers that the classification head adds with fresh weights, besides peft's own
    # "classifier"/"score": trained in full and saved with the adapter
    head_new: tuple[str, ...] = ()


ARCHITECTURES: dict[str, ArchitectureModules] = {
    "bert": ArchitectureModules(("query", "key", "value"), ("attention.output.dense",),
                                ("intermediate.dense", "output.dense"), head_pretrained=("pooler.dense",)),
    "roberta": ArchitectureModules(("query", "key", "value"), ("attention.output.dense",),
                                   ("intermediate.dense", "output.dense")),
    "distilbert": ArchitectureModules(("q_lin", "k_lin", "v_lin"), ("out_lin",), ("lin1", "lin2"),
                                      head_new=("pre_classifier",)),
    "mpnet": ArchitectureModules(("q", "k", "v"), ("o",), ("intermediate.dense", "output.dense")),
    # MobileBERT's bottleneck and stacked FFN layers are all called "dense"
    "mobilebert": ArchitectureModules(("query", "key", "value"), ("attention.output.dense",), ("dense",),
                                      head_pretrained=("pooler.dense",)),
}

TARGET_PRESETS = ("qv", "qkv", "attention", "all-linear")


def lora_target_modules(model_type: str, targets: str) -> list[str]:
    """Resolve ``--target-modules`` (a preset or a comma list) for one architecture.

    Presets: ``qv`` (query, value), ``qkv``, ``attention`` (q, k, v and the attention
    output), ``all-linear`` (attention and feed-forward). A comma list is used exactly as
    given. The head (pooler and classifier) trains in full: ``whole_head_to_save``.
    """
    if targets not in TARGET_PRESETS:
        names = [t.strip() for t in targets.split(",") if t.strip()]
        if not names:
            raise EdgeclinError("--target-modules is empty")
        return names
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise EdgeclinError(
            f"no LoRA target preset for model type {model_type!r} (known: {', '.join(sorted(ARCHITECTURES))}); "
            "pass --target-modules as a comma list of module names"
        )
    if targets == "qv":
        chosen = (arch.attention[0], arch.attention[2])
    elif targets == "qkv":
        chosen = arch.attention
    elif targets == "attention":
        chosen = arch.attention + arch.attention_output
    else:
        chosen = arch.attention + arch.attention_output + arch.feed_forward
    return list(dict.fromkeys(chosen))


def whole_head_to_save(model) -> list[str] | None:
    """The head layers the model has beyond peft's own "classifier"/"score", to train in full and save with
    the adapter: the fresh ones and the pretrained pooler (``ArchitectureModules.head_pretrained``)."""
    arch = ARCHITECTURES.get(model.config.model_type)
    names = [*arch.head_new, *arch.head_pretrained] if arch else []
    present = [name for name in names if any(module.endswith(name) for module, _ in model.named_modules())]
    return present or None


@dataclass(frozen=True)
class Method:
    name: str
    mergeable: bool  # can the result be folded into plain model weights?
    saves_adapter: bool
    build: Callable  # (model, TrainConfig, task, new_weights) -> trainable model
    peft_type: str | None = None  # what peft writes in adapter_config.json

    def prepare(self, model, config, *, task=None, new_weights: list[str] | tuple = ()):
        """The trainable model. ``task``: its strategy (default: read from the model's class);
        ``new_weights``: weights that started random, which train in full."""
        from edgeclin.defaults import fill_defaults
        from edgeclin.models import count_parameters
        from edgeclin.tasks import task_of_model

        task = task or task_of_model(model)
        config, _ = fill_defaults(config, task.name, count_parameters(model)[1])  # options left out: as train
        return self.build(model, config, task, list(new_weights))


def _task_type(task):
    """peft's wrapper for the task's head (a token classifier needs its own: virtual tokens are cut off)."""
    from peft import TaskType

    return TaskType[task.peft_task_type]


def _prepare_full(model, config, task, new_weights):
    for parameter in model.parameters():
        parameter.requires_grad = True
    return model


def _prepare_lora(model, config, task, new_weights):
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        task_type=_task_type(task),
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_target_modules(model.config.model_type, config.target_modules),
        modules_to_save=whole_head_to_save(model),
    )
    try:
        return get_peft_model(model, lora_config)
    except ValueError as exc:
        raise EdgeclinError(f"LoRA could not be applied: {exc}") from None


def _prepare_ia3(model, config, task, new_weights):
    """IA3 (Liu et al. 2022): learned rescaling of keys, values and the feed-forward output."""
    from peft import IA3Config, get_peft_model

    model_type = model.config.model_type
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise EdgeclinError(f"no IA3 targets known for model type {model_type!r}")
    feed_forward = arch.feed_forward[-1:]  # the layer that maps back to the hidden size
    ia3_config = IA3Config(task_type=_task_type(task), target_modules=[*arch.attention[1:], *feed_forward],
                           feedforward_modules=list(feed_forward), modules_to_save=whole_head_to_save(model))
    return get_peft_model(model, ia3_config)


PREFIX_ARCHITECTURES = ("bert",)


def _prompt_learning(kind: str):
    """Prefix tuning, prompt tuning and P-tuning: trained virtual tokens, frozen model."""

    def prepare(model, config, task, new_weights):
        from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, PromptTuningInit, get_peft_model

        config_class, extra = {
            "prefix": (PrefixTuningConfig, {}),
            # peft's random start is N(0, 1), far larger than any word embedding, and stayed at the majority
            # class; embeddings of words drawn from the vocabulary start where real inputs live
            "prompt": (PromptTuningConfig, {"prompt_tuning_init": PromptTuningInit.SAMPLE_VOCAB}),
            "ptuning": (PromptEncoderConfig, {"encoder_hidden_size": 128}),
        }[kind]
        c = model.config
        if kind == "prefix" and c.model_type not in PREFIX_ARCHITECTURES:
            # peft feeds prefixes as past key values; these models' attention takes none (or, for
            # RoBERTa under transformers 4.57, fails on the legacy cache format) - tested in CI
            raise EdgeclinError(f"prefix tuning works on {', '.join(PREFIX_ARCHITECTURES)} models only, not "
                                f"{c.model_type}; use --method prompt or ptuning instead")
        hidden = getattr(c, "hidden_size", None) or c.dim  # DistilBERT names it "dim"
        # virtual tokens live in the word-embedding space (smaller than hidden in MobileBERT);
        # prefixes live in every layer's key/value space
        token_dim = hidden if kind == "prefix" else getattr(c, "embedding_size", None) or hidden
        peft_config = config_class(
            task_type=_task_type(task), num_virtual_tokens=config.num_virtual_tokens, token_dim=token_dim,
            num_layers=getattr(c, "num_hidden_layers", None) or c.n_layers,
            num_attention_heads=getattr(c, "num_attention_heads", None) or c.n_heads,
            modules_to_save=whole_head_to_save(model), **extra)
        try:
            peft_model = get_peft_model(model, peft_config)
        except ValueError as exc:
            raise EdgeclinError(f"{kind} tuning could not be applied to {c.model_type}: {exc}") from None
        if kind != "prefix":  # prompt and P-tuning prepend virtual tokens to the input
            task.adapt_prompt_model(peft_model, config.num_virtual_tokens)
        return peft_model

    return prepare


NOT_MERGEABLE = ("its trained virtual tokens are extra inputs to every layer, not changes to existing weights, "
                 "so they cannot be folded into a plain model; deploy it with PyTorch and peft, or train with "
                 "--method lora or ia3 for an exportable model")

# Each method's defaults (learning rate, LoRA rank and targets, epochs) per task: edgeclin/defaults.py.
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("full", mergeable=True, saves_adapter=False, build=_prepare_full),
    Method("lora", mergeable=True, saves_adapter=True, build=_prepare_lora, peft_type="LORA"),
    Method("ia3", mergeable=True, saves_adapter=True, build=_prepare_ia3, peft_type="IA3"),
    Method("prefix", mergeable=False, saves_adapter=True, build=_prompt_learning("prefix"),
           peft_type="PREFIX_TUNING"),
    Method("prompt", mergeable=False, saves_adapter=True, build=_prompt_learning("prompt"),
           peft_type="PROMPT_TUNING"),
    Method("ptuning", mergeable=False, saves_adapter=True, build=_prompt_learning("ptuning"),
           peft_type="P_TUNING"),
)}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise EdgeclinError(f"unknown method {name!r} (choose from {', '.join(METHODS)})") from None


def method_of_adapter(peft_type: str) -> Method | None:
    """The method that wrote an adapter, from adapter_config.json's ``peft_type``."""
    return next((m for m in METHODS.values() if m.peft_type == peft_type), None)
