"""``edgeclin merge``: fold a LoRA adapter into the base weights, verified equal.

Merging happens in fp32 (merging in bf16/fp16 changes outputs: peft #2502, #1388), and the
merged model's logits are compared with the unmerged adapter model's on real validation
inputs before anything is saved: a lost or untrained head, or a bad merge, fails loudly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeclin import runs
from edgeclin.errors import EdgeclinError
from edgeclin.tasks import MULTI_LABEL, SINGLE_LABEL, TOKEN

MERGE_TOLERANCE = 1e-4
CHECK_EXAMPLES = 64  # validation inputs compared; enough to exercise every class and length


@dataclass
class RunFolder:
    """A trained model on disk: an edgeclin run, a merged folder, or any HF classifier folder."""

    path: Path
    record: dict | None  # run.json, when edgeclin wrote the folder
    labels: list[str]
    is_adapter: bool
    task: str = SINGLE_LABEL
    threshold: float | None = None  # multi-label decision threshold, tuned on validation

    @property
    def label_info(self) -> dict:
        """labels.json's content."""
        return {"labels": self.labels, "task": self.task,
                **({"threshold": self.threshold} if self.threshold is not None else {})}

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def config(self) -> dict:
        return (self.record or {}).get("config", {})


def open_model_folder(path: str | Path) -> RunFolder:
    path = Path(path).resolve()
    if not path.is_dir():
        raise EdgeclinError(f"no such folder: {path}")
    record = runs.read_json(path / runs.RUN_RECORD) if (path / runs.RUN_RECORD).exists() else None
    is_adapter = (path / "adapter_config.json").exists()
    has_model = (path / "config.json").exists() and any(path.glob("*.safetensors"))
    if not is_adapter and not has_model:
        if (path / "epoch").exists() or path.name.endswith(".partial"):
            raise EdgeclinError(f"{path} is an unfinished run; finish it with edgeclin train --resume")
        raise EdgeclinError(f"{path} holds no model: expected an adapter (adapter_config.json) or a model "
                            "(config.json + *.safetensors)")
    label_info = runs.read_json(path / runs.LABELS) if (path / runs.LABELS).exists() else {}
    config = runs.read_json(path / "config.json") if (path / "config.json").exists() else {}
    if label_info:
        labels = label_info["labels"]
    elif has_model:
        id2label = config.get("id2label") or {}
        labels = [id2label[k] for k in sorted(id2label, key=int)]
    else:
        raise EdgeclinError(f"{path}: no labels.json")
    task = label_info.get("task") or ((record or {}).get("resolved") or {}).get("task")
    if task is None:  # a plain Hugging Face folder: its config tells
        if any(a.endswith("ForTokenClassification") for a in config.get("architectures") or []):
            task = TOKEN
        else:
            task = MULTI_LABEL if config.get("problem_type") == "multi_label_classification" else SINGLE_LABEL
    return RunFolder(path=path, record=record, labels=labels, is_adapter=is_adapter, task=task,
                     threshold=label_info.get("threshold"))


def base_model_path(run: RunFolder) -> str:
    """Where the adapter's base weights are: re-resolved by name, so runs move between machines."""
    from edgeclin.models import resolve_model

    recorded_path = ((run.record or {}).get("resolved") or {}).get("base_model")
    if recorded_path and Path(recorded_path).is_dir():  # the very weights it was trained on
        return recorded_path
    name = run.config.get("model")
    if name:
        try:
            return resolve_model(name, init=run.config.get("init", "pretrained")).path
        except EdgeclinError:
            pass
    recorded = runs.read_json(run.path / "adapter_config.json").get("base_model_name_or_path")
    if recorded:
        return resolve_model(recorded).path
    raise EdgeclinError(f"{run.path}: cannot tell which base model the adapter belongs to")


def check_mergeable(run: RunFolder) -> None:
    from edgeclin.methods import METHODS, NOT_MERGEABLE

    peft_type = runs.read_json(run.path / "adapter_config.json").get("peft_type", "")
    method = {"LORA": "lora", "IA3": "ia3", "PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt",
              "P_TUNING": "ptuning"}.get(peft_type, run.config.get("method", peft_type.lower()))
    if method in METHODS and not METHODS[method].mergeable:
        raise EdgeclinError(f"{run.path} was trained with {method} tuning, which cannot be merged or exported: "
                            f"{NOT_MERGEABLE}")


def load_torch_model(run: RunFolder):
    """The trained model in fp32, eval mode: PeftModel for an adapter, plain model otherwise."""
    from edgeclin.models import load_classifier

    if not run.is_adapter:
        return load_classifier(str(run.path), task=run.task).eval()
    from peft import PeftModel

    base = load_classifier(base_model_path(run), run.labels, task=run.task)
    try:
        model = PeftModel.from_pretrained(base, str(run.path), is_trainable=False)
    except Exception as exc:
        raise EdgeclinError(f"{run.path}: the adapter does not fit its base model: {exc}") from None
    return model.eval()


def run_examples(run: RunFolder, split: str, eval_data: str | Path | None = None) -> list:
    """A split of the run's own data (same subsample as in training), or of ``eval_data``."""
    from edgeclin.data import Columns, load_dataset

    config = run.config
    columns = Columns(config.get("text_col", "text"), config.get("label_col", "label"), config.get("text_pair_col"))
    try:
        if eval_data is not None:
            dataset = load_dataset(eval_data, columns=columns, check=False, multi_label=run.task == MULTI_LABEL,
                                   label_separator=config.get("label_sep", ";"))
        elif run.record is None:
            raise EdgeclinError(f"{run.path} has no run.json to find its data")
        else:
            dataset = load_dataset(config.get("data"), train=config.get("train_file"),
                                   valid=config.get("valid_file"), test=config.get("test_file"),
                                   columns=columns, skip_bad_rows=config.get("skip_bad_rows", False),
                                   limit=config.get("limit"), seed=config.get("seed", 42), check=False,
                                   multi_label=run.task == MULTI_LABEL, label_separator=config.get("label_sep", ";"))
    except EdgeclinError as exc:
        raise EdgeclinError(f"cannot read the data to check against ({exc}); pass --eval-data DIR") from None
    if dataset.task != run.task:
        raise EdgeclinError(f"the data is for {dataset.task}, the model does {run.task}")
    known = set(run.labels)
    examples = dataset.splits[split].examples
    if run.task in (TOKEN, MULTI_LABEL):  # labels or types the model never learnt simply count as misses
        return examples
    return [e for e in examples if e.label in known]


def check_inputs(run: RunFolder, eval_data: str | Path | None = None, split: str = "valid",
                 limit: int | None = CHECK_EXAMPLES):
    """Real inputs for checks, tokenised as in training; and the tokenizer."""
    from edgeclin.encoding import encode_examples
    from edgeclin.models import load_tokenizer

    examples = run_examples(run, split, eval_data)[:limit]
    if not examples:
        raise EdgeclinError(f"no {split} examples with the model's labels to check against")
    tokenizer = load_tokenizer(str(run.path))
    label2id = {label: i for i, label in enumerate(run.labels)}
    encoded = encode_examples(tokenizer, examples, label2id, run.config.get("max_length", 256),
                              run.config.get("truncation", "head"), run.task)
    return encoded, tokenizer


def torch_logits(model, encoded, pad_id: int, token_types: bool, batch_size: int = 32) -> list:
    """The model's logits of each encoded row: (classes,), or (pieces, tags) for NER."""
    import torch

    from edgeclin.encoding import pad_batch

    outputs = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            rows = list(range(start, min(start + batch_size, len(encoded))))
            batch = pad_batch(encoded, rows, pad_id, token_types)
            batch.pop("labels")
            logits = model(**batch).logits.float().numpy()
            outputs.extend(row[:encoded.lengths[i]] if row.ndim == 2 else row
                           for i, row in zip(rows, logits, strict=True))
    return outputs


def max_difference(a: list, b: list) -> float:
    """Largest absolute difference between two lists of per-row arrays."""
    import numpy as np

    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def merge(run_dir: str | Path, output: str | Path | None = None, *, eval_data: str | Path | None = None,
          overwrite: bool = False) -> Path:
    """Merge a LoRA run into a plain model folder; a full fine-tune is returned unchanged."""

    run = open_model_folder(run_dir)
    if not run.is_adapter:
        return run.path
    check_mergeable(run)
    output = Path(output) if output else run.path.with_name(run.name + "-merged")
    if output.exists() and not overwrite:
        raise EdgeclinError(f"output folder {output} already exists (use --overwrite to replace it)")
    encoded, tokenizer = check_inputs(run, eval_data)
    pad_id = tokenizer.pad_token_id or 0
    token_types = "token_type_ids" in tokenizer.model_input_names

    model = load_torch_model(run)
    before = torch_logits(model, encoded, pad_id, token_types)
    merged = model.merge_and_unload()
    after = torch_logits(merged, encoded, pad_id, token_types)
    max_diff = max_difference(before, after)
    if not max_diff <= MERGE_TOLERANCE:
        raise EdgeclinError(f"merged model differs from the adapter model by {max_diff:.2e} "
                            f"(tolerance {MERGE_TOLERANCE:.0e}); nothing saved")

    def save(folder: Path) -> None:
        merged.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        runs.write_json(folder / runs.LABELS, run.label_info)
        if run.record is not None:  # the merged folder keeps the run's settings (max length, data)
            runs.write_json(folder / runs.RUN_RECORD, run.record)
        runs.write_json(folder / "merge.json", {
            "source": str(run.path.resolve()), "base_model": base_model_path(run),
            "checked_inputs": len(encoded), "max_abs_logit_diff": max_diff, "tolerance": MERGE_TOLERANCE,
            "dtype": "float32", "versions": runs.library_versions(), "git_commit": runs.git_commit(),
        })

    output.parent.mkdir(parents=True, exist_ok=True)
    runs.save_folder_atomically(output, save)
    return output
