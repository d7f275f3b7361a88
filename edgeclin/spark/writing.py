"""Writing predictions as Parquet so that a failed job leaves nothing at the output path.

Spark writes through its output committer (task attempts write apart; only committed tasks'
files are kept, so a retried task adds no duplicates) into a hidden sibling of the output, which
is renamed into place when the whole job has succeeded:

- a local path: ``edgeclin.files.OutputFolder`` (a lock per output, rename, an output that
  appeared meanwhile left untouched). On a cluster the path must be on a file system every
  executor writes to;
- a URI (``hdfs://``, ``s3a://``, ``file:``, ...): the same through Hadoop's FileSystem API.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from edgeclin.errors import EdgeclinError
from edgeclin.files import OutputFolder, check_output_free
from edgeclin.spark.paths import has_scheme


def check_output(output: str, overwrite: bool) -> None:
    """Refuse an existing local output before any work is done (URIs are checked when writing)."""
    if has_scheme(output):
        return
    path = Path(output).expanduser()
    check_output_free(path, overwrite, "output")
    if not path.resolve().parent.is_dir():
        raise EdgeclinError(f"{output}: the folder {path.parent} does not exist")


def write_parquet(df, output: str, overwrite: bool = False) -> None:
    if has_scheme(output):
        _write_with_hadoop(df, output, overwrite)
        return
    with OutputFolder(Path(output).expanduser(), overwrite, what="output") as out:
        # the staging folder is this command's own: Spark may replace it
        df.write.mode("overwrite").parquet(str(out.staging))
        out.publish()


def _write_with_hadoop(df, output: str, overwrite: bool) -> None:
    session = df.sparkSession
    jvm = session._jvm
    target = jvm.org.apache.hadoop.fs.Path(output)
    fs = target.getFileSystem(session._jsc.hadoopConfiguration())
    if fs.exists(target) and not overwrite:
        raise EdgeclinError(f"output {output} already exists (use --overwrite to replace it)")
    staging = jvm.org.apache.hadoop.fs.Path(target.getParent(), f".{target.getName()}.edgeclin-tmp-{uuid.uuid4().hex}")
    try:
        df.write.mode("errorifexists").parquet(staging.toString())
        if fs.exists(target):
            if not overwrite:
                raise EdgeclinError(f"{output} appeared while this job ran and was left as it is")
            fs.delete(target, True)
        if not fs.rename(staging, target):
            raise EdgeclinError(f"could not rename {staging.toString()} to {output}")
    finally:
        if fs.exists(staging):
            fs.delete(staging, True)
