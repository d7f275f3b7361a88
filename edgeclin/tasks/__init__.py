"""The task types edgeclin trains, exports and serves, behind one registry.

- ``single_label_classification``: one label per text (or text pair) (``single_label.py``);
- ``multi_label_classification``: a set of labels per text (``multi_label.py``);
- ``token_classification`` (NER): a BIO tag per word (``token.py``).

Each is a ``Task`` strategy (``base.py``) owning everything that differs between them. A new
task type is one module with its ``Task`` subclass and one line in ``TASKS``. Numpy-only at
import: the torch-free runtime uses this package.
"""

from __future__ import annotations

from edgeclin.errors import EdgeclinError
from edgeclin.schema import Columns
from edgeclin.tasks.base import Task
from edgeclin.tasks.classification import Classifier, Predictions
from edgeclin.tasks.multi_label import DEFAULT_THRESHOLD, MultiLabelTask
from edgeclin.tasks.single_label import SingleLabelTask
from edgeclin.tasks.token import Entity, TaggedText, Tagger, TokenTask, bio_spans, word_tags

# in the order they are recognised from data and model configs: the most specific first
TASKS: dict[str, Task] = {task.name: task for task in (TokenTask(), MultiLabelTask(), SingleLabelTask())}

SINGLE_LABEL = SingleLabelTask.name
MULTI_LABEL = MultiLabelTask.name
TOKEN = TokenTask.name


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise EdgeclinError(f"unknown task {name!r} (one of {', '.join(TASKS)})") from None


def task_of_records(records: list[dict], columns: Columns, multi_label: bool = False) -> Task:
    """The task the first records of a training file hold (NER: tokens/tags and no text column)."""
    return next(task for task in TASKS.values() if task.matches_data(records, columns, multi_label))


def task_of_model_config(config: dict) -> Task:
    """The task of a Hugging Face model folder that edgeclin did not write, from its config.json."""
    return next(task for task in TASKS.values() if task.matches_model_config(config))


def task_of_model(model) -> Task:
    """The task of a loaded transformers model, from its class (and problem type)."""
    return next(task for task in TASKS.values() if task.matches_model(model))


__all__ = ["DEFAULT_THRESHOLD", "MULTI_LABEL", "SINGLE_LABEL", "TASKS", "TOKEN", "Classifier", "Entity",
           "Predictions", "TaggedText", "Tagger", "Task", "bio_spans", "get_task", "task_of_model",
           "task_of_model_config", "task_of_records", "word_tags"]
