"""``edgeclin merge``: fold a LoRA (or IA3) adapter into the base weights, verified equal.

Merging happens in fp32 (merging in bf16/fp16 changes outputs: peft #2502, #1388), and the
merged model's logits are compared with the unmerged adapter model's on real validation
inputs before anything is saved: a lost or untrained head, or a bad merge, fails loudly.
"""

from __future__ import annotations

from pathlib import Path

from edgeclin.artifacts import RunFolder, open_model_folder
from edgeclin.errors import EdgeclinError
from edgeclin.files import OutputFolder, write_json
from edgeclin.provenance import git_commit, library_versions
from edgeclin.run_data import run_examples
from edgeclin.tasks import get_task
from edgeclin.torch_model import base_model_path, check_mergeable, load_torch_model, max_difference, torch_logits

MERGE_TOLERANCE = 1e-4
CHECK_EXAMPLES = 64  # validation inputs compared; enough to exercise every class and length


def check_inputs(run: RunFolder, eval_data: str | Path | None = None, split: str = "valid",
                 limit: int | None = CHECK_EXAMPLES):
    """Real inputs for checks, tokenised as in training; and the tokenizer."""
    from edgeclin.models import load_tokenizer

    examples = run_examples(run, split, eval_data)[:limit]
    if not examples:
        raise EdgeclinError(f"no {split} examples with the model's labels to check against")
    tokenizer = load_tokenizer(str(run.path))
    label2id = {label: i for i, label in enumerate(run.labels)}
    return get_task(run.task).encode(tokenizer, examples, label2id, run.input_format), tokenizer


def merged_model(run: RunFolder, eval_data: str | Path | None = None):
    """The adapter folded into its base, checked against the unmerged model: (model, tokenizer, check record)."""
    encoded, tokenizer = check_inputs(run, eval_data)
    pad_id, token_types = tokenizer.pad_token_id or 0, "token_type_ids" in tokenizer.model_input_names
    model = load_torch_model(run)
    before = torch_logits(model, encoded, run.task, pad_id, token_types)
    merged = model.merge_and_unload()
    after = torch_logits(merged, encoded, run.task, pad_id, token_types)
    max_diff = max_difference(before, after)
    if not max_diff <= MERGE_TOLERANCE:
        raise EdgeclinError(f"merged model differs from the adapter model by {max_diff:.2e} "
                            f"(tolerance {MERGE_TOLERANCE:.0e}); nothing saved")
    check = {"source": str(run.path), "base_model": base_model_path(run), "checked_inputs": len(encoded),
             "max_abs_logit_diff": max_diff, "tolerance": MERGE_TOLERANCE, "dtype": "float32"}
    return merged, tokenizer, check


def save_merged(folder: Path, run: RunFolder, merged, tokenizer, check: dict) -> None:
    """A plain Hugging Face folder that keeps the run's labels and record (max length, data)."""
    merged.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    run.label_file.write(folder)
    if run.record is not None:
        from edgeclin.files import read_json
        from edgeclin.model_card import run_card

        run.record.write(folder)
        if (run.path / "metrics.json").exists():
            (folder / "README.md").write_text(run_card(run.record, read_json(run.path / "metrics.json")),
                                              encoding="utf-8")
    write_json(folder / "merge.json", {**check, "versions": library_versions(), "git_commit": git_commit()})


def merge(run_dir: str | Path, output: str | Path | None = None, *, eval_data: str | Path | None = None,
          overwrite: bool = False) -> Path:
    """Merge a LoRA run into a plain model folder; a full fine-tune is returned unchanged."""
    run = open_model_folder(run_dir)
    if not run.is_adapter:
        return run.path
    check_mergeable(run)
    output = Path(output) if output else run.path.with_name(run.name + "-merged")
    with OutputFolder(output, overwrite) as out:
        merged, tokenizer, check = merged_model(run, eval_data)
        save_merged(out.staging, run, merged, tokenizer, check)
        return out.publish()
