"""Batch inference on Apache Spark with the torch-free runtime (``pip install 'edgeclin[spark]'``, Java 17).

    from edgeclin.spark import predict
    notes = spark.read.parquet("notes.parquet")
    predict(notes, "export/lora", id_col="note_id").write.parquet("predictions.parquet")

or ``edgeclin predict export/lora --data notes.parquet --spark -o predictions.parquet``
(``predict_files``). One Python worker per executor core loads and verifies the bundle once and
keeps it for its partitions; each row gets the same prediction ``edgeclin predict`` gives it.

The parts: ``session`` (pyspark present, the session), ``bundles`` (verified on the driver,
shipped, found and verified on executors), ``inputs`` (columns, rows as examples), ``outputs``
(the columns each task adds), ``worker`` (the executor side), ``reading`` / ``writing`` (files),
``job`` (``predict``, ``predict_files``). pyspark is imported only when a job runs, so the rest
of edgeclin works without it.
"""

from edgeclin.spark.job import predict, predict_files

__all__ = ["predict", "predict_files"]
