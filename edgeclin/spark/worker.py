"""The executor side: one verified predictor per Python worker, kept for its partitions; Arrow batches in and out.

Spark reuses a Python worker for the tasks of a job (and of later jobs), so the predictor is
loaded and verified once per worker and cached here, keyed by the bundle's path and manifest
digest. Each Arrow batch (``spark.sql.execution.arrow.maxRecordsPerBatch`` rows) is predicted
in the runtime's length-sorted batches of ``batch_size``, on ``spark.task.cpus`` threads: Spark
already runs one task per core, so more threads per task would oversubscribe the executor.

Imports only the torch-free runtime: nothing here may pull in torch or transformers.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from edgeclin import runtime
from edgeclin.errors import EdgeclinError
from edgeclin.spark.bundles import BundleRef, verify_on_executor
from edgeclin.spark.inputs import ERROR_COLUMN, InputColumns, examples_of
from edgeclin.spark.outputs import output_for

MAX_CACHED = 2  # predictors kept per worker (each holds its ONNX session)
# testing retries (Spark local properties, set on the driver): the task of this partition fails after its
# first batch, on its first attempt (or its first FAIL_ATTEMPTS attempts: all of them makes the job fail)
FAIL_PARTITION = "edgeclin.spark.fail_partition"
FAIL_ATTEMPTS = "edgeclin.spark.fail_attempts"
FAIL_MODE = "edgeclin.spark.fail_mode"  # "raise" (default) or "exit" (the Python worker dies)

_PREDICTORS: OrderedDict[tuple, object] = OrderedDict()


@dataclass(frozen=True)
class Job:
    """Everything a task needs, sent from the driver with the task (small and picklable)."""

    bundle: BundleRef
    task: str
    columns: InputColumns
    backend: str = "auto"
    threads: int | None = None  # None: the task's spark.task.cpus
    batch_size: int = 32


def task_threads(job: Job) -> int:
    from pyspark import TaskContext

    context = TaskContext.get()
    return job.threads or (context.cpus() if context is not None else 1)


def predictor(job: Job, threads: int):
    """The cached predictor of this job's bundle, loaded and verified on first use in this worker."""
    key = (job.bundle.path, job.bundle.digest, job.backend, threads)
    if key in _PREDICTORS:
        _PREDICTORS.move_to_end(key)
        return _PREDICTORS[key]
    if threads == 1:
        # one core per task: the tokenizer's own thread pool would compete with the other tasks
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # the same load as edgeclin predict's (every file checked against the manifest, the backend chosen
    # for this executor's CPU), of the bundle whose manifest the driver verified
    model = runtime.load(verify_on_executor(job.bundle), threads=threads, backend=job.backend)
    _PREDICTORS[key] = model
    while len(_PREDICTORS) > MAX_CACHED:
        _PREDICTORS.popitem(last=False)
    return model


def predict_batch(model, job: Job, batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch's kept columns, the task's columns and ``error``: one output row per input row."""
    output = output_for(job.task)
    examples, errors = examples_of(batch, job.columns)
    good = [i for i, e in enumerate(examples) if e is not None]
    found = output.values(model, [examples[i] for i in good], job.batch_size) if good else {}
    arrays, names = [], []
    for source, target in job.columns.keep:
        arrays.append(batch.column(source))
        names.append(target)
    for name, kind in output.fields:
        column: list = [None] * batch.num_rows  # rows with an error get no prediction
        for row, value in zip(good, found.get(name, []), strict=True):
            column[row] = value
        arrays.append(pa.array(column, type=kind))
        names.append(name)
    arrays.append(pa.array(errors, type=pa.string()))
    names.append(ERROR_COLUMN)
    result = pa.RecordBatch.from_arrays(arrays, names=names)
    if result.num_rows != batch.num_rows:
        raise EdgeclinError(f"internal error: {batch.num_rows} rows in, {result.num_rows} out")
    return result


def _injected_fault() -> str | None:
    """The failure a test asked for on this task (a local property set on the driver), if any."""
    from pyspark import TaskContext

    context = TaskContext.get()
    wanted = context.getLocalProperty(FAIL_PARTITION) if context is not None else None
    if wanted is None or int(wanted) != context.partitionId():
        return None
    if context.attemptNumber() >= int(context.getLocalProperty(FAIL_ATTEMPTS) or 1):
        return None
    return context.getLocalProperty(FAIL_MODE) or "raise"


def _fail(mode: str) -> None:
    if mode == "exit":
        os._exit(17)  # the worker process dies mid-partition, as on an out-of-memory kill
    raise RuntimeError("edgeclin.spark: a fault was injected into this task (a test of retries)")


def predict_partition(job: Job, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``mapInArrow``'s function: the predictor is loaded at the first batch (empty partitions load nothing)."""
    fault = _injected_fault()
    model = None
    for batch in batches:
        if model is None:
            model = predictor(job, task_threads(job))
        yield predict_batch(model, job, batch)
        if fault:  # after the first batch has gone out: the task dies with part of its output written
            _fail(fault)
