"""Prometheus metrics of the server, in a registry of its own (``GET /metrics``).

Labels hold only bounded values: a served model's name (or ``-``), the route template and the
status code, never a path as sent or anything from a note, so a scan of random URLs cannot
grow the series without bound.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
NO_MODEL = "-"


class ServerMetrics:
    """Every series ``edgeclin serve`` exports; names start with ``edgeclin_``."""

    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series double the output and no dashboard reads them
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, CPU seconds, open fds
        PlatformCollector(registry=registry)
        self.requests = Counter("edgeclin_requests", "HTTP requests answered, by route and status.",
                                ["model", "endpoint", "status"], registry=registry)
        self.latency = Histogram("edgeclin_request_duration_seconds", "Time from request to response.",
                                 ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=registry)
        self.in_flight = Gauge("edgeclin_requests_in_flight", "Requests received and not yet answered.",
                               registry=registry)
        self.batch_size = Histogram("edgeclin_batch_texts", "Texts per batch run by the model.", ["model"],
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.batch_seconds = Histogram("edgeclin_batch_duration_seconds", "Time to run one batch "
                                       "(tokenising included).", ["model"], buckets=LATENCY_BUCKETS,
                                       registry=registry)
        self.queue_wait = Histogram("edgeclin_queue_wait_seconds", "Time a request waits before its batch runs.",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_depth = Gauge("edgeclin_queue_depth", "Texts waiting for a batch.", ["model"], registry=registry)
        self.texts = Counter("edgeclin_texts", "Texts predicted.", ["model"], registry=registry)
        self.rejected = Counter("edgeclin_queue_rejections", "Requests refused with 503 because the queue was full.",
                                ["model"], registry=registry)
        self.load_seconds = Gauge("edgeclin_model_load_seconds", "Time to verify and load the bundle at start.",
                                  ["model"], registry=registry)
        self.info = Gauge("edgeclin_model_info", "A served model (value 1) and what runs it.",
                          ["model", "task", "backend", "precision", "digest"], registry=registry)

    def add_model(self, name: str, load_seconds: float, task: str, backend: str, precision: str,
                  digest: str) -> None:
        self.load_seconds.labels(name).set(load_seconds)
        self.info.labels(name, task, backend, precision, digest).set(1)
        self.queue_depth.labels(name).set(0)

    def observe_request(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(model, endpoint, str(status)).inc()
        self.latency.labels(model, endpoint).observe(seconds)

    def observe_batch(self, model: str, texts: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(texts)
        self.batch_seconds.labels(model).observe(seconds)
        self.texts.labels(model).inc(texts)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
