"""A real Spark standalone cluster on 127.0.0.1 for the tests and the benchmark: one master, N workers.

pip's pyspark ships ``bin/spark-class`` but not ``sbin/start-master.sh``/``start-worker.sh``, so
the daemons are started with spark-class directly, each in its own process group (the executors
and Python workers a worker starts join its group), and stopped by group: nothing outlives the
``with`` block, also when the test inside it fails.

    with standalone_cluster(tmp_path, workers=2) as master:   # "spark://127.0.0.1:PORT"
        ...

``python tests/spark_cluster.py drive MASTER JOBS.json RESULT.json`` runs ``predict_files`` for each
job (one session, so executors start once) and records what the executors imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"
FORBIDDEN = ("torch", "transformers", "optimum", "peft", "accelerate")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


def cluster_environment() -> dict[str, str]:
    """Every daemon, executor and driver binds loopback only; executors run this Python."""
    import pyspark

    env = dict(os.environ, SPARK_LOCAL_IP=HOST, SPARK_HOME=str(Path(pyspark.__file__).parent),
               PYSPARK_PYTHON=sys.executable, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["SPARK_DAEMON_JAVA_OPTS"] = f"-Dspark.ui.host={HOST}"  # the web UIs too, not only the RPC ports
    return env


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("ab") as handle:
        return subprocess.Popen([str(spark_class()), *args], stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=cluster_environment(), start_new_session=True)


def _alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{ui_port}/json/", timeout=2) as response:
            state = json.load(response)
    except OSError:
        return 0
    return sum(w.get("state") == "ALIVE" for w in state.get("workers", []))


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in reversed(processes):  # workers (and their executors) first, the master last
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the group: executors a worker left behind
        process.wait()


def _tail(folder: Path) -> str:
    logs = sorted(folder.glob("*.log"))
    return "\n".join(f"--- {log.name}\n" + log.read_text(errors="replace")[-2000:] for log in logs)


@contextlib.contextmanager
def standalone_cluster(folder: Path, workers: int = 2, cores: int = 1, memory: str = "2g", timeout: float = 90.0,
                       started: list | None = None) -> Iterator[str]:
    """Start a master and ``workers`` workers on 127.0.0.1; yield the master URL; stop them all.

    ``started``, if given, receives the daemons' processes (each leads its own session and group).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    port, ui_port = free_port(), free_port()
    master = f"spark://{HOST}:{port}"
    processes: list[subprocess.Popen] = started if started is not None else []
    try:
        processes.append(_start(["org.apache.spark.deploy.master.Master", "--host", HOST, "--port", str(port),
                                 "--webui-port", str(ui_port)], folder / "master.log"))
        for i in range(workers):
            work = folder / f"worker{i}"
            work.mkdir(exist_ok=True)
            processes.append(_start(["org.apache.spark.deploy.worker.Worker", master, "--host", HOST,
                                     "--cores", str(cores), "--memory", memory, "--work-dir", str(work),
                                     "--webui-port", str(free_port())], folder / f"worker{i}.log"))
        deadline = time.monotonic() + timeout
        while _alive_workers(ui_port) < workers:
            dead = [p.args[1] for p in processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{dead} exited" if dead else f"not {workers} workers after {timeout:.0f} s"
                raise RuntimeError(f"the standalone cluster did not start ({why})\n{_tail(folder)}")
            time.sleep(0.5)
        yield master
    finally:
        _stop(processes)


def executor_imports(session, job, rows) -> list[dict]:
    """Run ``job``'s executor code on ``rows`` in every partition and report, from the same Python worker,
    which of the FORBIDDEN packages were imported (the test's own driver imports torch; executors must not)."""
    import pyarrow as pa

    def probe(batches):
        import sys

        from edgeclin.spark.worker import predict_partition

        count = sum(b.num_rows for b in predict_partition(job, batches))
        heavy = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in FORBIDDEN})
        yield pa.RecordBatch.from_pylist([{"rows": count, "pid": os.getpid(), "heavy": heavy}])

    frame = session.createDataFrame(rows).repartition(2)
    return [r.asDict() for r in frame.mapInArrow(probe, "rows long, pid long, heavy array<string>").collect()]


def drive(master: str, jobs_file: Path, result_file: Path) -> None:
    """The cluster test's driver: every job of ``jobs_file`` with ``predict_files``, then the import probe."""
    from edgeclin.spark import predict_files
    from edgeclin.spark.session import open_session

    jobs = json.loads(Path(jobs_file).read_text())
    session, _ = open_session(master)
    try:
        summaries = [predict_files(job["bundle"], job["data"], job["output"], **job.get("options", {}))
                     for job in jobs["predict"]]
        probe = jobs.get("probe")
        imports = executor_imports(session, probe_job(probe["bundle"]), probe["rows"]) if probe else []
        executors = session.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
    finally:
        session.stop()
    Path(result_file).write_text(json.dumps({"summaries": summaries, "imports": imports, "executors": executors}))


def probe_job(bundle: str):
    """A job over a text column ``text`` that keeps ``id``, as ``edgeclin.spark.predict`` would build it."""
    from edgeclin.artifacts import BundleManifest
    from edgeclin.spark.bundles import BundleRef, manifest_digest
    from edgeclin.spark.inputs import InputColumns
    from edgeclin.spark.worker import Job

    path = Path(bundle).resolve()
    return Job(BundleRef(str(path), manifest_digest(path)), BundleManifest.read(path).task,
               InputColumns(text="text", keep=(("id", "id"),)), threads=1, batch_size=1)


def run(folder: Path, url_file: Path) -> None:
    """CI's cluster: start it, write the master URL to ``url_file`` once the workers are up, hold it
    until SIGTERM or SIGINT, then stop every daemon (the ``finally`` of ``standalone_cluster``)."""

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with standalone_cluster(folder, workers=2, cores=1) as master:
        Path(url_file).write_text(master)
        while True:
            time.sleep(3600)


USAGE = "usage: spark_cluster.py drive MASTER JOBS.json RESULT.json | run FOLDER URL_FILE"

if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "drive":
        drive(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    elif len(sys.argv) == 4 and sys.argv[1] == "run":
        run(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(USAGE)
