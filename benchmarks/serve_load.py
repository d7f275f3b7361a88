"""Load test of ``edgeclin serve`` on real notes: throughput, latency, errors and memory under load.

Loopback only, bounded in time. A bounded asyncio client (plain HTTP/1.1 keep-alive, so that
the load generator's own cost stays out of the server's latency), one note per request
(``POST /v1/models/NAME/predict``), against servers started here in their own processes:

1. micro-batching on (``--max-batch 32``): 1, 8 and 32 closed-loop clients. The 1-client run
   alternates, block by block, with the in-process runtime in a fresh process (same bundle,
   same threads, same notes): the other load of a shared machine then weighs on both alike;
2. micro-batching off (``--max-batch 1``): 32 clients;
3. overload: an open-loop arrival rate several times the measured capacity, with a small
   queue (``--max-queue``), sampling the server's RSS every second: only 2xx and 503 expected;
4. the in-process runtime's raw throughput by batch size, and how much a note's answer changes
   when it is scored in a batch rather than alone.

Each run records throughput, p50/p90/p99 latency, every non-2xx status and client error, the
server's RSS at start and end, and how much of the machine's CPU other processes used
meanwhile. Results: ``benchmarks/results/serve_load.{md,json}``.

    .venv/bin/python benchmarks/serve_load.py --bundle export/demo --duration 120
    .venv/bin/python benchmarks/serve_load.py --bundle export/demo --duration 6 --blocks 2 \
        --out /tmp/serve-smoke     # a quick check of the script itself
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "mtsamples" / "test.csv"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "serve_load"
LISTENING = re.compile(r"listening on (https?://[^\s]+)")
TIMING = re.compile(r"(\w+);dur=([0-9.]+)")
BATCH_SIZES = (1, 2, 4, 8, 16, 32)
WARMUP_S = 3.0  # of each run, not counted: connections open, the queue settles
KEEPALIVE_S = 5.0  # an idle connection older than this is not reused (httpx's default keep-alive expiry)
TARGETS = {"added_p50_ms": 2.0, "batching_speedup": 1.5, "rss_growth": 0.10}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(REPO / "export" / "demo"), help="The bundle to serve.")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CSV with a text column: the notes sent.")
    parser.add_argument("--duration", type=float, default=120.0, help="Seconds per run (after a short warm-up).")
    parser.add_argument("--clients", default="1,8,32", help="Closed-loop client counts with micro-batching on.")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="Inference threads (both sides).")
    parser.add_argument("--max-batch", type=int, default=32, help="The micro-batching run's --max-batch.")
    parser.add_argument("--blocks", type=int, default=12,
                        help="The 1-client run alternates this many blocks with the in-process runtime.")
    parser.add_argument("--overload-factor", type=float, default=4.0, help="Overload rate / measured capacity.")
    parser.add_argument("--overload-queue", type=int, default=128, help="The overload server's --max-queue.")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="Output path without suffix (.md and .json).")
    parser.add_argument("--inprocess-worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def read_notes(path: str | Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle) if row.get("text", "").strip()]


def summary(latencies: list[float]) -> dict:
    """p50/p90/p99 and mean, in ms."""
    if not latencies:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None}
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50_ms": round(1000 * statistics.median(ordered), 2), "p90_ms": round(at(0.90), 2),
            "p99_ms": round(at(0.99), 2), "mean_ms": round(1000 * statistics.fmean(ordered), 2)}


# --- the machine ---------------------------------------------------------------------------------

def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of a process, or of the whole machine (every core) when ``pid`` is None."""
    tick = os.sysconf("SC_CLK_TCK")
    if pid is None:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = [int(x) for x in handle.readline().split()[1:]]
        return (sum(fields) - fields[3] - fields[4]) / tick  # all but idle and iowait
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick


class CpuShare:
    """How the machine's CPU was used while a server was under load: by it, by this client, by everything else.

    ``pause``/``resume`` leave out the blocks in which another process had the load (interleaved runs).
    """

    def __init__(self, server_pid: int) -> None:
        self.pids = (server_pid, os.getpid())
        self.totals = [0.0, 0.0, 0.0, 0.0]  # wall, machine, server, client
        self._since: tuple[float, ...] | None = None
        self.resume()

    def _now(self) -> tuple[float, ...]:
        return (time.perf_counter(), cpu_seconds(), *(cpu_seconds(p) for p in self.pids))

    def resume(self) -> None:
        self._since = self._now()

    def pause(self) -> None:
        if self._since is not None:
            self.totals = [t + b - a for t, a, b in zip(self.totals, self._since, self._now(), strict=True)]
            self._since = None

    def finish(self) -> dict:
        self.pause()
        wall, total, server, client = self.totals
        return {"server_cores": round(server / wall, 2), "client_cores": round(client / wall, 2),
                "other_cores": round(max(0.0, total - server - client) / wall, 2), "cores": os.cpu_count() or 1}


def environment(threads: int) -> dict:
    from edgeclin.hardware import cpu_features
    from edgeclin.provenance import git_commit, library_versions

    cpu = cpu_features()
    names = ("edgeclin", "onnxruntime", "tokenizers", "numpy", "fastapi", "starlette", "uvicorn", "pydantic",
             "prometheus-client", "httpx", "h11")
    return {"cpu": cpu.model, "isa": cpu.isa, "cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "platform": platform.platform(), "commit": git_commit(),
            "versions": library_versions(names), "load_average_at_start": os.getloadavg()}


# --- the server ----------------------------------------------------------------------------------

class Server:
    """``edgeclin serve`` in its own process on a free loopback port."""

    def __init__(self, bundle: str, *options: str) -> None:
        command = [sys.executable, "-m", "edgeclin", "serve", bundle, "--port", "0", "--quiet", *options]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        # stderr to a file, not a pipe nobody reads: warnings under overload must never block the server
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.options = list(options)
        line = self.process.stdout.readline() if self.process.stdout else ""
        found = LISTENING.search(line)
        if not found:
            self.process.kill()
            raise SystemExit(f"the server did not start: {line}{self.messages()}")
        self.url = found.group(1)
        self.pid = self.process.pid

    def messages(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


# --- the clients ---------------------------------------------------------------------------------

@dataclass
class Run:
    name: str
    clients: int | None = None
    rate_per_s: float | None = None
    server_options: list[str] = field(default_factory=list)
    seconds: float = 0.0
    requests: int = 0
    throughput_per_s: float = 0.0
    latency: dict = field(default_factory=dict)
    added_ms_p50: float | None = None  # client latency minus the batch's run time, per request (Server-Timing)
    statuses: dict = field(default_factory=dict)
    client_errors: dict = field(default_factory=dict)
    not_sent: int = 0
    rss_start_mb: float | None = None
    rss_end_mb: float | None = None
    rss_max_mb: float | None = None
    rss_samples_mb: list[float] = field(default_factory=list)  # overload: every second
    cpu: dict = field(default_factory=dict)


class Recorder:
    def __init__(self, measure_from: float) -> None:
        self.measure_from = measure_from
        self.sent = 0  # requests started, so that blocks of one run go on through the notes
        self.latencies: list[float] = []
        self.added: list[float] = []
        self.statuses: dict[str, int] = {}
        self.errors: dict[str, int] = {}

    def record(self, started: float, seconds: float, status: int | None, timing: str | None,
               error: str | None = None) -> None:
        if started < self.measure_from:
            return
        if error is not None:
            self.errors[error] = self.errors.get(error, 0) + 1
            return
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if status == 200:
            self.latencies.append(seconds)
            spent = dict(TIMING.findall(timing or ""))
            if "batch" in spent:
                self.added.append(seconds - float(spent["batch"]) / 1000)


class Connection:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams: the load generator's own cost per request
    (a fraction of httpx's) must not show up as the server's latency on a 2-core machine."""

    def __init__(self, url: str) -> None:
        found = re.fullmatch(r"http://([^:/]+):(\d+)", url)
        if not found:
            raise SystemExit(f"the load client speaks plain HTTP to a loopback port, not {url}")
        self.host, self.port = found.group(1), int(found.group(2))
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    async def post(self, path: str, body: bytes) -> tuple[int, dict[str, str]]:
        if self.writer is not None and (time.perf_counter() - self.last_used > KEEPALIVE_S or
                                        (self.reader is not None and self.reader.at_eof())):
            self.close()  # as httpx does: the server may close an idle connection (uvicorn: after 15 s)
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        assert self.reader is not None
        first = await self.reader.readline()
        if not first:
            raise ConnectionResetError("the server closed the connection without an answer")
        status = int(first.split()[1])
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        self.last_used = time.perf_counter()
        return status, headers

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _one(connection: Connection, path: str, body: bytes, recorder: Recorder) -> None:
    started = time.perf_counter()
    try:
        status, headers = await connection.post(path, body)
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        connection.close()
        recorder.record(started, time.perf_counter() - started, None, None, type(exc).__name__)
        return
    recorder.record(started, time.perf_counter() - started, status, headers.get("server-timing"))


async def closed_loop(url: str, path: str, bodies: list[bytes], clients: int, duration: float,
                      recorder: Recorder | None = None, warmup: float = WARMUP_S) -> Recorder:
    """``clients`` callers, each sending its next note as soon as it has the answer to the last."""
    begin = time.perf_counter()
    if recorder is None:
        recorder = Recorder(begin + warmup)
    deadline = begin + warmup + duration
    counter = itertools.count(recorder.sent)

    async def caller() -> None:
        connection = Connection(url)
        while time.perf_counter() < deadline:
            recorder.sent += 1
            await _one(connection, path, bodies[next(counter) % len(bodies)], recorder)
        connection.close()

    await asyncio.gather(*(caller() for _ in range(clients)))
    return recorder


async def open_loop(url: str, path: str, bodies: list[bytes], rate: float, duration: float, cap: int,
                    server_pid: int, rss: list[float]) -> tuple[Recorder, int]:
    """Requests at a fixed rate whatever the answers (at most ``cap`` open); the server's RSS every second."""
    begin = time.perf_counter()
    recorder = Recorder(begin + WARMUP_S)
    deadline = begin + WARMUP_S + duration
    idle: list[Connection] = []
    pending: set[asyncio.Task] = set()
    not_sent = 0

    async def send(body: bytes) -> None:
        connection = idle.pop() if idle else Connection(url)
        await _one(connection, path, body, recorder)
        idle.append(connection)

    next_sample = begin
    for i in itertools.count():
        now = time.perf_counter()
        if now >= deadline:
            break
        if now >= next_sample:
            rss.append(rss_mb(server_pid) or 0.0)
            next_sample += 1.0
        if len(pending) >= cap:
            not_sent += 1
        else:
            task = asyncio.ensure_future(send(bodies[i % len(bodies)]))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.sleep(max(0.0, begin + (i + 1) / rate - time.perf_counter()))
    await asyncio.gather(*pending)
    for connection in idle:
        connection.close()
    return recorder, not_sent


def finish_run(run: Run, recorder: Recorder, seconds: float, server: Server, cpu: CpuShare) -> Run:
    run.seconds = round(seconds, 1)
    run.requests = sum(recorder.statuses.values())
    run.throughput_per_s = round(recorder.statuses.get("200", 0) / seconds, 2)
    run.latency = summary(recorder.latencies)
    run.added_ms_p50 = round(1000 * statistics.median(recorder.added), 2) if recorder.added else None
    run.statuses, run.client_errors = dict(sorted(recorder.statuses.items())), recorder.errors
    run.rss_end_mb = rss_mb(server.pid)
    run.cpu = cpu.finish()
    return run


# --- the runs ------------------------------------------------------------------------------------

def model_path(server: Server) -> tuple[str, dict]:
    import httpx

    listed = httpx.get(f"{server.url}/v1/models", timeout=30).json()["models"][0]
    return f"/v1/models/{listed['name']}/predict", listed


def closed_run(server: Server, bodies: list[bytes], clients: int, duration: float, name: str) -> Run:
    path, _ = model_path(server)
    run = Run(name, clients=clients, server_options=server.options, rss_start_mb=rss_mb(server.pid))
    cpu = CpuShare(server.pid)
    recorder = asyncio.run(closed_loop(server.url, path, bodies, clients, duration))
    run = finish_run(run, recorder, duration, server, cpu)  # requests started in the window, over the window
    print(f"  {name}: {run.throughput_per_s} req/s, p50 {run.latency['p50_ms']} ms, statuses {run.statuses}, "
          f"errors {run.client_errors}, RSS {run.rss_start_mb} -> {run.rss_end_mb} MiB", flush=True)
    return run


def interleaved_runs(servers: dict[str, Server], bodies: list[bytes], clients: int, duration: float,
                     blocks: int) -> list[Run]:
    """The same closed-loop load on each server in turn, block by block: an A/B that the other load of a
    shared machine, changing from minute to minute, weighs on alike."""
    runs = {name: Run(name, clients=clients, server_options=s.options, rss_start_mb=rss_mb(s.pid))
            for name, s in servers.items()}
    shares = {name: CpuShare(s.pid) for name, s in servers.items()}
    recorders: dict[str, Recorder | None] = dict.fromkeys(servers)
    for share in shares.values():
        share.pause()
    for block in range(blocks):
        for name, server in servers.items():
            path, _ = model_path(server)
            shares[name].resume()
            recorders[name] = asyncio.run(closed_loop(server.url, path, bodies, clients, duration / blocks,
                                                      recorders[name], WARMUP_S if block == 0 else 0.0))
            shares[name].pause()
    done = []
    for name, server in servers.items():
        recorder = recorders[name]
        assert recorder is not None
        run = finish_run(runs[name], recorder, duration, server, shares[name])
        print(f"  {name}: {run.throughput_per_s} req/s, p50 {run.latency['p50_ms']} ms, statuses {run.statuses}, "
              f"errors {run.client_errors}, server cores {run.cpu['server_cores']}", flush=True)
        done.append(run)
    return done


def overload_run(server: Server, bodies: list[bytes], rate: float, duration: float) -> Run:
    path, _ = model_path(server)
    run = Run("overload", rate_per_s=round(rate, 1), server_options=server.options, rss_start_mb=rss_mb(server.pid))
    cpu = CpuShare(server.pid)
    samples: list[float] = []
    recorder, run.not_sent = asyncio.run(open_loop(server.url, path, bodies, rate, duration, 2048, server.pid,
                                                   samples))
    run = finish_run(run, recorder, duration, server, cpu)  # not the wait for the last answers
    run.rss_max_mb = max(samples) if samples else None
    run.rss_samples_mb = samples
    print(f"  overload at {run.rate_per_s}/s: {run.throughput_per_s} 2xx/s, statuses {run.statuses}, errors "
          f"{run.client_errors}, RSS {run.rss_start_mb} -> {run.rss_end_mb} (max {run.rss_max_mb}) MiB", flush=True)
    return run


class InProcess:
    """The runtime alone in a fresh process (this script in worker mode), measured on demand, so that its
    blocks can alternate with the server's on a machine whose other load changes from minute to minute."""

    def __init__(self, args: argparse.Namespace) -> None:
        command = [sys.executable, __file__, "--inprocess-worker", "--bundle", args.bundle, "--data", args.data,
                   "--threads", str(args.threads), "--max-batch", str(args.max_batch)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.pid = self.process.pid
        self._answer()  # loaded and warm

    def _answer(self) -> dict:
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line:
            raise SystemExit("the in-process worker stopped")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def inprocess_worker(args: argparse.Namespace) -> None:
    """Answers ``latency SECONDS`` (batch-1 latency of each note in turn, as one client would see it) and
    ``sweep`` (raw throughput by batch size, and how much a note's answer depends on its batch)."""
    from edgeclin import runtime
    from edgeclin.schema import Example

    model = runtime.load(args.bundle, threads=args.threads)
    examples = [Example(text=note, label="") for note in read_notes(args.data)]
    rows = model.strategy.prediction_rows
    for example in examples[:5]:
        rows(model, [example], batch_size=args.max_batch)
    notes = itertools.cycle(examples)
    print(json.dumps({"ready": True}), flush=True)
    for command in sys.stdin:
        if command.startswith("latency"):
            latencies, deadline = [], time.perf_counter() + float(command.split()[1])
            while time.perf_counter() < deadline:
                example = next(notes)
                started = time.perf_counter()
                rows(model, [example], batch_size=args.max_batch)  # what the server runs for a lone request
                latencies.append(time.perf_counter() - started)
            print(json.dumps({"latencies": latencies}), flush=True)
        elif command.startswith("sweep"):
            print(json.dumps({"model": model.describe(), "max_length": model.max_length,
                              "throughput_by_batch_size": sweep(model, examples[:64]),
                              "batch_dependence": batch_dependence(model, examples[:32])}), flush=True)


def sweep(model, sample: list) -> dict:
    """Texts per second at each batch size (the best of two passes over the sample)."""
    found = {}
    for size in BATCH_SIZES:
        best = 0.0
        for _ in range(2):
            started = time.perf_counter()
            for i in range(0, len(sample), size):
                model.strategy.prediction_rows(model, sample[i:i + size], batch_size=size)
            best = max(best, len(sample) / (time.perf_counter() - started))
        found[str(size)] = round(best, 2)
    return found


def one_client_run(server: Server, bodies: list[bytes], inprocess: InProcess, duration: float,
                   blocks: int) -> tuple[Run, list[float]]:
    """One client against the server, in blocks alternating with the in-process runtime on the same notes."""
    path, _ = model_path(server)
    run = Run("batching, 1 clients", clients=1, server_options=server.options, rss_start_mb=rss_mb(server.pid))
    cpu = CpuShare(server.pid)
    recorder: Recorder | None = None
    inprocess_latencies: list[float] = []
    for block in range(blocks):
        cpu.pause()
        inprocess_latencies += inprocess.ask(f"latency {duration / blocks}")["latencies"]
        cpu.resume()
        warmup = WARMUP_S if block == 0 else 0.0
        recorder = asyncio.run(closed_loop(server.url, path, bodies, 1, duration / blocks, recorder, warmup))
    assert recorder is not None
    run = finish_run(run, recorder, duration, server, cpu)
    print(f"  {run.name}: {run.throughput_per_s} req/s, p50 {run.latency['p50_ms']} ms (in-process "
          f"{summary(inprocess_latencies)['p50_ms']} ms), statuses {run.statuses}, errors {run.client_errors}",
          flush=True)
    return run, inprocess_latencies


def batch_dependence(model, examples: list) -> dict:
    """How much a note's probabilities change when it runs beside 31 others instead of alone."""
    import numpy as np

    texts = [e.text for e in examples]
    alone = np.stack([model.predict([t]).probabilities[0] for t in texts])
    together = model.predict(texts, batch_size=len(texts)).probabilities
    return {"texts": len(texts), "max_abs_probability_change": round(float(np.abs(alone - together).max()), 4),
            "labels_changed": int((alone.argmax(1) != together.argmax(1)).sum())}


def run_all(args: argparse.Namespace, bodies: list[bytes]) -> dict:
    results: dict = {"environment": environment(args.threads), "settings": {
        "bundle": args.bundle, "data": args.data, "notes": len(bodies), "duration_s": args.duration,
        "threads": args.threads, "max_batch": args.max_batch, "texts_per_request": 1, "warmup_s": WARMUP_S,
        "blocks": args.blocks, "overload_queue": args.overload_queue, "keepalive_s": KEEPALIVE_S}}
    inprocess = InProcess(args)
    threads = ["--threads", str(args.threads)]
    runs: list[Run] = []
    server = Server(args.bundle, "--max-batch", str(args.max_batch), *threads)
    results["model"] = model_path(server)[1]
    results["server_rss_at_start_mb"] = rss_mb(server.pid)
    for clients in (int(c) for c in args.clients.split(",")):
        if clients == 1:
            run, latencies = one_client_run(server, bodies, inprocess, args.duration, args.blocks)
            runs.append(run)
            results["inprocess"] = {"requests": len(latencies), "latency": summary(latencies)}
        elif clients != 32:
            runs.append(closed_run(server, bodies, clients, args.duration, f"batching, {clients} clients"))
    unbatched = Server(args.bundle, "--max-batch", "1", *threads)
    runs += interleaved_runs({"batching, 32 clients": server, "no batching (--max-batch 1), 32 clients": unbatched},
                             bodies, 32, args.duration, args.blocks // 2)
    results["server_rss_at_end_mb"] = rss_mb(server.pid)
    results["exit_code_after_sigterm"] = {"batching": server.stop(), "no batching": unbatched.stop()}
    capacity = max(r.throughput_per_s for r in runs)
    queue = ["--max-queue", str(args.overload_queue), "--max-texts", str(min(args.overload_queue, 256))]
    server = Server(args.bundle, "--max-batch", str(args.max_batch), *queue, *threads)
    runs.append(overload_run(server, bodies, max(50.0, args.overload_factor * capacity), args.duration))
    results["exit_code_after_sigterm"]["overload"] = server.stop()
    results["overload_server_messages"] = _message_counts(server.messages())
    results["inprocess"] = {**results.get("inprocess", {}), **inprocess.ask("sweep")}
    inprocess.close()
    results["runs"] = [asdict(r) for r in runs]
    results["environment"]["load_average_at_end"] = os.getloadavg()
    results["targets"] = targets(results, runs)
    return results


def _message_counts(messages: str) -> dict[str, int]:
    """How often each line the server wrote (warnings; --quiet) occurred."""
    counts: dict[str, int] = {}
    for line in messages.splitlines():
        counts[line.strip()] = counts.get(line.strip(), 0) + 1
    return counts


def targets(results: dict, runs: list[Run]) -> dict:
    by_name = {r.name: r for r in runs}
    below = [r for r in runs if r.name != "overload"]
    one = next((r for r in below if r.clients == 1), None)
    batched = next((r for r in below if r.clients == 32 and "no batching" not in r.name), None)
    unbatched = next((r for r in below if "no batching" in r.name), None)
    overload = by_name.get("overload")
    failed = sum(sum(n for s, n in r.statuses.items() if s != "200") + sum(r.client_errors.values()) for r in below)
    added = round(one.latency["p50_ms"] - results["inprocess"]["latency"]["p50_ms"], 2) if one else None
    speedup = round(batched.throughput_per_s / unbatched.throughput_per_s, 2) if batched and unbatched else None
    start, end = results["server_rss_at_start_mb"], results["server_rss_at_end_mb"]
    growth = round((end - start) / start, 3) if start and end else None
    only_2xx_503 = bool(overload) and not overload.client_errors and \
        all(s.startswith("2") or s == "503" for s in overload.statuses)
    return {
        "failed_requests_below_saturation": {"value": failed, "target": 0, "met": failed == 0},
        "batching_speedup_at_32_clients": {"value": speedup, "target": TARGETS["batching_speedup"],
                                           "met": speedup is not None and speedup >= TARGETS["batching_speedup"]},
        "added_p50_ms_at_1_client": {"value": added, "paired_value": one.added_ms_p50 if one else None,
                                     "target": TARGETS["added_p50_ms"],
                                     "met": added is not None and added <= TARGETS["added_p50_ms"]},
        "rss_growth": {"value": growth, "target": TARGETS["rss_growth"],
                       "met": growth is not None and growth <= TARGETS["rss_growth"]},
        "overload_only_2xx_and_503": {"value": overload.statuses if overload else None,
                                      "errors": overload.client_errors if overload else None, "met": only_2xx_503},
    }


def markdown(results: dict) -> str:
    env, inproc, model = results["environment"], results["inprocess"], results["model"]
    lines = ["# `edgeclin serve` under load", "",
             f"Bundle `{results['settings']['bundle']}` ({model['task']}, {model['backend']}, {model['precision']}, "
             f"max length {model['max_length']}; digest `{model['bundle_digest'][:19]}…`), "
             f"{results['settings']['notes']} notes of the mtsamples test split, one note per request, "
             f"{results['settings']['duration_s']:.0f} s per run after a {WARMUP_S:.0f} s warm-up, "
             f"{env['threads']} inference threads. The 1-client run alternates {results['settings']['blocks']} "
             "blocks with the in-process runtime (a fresh process); the two 32-client runs alternate "
             f"{results['settings']['blocks'] // 2} blocks each between their two servers, side by side: the other "
             "load of a shared machine weighs on both sides of each comparison alike. Throughput counts the answers "
             "to requests sent in the window, over the window.", "",
             f"CPU: {env['cpu']} ({env['cores']} cores; {', '.join(env['isa'])}); Python {env['python']}; "
             f"commit {env['commit']}; load average {_loads(env)}.", "",
             "| run | clients / rate | req/s | req/s per server core | p50 ms | p90 ms | p99 ms | statuses "
             "| client errors | RSS start → end MiB | CPU cores: server / client / other |",
             "|---|---|---:|---:|---:|---:|---:|---|---|---|---|"]
    for run in results["runs"]:
        load = f"{run['clients']}" if run["clients"] else f"{run['rate_per_s']}/s open loop"
        peak = f" (max {run['rss_max_mb']})" if run["rss_max_mb"] else ""
        rss = f"{run['rss_start_mb']} → {run['rss_end_mb']}{peak}"
        cpu = run["cpu"]
        per_core = round(run["throughput_per_s"] / cpu["server_cores"], 1) if cpu["server_cores"] else None
        lines.append(f"| {run['name']} | {load} | {run['throughput_per_s']} | {per_core} | "
                     f"{run['latency']['p50_ms']} | {run['latency']['p90_ms']} | {run['latency']['p99_ms']} | "
                     f"{_counts(run['statuses'])} | "
                     f"{_counts(run['client_errors']) or 'none'} | {rss} | {cpu['server_cores']} / "
                     f"{cpu['client_cores']} / {cpu['other_cores']} |")
    sweep, dependence = inproc["throughput_by_batch_size"], inproc["batch_dependence"]
    lines += ["", f"In-process runtime, fresh process ({inproc['model']}): batch-1 latency p50 "
              f"{inproc['latency']['p50_ms']} ms, p90 {inproc['latency']['p90_ms']} ms ({inproc['requests']} notes). "
              "Raw throughput by batch size (texts/s): " + ", ".join(f"{k}: {v}" for k, v in sweep.items()) + ". "
              f"Scored in one batch of {dependence['texts']} instead of alone, a note's probabilities change by up "
              f"to {dependence['max_abs_probability_change']} and {dependence['labels_changed']} of "
              f"{dependence['texts']} labels change. The server runs {model['texts_per_run']} text(s) per ONNX "
              "run for this bundle.",
              "", "| target | measured | met |", "|---|---|---|"]
    for name, target in results["targets"].items():
        shown = target["value"] if "paired_value" not in target else \
            f"{target['value']} (paired, from Server-Timing: {target['paired_value']})"
        lines.append(f"| {name.replace('_', ' ')} (target {target.get('target', '2xx/503 only')}) | {shown} | "
                     f"{'yes' if target['met'] else '**no**'} |")
    return "\n".join(lines + notes(results)) + "\n"


def notes(results: dict) -> list[str]:
    """What the numbers depend on, read from the results."""
    runs, model = results["runs"], results["model"]
    others = [r["cpu"]["other_cores"] for r in runs]
    found = ["", "Reading these numbers:", "",
             f"- Other processes used {min(others)}–{max(others)} of the {runs[0]['cpu']['cores']} cores during "
             "the runs (column CPU cores, other): the server had what was left, so compare runs by req/s per "
             "server core, and within the interleaved pairs, rather than by absolute req/s."]
    if model["texts_per_run"] == 1:
        found.append("- This bundle is int8 with dynamic quantisation, so the server runs each text in its own "
                     "ONNX run: a note's answer would otherwise depend on the notes beside it in the batch "
                     "(measured above), and batched runs are no faster per text on this CPU anyway (raw "
                     "throughput by batch size above). Gathering concurrent requests then saves only the "
                     "per-request hand-offs, and batch-1 serving matches it: the 1.5x target cannot be met by "
                     "this bundle on this CPU without giving notes batch-dependent answers.")
    found.append("- Added p50 latency: the 1-client p50 minus the in-process p50, measured in alternating blocks; "
                 "\"paired\" is the median of each answer's latency minus the time its batch ran in the model "
                 "(the server's Server-Timing header), which does not depend on the other load.")
    return found


def _counts(counts: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def _loads(env: dict) -> str:
    start, end = env["load_average_at_start"], env.get("load_average_at_end")
    return f"{start[0]:.2f} at start" + (f", {end[0]:.2f} at end" if end else "")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.inprocess_worker:
        inprocess_worker(args)
        return
    notes = read_notes(args.data)
    bodies = [json.dumps({"texts": [note]}).encode() for note in notes]
    results = run_all(args, bodies)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))


if __name__ == "__main__":
    main()
