"""The Spark session a job runs in: pyspark present, the active session or a new one, safe defaults.

pyspark is imported here, inside functions only, so that the rest of edgeclin (and
``import edgeclin.spark``) works without it.
"""

from __future__ import annotations

import os
import sys
import warnings

from edgeclin.errors import EdgeclinError
from edgeclin.logs import get_logger

log = get_logger(__name__)
INSTALL_HINT = "pip install 'edgeclin[spark]'"
APP_NAME = "edgeclin predict"


def require_pyspark() -> None:
    """pyspark and pyarrow (the Arrow batches executors exchange with the JVM), or one line saying how to get them."""
    try:
        import pyarrow  # noqa: F401
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise EdgeclinError(f"Spark support needs pyspark and pyarrow ({exc.name or 'pyspark'} is missing): "
                            f"{INSTALL_HINT}") from None
    # pyspark warns about pandas >= 3 on every Arrow UDF; edgeclin exchanges Arrow batches, never pandas frames
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)


def is_local(master: str) -> bool:
    return master == "local" or master.startswith("local[")


def session_defaults(conf, master: str) -> dict[str, str]:
    """What edgeclin sets when the user (spark-submit, spark-defaults.conf, the environment) did not."""
    wanted = {}
    if is_local(master) and not os.environ.get("SPARK_LOCAL_IP"):
        # one machine: nothing needs to listen beyond loopback (patient text passes through these ports)
        wanted["spark.driver.bindAddress"] = "127.0.0.1"
        wanted["spark.driver.host"] = "127.0.0.1"
    if is_local(master):
        wanted["spark.ui.enabled"] = "false"  # the web UI binds every interface by default
    return {key: value for key, value in wanted.items() if not conf.contains(key)}


def open_session(master: str | None = None):
    """(session, created): the active session, or a new one on ``master``.

    ``master`` None: the one spark-submit (or spark-defaults.conf) set, else ``local[*]``. A
    session that is already running is used as it is; asking for another master is an error.
    """
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        running = active.sparkContext.master
        if master and master != running:
            raise EdgeclinError(f"a Spark session on {running} is already running in this process; "
                                f"it cannot also run on {master} (leave --master out to use it)")
        return active, False
    conf = SparkConf()  # holds what spark-submit passed
    master = master or conf.get("spark.master", None) or "local[*]"
    if not conf.contains("spark.pyspark.python") and not os.environ.get("PYSPARK_PYTHON"):
        # executors must run the Python that has edgeclin installed, not the "python3" pyspark defaults to;
        # pyspark reads only the environment variable when the context starts
        os.environ["PYSPARK_PYTHON"] = sys.executable
    builder = SparkSession.builder.master(master).appName(conf.get("spark.app.name", APP_NAME))
    for key, value in session_defaults(conf, master).items():
        builder = builder.config(key, value)
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # pyspark raises its own types when the JVM does not start
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgeclinError(f"Spark did not start on {master} ({first}); it needs Java 17 (JAVA_HOME)") from None
    log.info(f"Spark {session.version} on {master}")
    return session, True
