"""The driver side: ``predict`` (a DataFrame in, a DataFrame out) and ``predict_files`` (files in, Parquet out)."""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path

from edgeclin.errors import EdgeclinError
from edgeclin.logs import get_logger
from edgeclin.spark import bundles
from edgeclin.spark.inputs import ERROR_COLUMN, resolve_columns
from edgeclin.spark.paths import local_path
from edgeclin.spark.reading import check_data, read_data
from edgeclin.spark.session import open_session, require_pyspark
from edgeclin.spark.writing import check_output, write_parquet

log = get_logger(__name__)


def predict(df, bundle: str | Path, text_col: str | None = None, pair_col: str | None = None,
            id_col: str | None = None, backend: str = "auto", batch_size: int = 32, *, threads: int | None = None,
            ship: bool = True, key: bytes | None = None):
    """``df`` with the bundle's predictions: a lazy DataFrame with one row per input row.

    Rows keep every input column (or only ``id_col``) and gain the task's columns (single-label:
    ``label``, ``probabilities``; multi-label: ``label_set``, ``probabilities``; NER: ``entities``)
    and ``error`` (null, or why the row has no prediction: a null or empty text). An input column
    named like an output column is kept as ``input_<name>``. Columns default to the bundle's own
    (NER: pre-split ``tokens`` when the data has them, else ``text``).

    The bundle is verified here (with ``key``, or $EDGECLIN_BUNDLE_KEY_FILE, its signature too)
    and again on each executor against the same manifest digest. ``ship``: send it with the job
    (``SparkContext.addArchive``); False when ``bundle`` is a path every executor reads. ``threads``
    per task default to ``spark.task.cpus``; ``backend`` is resolved on each executor's CPU.
    """
    require_pyspark()
    from edgeclin.engines import get_backend
    from edgeclin.spark.outputs import output_for
    from edgeclin.spark.worker import Job, predict_partition

    if batch_size < 1 or (threads is not None and threads < 1):
        raise EdgeclinError("batch size and threads must be at least 1")
    manifest, ref = bundles.verify_on_driver(bundle, key)
    if backend != "auto":  # an unknown or missing backend fails here, not in every task
        get_backend(backend).require()
    output = output_for(manifest.task)
    columns = resolve_columns(df.schema, manifest.columns, manifest.input.text_pair, output.reads_words,
                              output.names, text_col=text_col, pair_col=pair_col, id_col=id_col)
    for source, target in columns.renamed.items():
        log.info(f"input column {source!r} is kept as {target!r} (the output has its own {source!r})")
    if ship:
        ref = bundles.ship(df.sparkSession, ref)
    job = Job(ref, manifest.task, columns, backend, threads, batch_size)
    return df.mapInArrow(functools.partial(predict_partition, job), output_schema(df.schema, job))


def output_schema(schema, job):
    """The kept input fields as they are, then the task's columns and ``error``."""
    from pyspark.sql.pandas.types import from_arrow_type
    from pyspark.sql.types import StringType, StructField, StructType

    from edgeclin.spark.outputs import output_for

    fields = [StructField(target, schema[source].dataType, schema[source].nullable)
              for source, target in job.columns.keep]
    fields += [StructField(name, from_arrow_type(kind), True) for name, kind in output_for(job.task).fields]
    return StructType([*fields, StructField(ERROR_COLUMN, StringType(), True)])


PYTHON_ERROR = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit): ")
JVM_PREFIXES = ("org.", "java.", "scala.", "py4j.")
GLOB = re.compile(r"([\\\[\]{}*?])")  # Hadoop's glob characters


def job_failure(exc: Exception) -> str:
    """One line of why a job failed: the executor's own Python exception, if it raised one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    python = [line for line in lines if PYTHON_ERROR.match(line) and not line.startswith(JVM_PREFIXES)]
    return python[-1] if python else (lines[0] if lines else type(exc).__name__)


def literal(path: str) -> str:
    """``path`` for Spark's readers, which expand glob patterns: a name like "out[1].parquet" read as itself."""
    local = local_path(path)
    return GLOB.sub(r"\\\1", str(local.resolve()) if local is not None else path)


def spread(df, session) -> tuple:
    """(df, its partitions): at least one per core, as a single CSV or Parquet file is often read as one."""
    cores, partitions = session.sparkContext.defaultParallelism, df.rdd.getNumPartitions()
    return (df.repartition(cores), cores) if partitions < cores else (df, partitions)


def commit(predicted, output: str, overwrite: bool) -> None:
    """Run the job, writing ``output``; a job that failed on the executors (after Spark's retries) as one line."""
    try:
        write_parquet(predicted, output, overwrite)
    except EdgeclinError:
        raise
    except Exception as exc:  # pyspark's and py4j's own types
        raise EdgeclinError(f"the Spark job failed and nothing was written to {output}: {job_failure(exc)}") from None


def written_counts(session, output: str) -> dict:
    """Rows and error rows of the written output (what was committed, retries and all).

    A local output is counted from its Parquet footers (row counts and the ``error`` column's null
    counts), without another Spark job; other file systems are read back with Spark.
    """
    local = local_path(output)
    if local is not None:
        import pyarrow.parquet as pq

        rows = errors = 0
        for part in sorted(local.glob("*.parquet")):
            metadata = pq.ParquetFile(part).metadata
            column = metadata.schema.names.index(ERROR_COLUMN)
            for group in range(metadata.num_row_groups):
                chunk, count = metadata.row_group(group).column(column), metadata.row_group(group).num_rows
                nulls = chunk.statistics.null_count if chunk.is_stats_set and chunk.statistics.has_null_count \
                    else pq.read_table(part, columns=[ERROR_COLUMN])[ERROR_COLUMN].null_count
                rows, errors = rows + count, errors + count - nulls
        return {"rows": rows, "error_rows": errors}
    counts = session.read.parquet(literal(output)).selectExpr("count(*) AS rows", f"count({ERROR_COLUMN}) AS errors")
    found = counts.first()
    return {"rows": found["rows"], "error_rows": found["errors"]}


def predict_files(bundle: str | Path, data: str | Path, output: str | Path, *, master: str | None = None,
                  text_col: str | None = None, pair_col: str | None = None, id_col: str | None = None,
                  backend: str = "auto", threads: int | None = None, batch_size: int = 32, overwrite: bool = False,
                  key: bytes | None = None, ship: bool = True) -> dict:
    """``edgeclin predict --spark``: predict a Parquet/CSV/JSONL file and write Parquet at ``output``.

    ``master`` None: the one spark-submit set, else ``local[*]`` (an active session is used as it
    is). Everything that can be checked before Spark starts is (bundle, data, output); the output
    appears only when the whole job has succeeded. Returns the summary (rows, error rows, ...).
    """
    require_pyspark()
    started = time.perf_counter()
    data, output = str(data), str(output)
    check_output(output, overwrite)
    check_data(data)
    manifest, _ = bundles.verify_on_driver(bundle, key)
    session, created = open_session(master)
    try:
        frame, partitions = spread(read_data(session, data), session)
        log.info(f"{data}: {partitions} partitions on {session.sparkContext.master}")
        predicted = predict(frame, bundle, text_col, pair_col, id_col, backend, batch_size, threads=threads,
                            ship=ship, key=key)
        commit(predicted, output, overwrite)
        summary = {"bundle": str(bundle), "input": data, "output": output, "task": manifest.task,
                   "master": session.sparkContext.master, "partitions": partitions,
                   **written_counts(session, output), "seconds": round(time.perf_counter() - started, 3)}
    finally:
        if created:
            session.stop()
    if summary["error_rows"]:  # never silent: shown even under --quiet
        log.warning(f"{data}: {summary['error_rows']} of {summary['rows']} rows have no usable text; "
                    f"their '{ERROR_COLUMN}' column says why")
    return summary
