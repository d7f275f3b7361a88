"""``edgeclin serve``: real servers in subprocesses on free loopback ports, called with httpx.

Two servers for the module: ``server`` (int8 classification, multi-label and NER bundles and an
fp32 sentence-pair bundle, a bearer key, small limits) and ``tls_server`` (TLS, no micro-batching,
a small queue, request logging on, and a report of the modules it imported, written at exit). The
last test stops ``tls_server`` with SIGTERM while requests are in flight.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest import write_csv

from edgeclin import runtime
from edgeclin.cli import main
from edgeclin.errors import EdgeclinError
from edgeclin.predict import predict_file
from edgeclin.schema import Example
from edgeclin.serving import ServeConfig, bundle_specs
from edgeclin.training import TrainConfig, train

KEY = "test-key-5f1c0a9e7d3b42c8"
AUTH = {"Authorization": f"Bearer {KEY}"}
BANNED = ("torch", "transformers", "optimum", "peft")
SECRET_NOTE = "zebra-sentinel-note quux asthma"  # must never reach the server's log
START_TIMEOUT = 90


class Server:
    """``python -m edgeclin serve ... --port 0`` (or another launcher), its port read from the listening line."""

    def __init__(self, args: list[str], launcher: list[str] | None = None) -> None:
        command = [*(launcher or [sys.executable, "-m", "edgeclin"]), "serve", *args, "--port", "0"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.listening = threading.Event()
        # drain both pipes: a server that logs every request would block on a full pipe
        threading.Thread(target=self._drain, args=(self.process.stdout, self.stdout, True), daemon=True).start()
        threading.Thread(target=self._drain, args=(self.process.stderr, self.stderr, False), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.listening.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the server did not start: {''.join(self.stderr)[-3000:]}")
        line = next(line for line in self.stdout if "listening on" in line)
        self.url = line.split("listening on ")[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def _drain(self, pipe, lines: list[str], watch: bool) -> None:
        for line in pipe:
            lines.append(line)
            if watch and "listening on" in line:
                self.listening.set()

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# --- bundles -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair_folder(demo_folder, tmp_path_factory) -> Path:
    """The demo slice as sentence pairs: each note with the first words of the next one."""
    folder = tmp_path_factory.mktemp("pairs")
    for split in ("train", "valid", "test"):
        with (demo_folder / f"{split}.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        write_csv(folder / f"{split}.csv", [(r["text"], " ".join(rows[(i + 1) % len(rows)]["text"].split()[:6]),
                                              r["label"]) for i, r in enumerate(rows)],
                  header=("text", "text_pair", "label"))
    return folder


@pytest.fixture(scope="module")
def task_bundles(bundle, tiny_bert, ner_folder, multilabel_folder, pair_folder,
                 tmp_path_factory) -> dict[str, Path]:
    """Int8 classification (conftest's), multi-label and NER bundles; an fp32 sentence-pair bundle."""
    from edgeclin.export import export

    root = tmp_path_factory.mktemp("serve-bundles")
    out = {"cls": Path(bundle)}
    for name, folder, options in (("ml", multilabel_folder, {"multi_label": True}), ("ner", ner_folder, {}),
                                  ("pair", pair_folder, {"text_pair_col": "text_pair"})):
        run = train(TrainConfig(model=str(tiny_bert), data=str(folder), output=str(root / name), epochs=1, lr=2e-2,
                                batch_size=8, max_length=32, precision="fp32", progress=False, allow_degenerate=True,
                                **options))
        # fp32 for the pairs: a graph whose answers do not depend on the batch (runs of several texts)
        out[name] = export(run.output, root / f"{name}-bundle", int8=name != "pair", quiet=True,
                           max_drop=100.0).bundle
    return out


def texts_of(task: str, folders: dict[str, Path]) -> list[str]:
    if task == "ner":  # raw text: the words of the test split joined by spaces
        with (folders["ner"] / "test.jsonl").open() as handle:
            return [" ".join(json.loads(line)["tokens"]) for line in handle]
    with (folders[task] / "test.csv").open(newline="") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def pairs_of(folders: dict[str, Path]) -> list[str]:
    with (folders["pair"] / "test.csv").open(newline="") as handle:
        return [row["text_pair"] for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def folders(demo_folder, multilabel_folder, ner_folder, pair_folder) -> dict[str, Path]:
    return {"cls": demo_folder, "ml": multilabel_folder, "ner": ner_folder, "pair": pair_folder}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("key") / "key.txt"
    path.write_text(KEY + "\n")
    return path


@pytest.fixture(scope="module")
def server(task_bundles, key_file):
    running = Server([f"{name}={path}" for name, path in task_bundles.items()] + [
        "--api-key-file", str(key_file), "--max-texts", "64", "--max-queue", "256", "--max-body-bytes", "100000",
        "--threads", "1", "--quiet"])
    yield running
    assert running.stop() == 0


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as session:
        yield session


# --- starting and refusing to start --------------------------------------------------------------

def test_config_refusals(tmp_path):
    with pytest.raises(EdgeclinError, match=r"refusing to listen on 0\.0\.0\.0 without --api-key-file"):
        ServeConfig(host="0.0.0.0")
    with pytest.raises(EdgeclinError, match="cannot read the API key file"):
        ServeConfig(api_key_file=str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(EdgeclinError, match="is empty"):
        ServeConfig(host="0.0.0.0", api_key_file=str(tmp_path / "empty.txt"))
    (tmp_path / "short.txt").write_text("abc")
    with pytest.raises(EdgeclinError, match="at least 16"):
        ServeConfig(api_key_file=str(tmp_path / "short.txt"))
    (tmp_path / "key.txt").write_text(KEY)
    assert ServeConfig(host="0.0.0.0", api_key_file=str(tmp_path / "key.txt")).api_key == KEY.encode()
    with pytest.raises(EdgeclinError, match="--ssl-keyfile needs --ssl-certfile"):
        ServeConfig(ssl_keyfile=str(tmp_path / "key.txt"))
    with pytest.raises(EdgeclinError, match="cannot use the TLS certificate"):
        ServeConfig(ssl_certfile=str(tmp_path / "key.txt"))
    with pytest.raises(EdgeclinError, match=r"--max-queue \(8\) must be at least --max-texts \(16\)"):
        ServeConfig(max_queue=8, max_texts=16)
    with pytest.raises(EdgeclinError, match="unknown backend"):
        ServeConfig(backend="tensorrt")
    assert bundle_specs(["export/lora", "triage=runs/x=y"]) == [("lora", Path("export/lora")),
                                                                 ("triage", Path("runs/x=y"))]
    with pytest.raises(EdgeclinError, match="two bundles are named 'lora'"):
        bundle_specs(["export/lora", "lora=other/b"])
    with pytest.raises(EdgeclinError, match="model name"):
        bundle_specs(["bad name!=export/lora"])


def test_cli_refuses_before_loading(tmp_path):
    result = CliRunner().invoke(main, ["serve", str(tmp_path), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert result.stderr.startswith("edgeclin: error: refusing to listen on 0.0.0.0") and \
        len(result.stderr.strip().splitlines()) == 1


def test_changed_or_incomplete_bundle_stops_the_start(bundle, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(bundle, changed)
    data = bytearray((changed / "tokenizer.json").read_bytes())
    data[len(data) // 2] ^= 0x01
    (changed / "tokenizer.json").write_bytes(bytes(data))
    incomplete = tmp_path / "incomplete"
    shutil.copytree(bundle, incomplete)
    (incomplete / "model.onnx").unlink()
    for folder in (changed, incomplete):
        with pytest.raises(EdgeclinError) as refused:  # what predict says
            runtime.load(folder)
        done = subprocess.run([sys.executable, "-m", "edgeclin", "serve", str(folder), "--port", "0"],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 2 and "listening" not in done.stdout
        assert done.stderr == f"edgeclin: error: {refused.value}\n"


# --- endpoints -----------------------------------------------------------------------------------

def test_health_and_metadata(server, client, task_bundles):
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}  # probes need no key
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["name"] == "edgeclin"
    tasks = {"cls": "single_label_classification", "ml": "multi_label_classification", "ner": "token_classification",
             "pair": "single_label_classification"}
    for name, path in task_bundles.items():
        meta = client.get(f"/v2/models/{name}").json()
        manifest = json.loads((path / "manifest.json").read_text())
        parameters = meta["parameters"]
        assert meta["name"] == name and parameters["task"] == tasks[name]
        assert parameters["labels"] == manifest["labels"] and parameters["max_length"] == manifest["max_length"]
        loaded = runtime.load(path)
        assert (parameters["backend"], parameters["precision"]) == (loaded.backend, loaded.precision)
        assert parameters["precision"] == ("fp32" if name == "pair" else "int8")
        digest = hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()
        assert parameters["bundle_digest"] == f"sha256:{digest}" and meta["versions"] == [digest[:12]]
        # dynamic int8: a text's answer must not depend on its batch, so one text per run; fp32: 1024 tokens' worth
        assert parameters["texts_per_run"] == (1024 // 32 if name == "pair" else 1)
        assert [i["name"] for i in meta["inputs"]] == (["text", "text_pair"] if name == "pair" else ["text"])
        assert [o["name"] for o in meta["outputs"]] == (["entities"] if name == "ner" else ["label", "probabilities"])
        assert client.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    assert [m["name"] for m in client.get("/v1/models").json()["models"]] == list(task_bundles)
    for path in ("/v2/models/nope", "/v2/models/nope/ready"):
        response = client.get(path)
        assert response.status_code == 404 and "no model named 'nope'" in response.json()["error"]


def test_docs_and_openapi(server):
    assert "swagger" in httpx.get(f"{server.url}/docs").text.lower()
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready",
            "/v2/models/{name}/infer", "/v1/models/{name}/predict", "/metrics"} <= set(schema["paths"])
    body = schema["paths"]["/v1/models/{name}/predict"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith("/PredictRequest")
    assert {"PredictRequest", "InferRequest", "InferInput"} <= set(schema["components"]["schemas"])


def test_auth(server):
    url = f"{server.url}/v1/models/cls/predict"
    body = {"texts": ["chest pain"]}
    missing = httpx.post(url, json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert "missing bearer token" in missing.json()["error"]
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer " + KEY[:-1] + "x"})
    assert wrong.status_code == 401 and wrong.json() == {"error": "invalid bearer token"}
    assert httpx.post(url, json=body, headers={"Authorization": "Basic " + KEY}).status_code == 401
    assert httpx.post(url, json=body, headers=AUTH).status_code == 200
    for path in ("/v2/models/cls", "/metrics", "/v1/models", "/v2"):
        assert httpx.get(f"{server.url}{path}").status_code == 401


@pytest.mark.parametrize("task", ["cls", "ml", "ner", "pair"])
def test_predict_rows_are_those_of_predict_file(client, task_bundles, folders, task, tmp_path):
    """predict's rows, with the batch size the server runs (int8: 1, so that no answer depends on its batch)."""
    texts = texts_of(task, folders)
    pairs = pairs_of(folders) if task == "pair" else None
    source = tmp_path / "texts.csv"
    write_csv(source, list(zip(texts, pairs, strict=True)) if pairs else [(t,) for t in texts],
              header=("text", "text_pair") if pairs else ("text",))
    per_run = client.get(f"/v2/models/{task}").json()["parameters"]["texts_per_run"]
    predict_file(task_bundles[task], source, tmp_path / "rows.jsonl", text_col="text", threads=1,
                 text_pair_col="text_pair" if pairs else None, batch_size=per_run)
    expected = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    response = client.post(f"/v1/models/{task}/predict", json={"texts": texts, "pairs": pairs})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == task and answer["rows"] == expected
    assert "queue;dur=" in response.headers["server-timing"] and response.headers["x-request-id"]


@pytest.mark.parametrize("task", ["cls", "ml", "ner", "pair"])
def test_v2_infer_gives_the_same_answers(client, folders, task):
    texts = texts_of(task, folders)[:5]
    pairs = pairs_of(folders)[:5] if task == "pair" else None
    rows = client.post(f"/v1/models/{task}/predict", json={"texts": texts, "pairs": pairs}).json()["rows"]
    request = {"id": "req-7", "inputs": [{"name": "text", "shape": [5, 1], "datatype": "BYTES",
                                          "data": [[t] for t in texts]}]}
    if pairs:
        request["inputs"].append({"name": "text_pair", "shape": [5], "datatype": "BYTES", "data": pairs})
    answer = client.post(f"/v2/models/{task}/infer", json=request).json()
    assert answer["model_name"] == task and answer["id"] == "req-7"
    outputs = {o["name"]: o for o in answer["outputs"]}
    if task == "ner":
        assert [json.loads(e) for e in outputs["entities"]["data"]] == [r["entities"] for r in rows]
        return
    labels = client.get(f"/v2/models/{task}").json()["parameters"]["labels"]
    assert outputs["label"]["data"] == [r["label"] for r in rows]
    assert outputs["probabilities"]["shape"] == [5, len(labels)]
    assert outputs["probabilities"]["data"] == [r[f"p_{label}"] for r in rows for label in labels]
    request["outputs"] = [{"name": "label"}]
    assert [o["name"] for o in client.post(f"/v2/models/{task}/infer", json=request).json()["outputs"]] == ["label"]


BAD_REQUESTS = [
    ("/v1/models/cls/predict", b"{\"texts\": [", 422, "body: invalid JSON at line 1"),
    ("/v1/models/cls/predict", [], 422, "body: Input should be"),
    ("/v1/models/cls/predict", {}, 422, "texts: Field required"),
    ("/v1/models/cls/predict", {"texts": "one note"}, 422, "texts: Input should be a valid list"),
    ("/v1/models/cls/predict", {"texts": ["a", 3]}, 422, "texts[1]: Input should be a valid string"),
    ("/v1/models/cls/predict", {"texts": []}, 422, "texts: List should have at least 1 item"),
    ("/v1/models/cls/predict", {"texts": ["ok", "  "]}, 422, "texts[1]: empty text"),
    ("/v1/models/cls/predict", {"texts": ["a"], "note": 1}, 422, "note: Extra inputs are not permitted"),
    ("/v1/models/cls/predict", {"texts": ["a"], "pairs": ["b"]}, 422, "pairs: model cls classifies single texts"),
    ("/v1/models/pair/predict", {"texts": ["a"]}, 422, "pairs: model pair classifies text pairs"),
    ("/v1/models/pair/predict", {"texts": ["a", "b"], "pairs": ["c"]}, 422, "pairs: 1 pairs for 2 texts"),
    ("/v1/models/pair/predict", {"texts": ["a"], "pairs": [""]}, 422, "pairs[0]: empty text"),
    ("/v2/models/pair/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
     422, "text_pair: model pair classifies text pairs"),
    ("/v1/models/cls/predict", b'{"texts": ["\\ud800"]}', 422, "texts[0]: not valid Unicode"),
    ("/v1/models/cls/predict", {"texts": ["a"] * 65}, 413, "texts: 65 texts in one request; the limit is 64"),
    ("/v1/models/nope/predict", {"texts": ["a"]}, 404, "no model named 'nope'"),
    ("/v2/models/nope/infer", {"inputs": []}, 404, "no model named 'nope'"),
    ("/v2/models/cls/infer", {"inputs": []}, 422, "inputs: List should have at least 1 item"),
    ("/v2/models/cls/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 422,
     "inputs[0].datatype: must be BYTES"),
    ("/v2/models/cls/infer", {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}, 422,
     "inputs[0].shape: [2] does not hold the 1 elements"),
    ("/v2/models/cls/infer", {"inputs": [{"name": "words", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
     422, "inputs[0].name: unknown input 'words'"),
    ("/v2/models/cls/infer", {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", 2]}]},
     422, "inputs[0].data[1]: must be a string"),
    ("/v2/models/cls/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]}, 422,
     "inputs[0].data: Field required"),
    ("/v2/models/cls/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                              "outputs": [{"name": "logits"}]}, 422, "outputs[0].name: unknown output 'logits'"),
    ("/v2/models/cls/infer", {"inputs": [{"name": "text", "shape": [65], "datatype": "BYTES", "data": ["a"] * 65}]},
     413, "text: 65 texts in one request"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD_REQUESTS)
def test_bad_requests_and_limits(client, path, body, status, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(path, content=content)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_body_size_limit(client):
    big = json.dumps({"texts": ["x" * 120_000]}).encode()
    declared = client.post("/v1/models/cls/predict", content=big)
    assert declared.status_code == 413 and "the limit is 100000 (--max-body-bytes)" in declared.json()["error"]

    def chunks():  # no Content-Length: the limit is applied while reading
        for start in range(0, len(big), 16_384):
            yield big[start:start + 16_384]

    streamed = client.post("/v1/models/cls/predict", content=chunks())
    assert streamed.status_code == 413 and "more than 100000 bytes" in streamed.json()["error"]
    assert client.get("/v1/models/cls/predict").status_code == 405


def test_50_parallel_requests_are_batched_and_answered_correctly(server, task_bundles, folders):
    """Every answer equals the text scored alone in-process, whatever the batch it ran in."""
    jobs = [(task, text) for task in ("cls", "ml", "ner") for text in texts_of(task, folders)[:17]][:50]
    expected = {}
    for task in ("cls", "ml", "ner"):
        model = runtime.load(task_bundles[task], threads=1)
        for text in {t for name, t in jobs if name == task}:
            expected[task, text] = model.strategy.prediction_rows(model, [Example(text=text, label="")])[0]
    before = batches_run(server)

    async def call_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60,
                                     limits=httpx.Limits(max_connections=50)) as session:
            return await asyncio.gather(*(session.post(f"/v1/models/{task}/predict", json={"texts": [text]})
                                          for task, text in jobs))

    responses = asyncio.run(call_all())
    assert [r.status_code for r in responses] == [200] * 50
    for (task, text), response in zip(jobs, responses, strict=True):
        assert response.json()["rows"] == expected[task, text]
    after = batches_run(server)
    batches = sum(after[t][0] - before[t][0] for t in after)
    assert sum(after[t][1] - before[t][1] for t in after) == 50  # texts
    assert batches < 50, "concurrent requests were never gathered into one batch"


def batches_run(server) -> dict[str, tuple[float, float]]:
    """(batches, texts) run per model so far, from /metrics."""
    text = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        for index, name in enumerate(("edgeclin_batch_texts_count", "edgeclin_batch_texts_sum")):
            if line.startswith(name + "{"):
                model = line.split('model="')[1].split('"')[0]
                found.setdefault(model, [0.0, 0.0])[index] = float(line.split()[-1])
    return {model: (values[0], values[1]) for model, values in found.items()}


def test_metrics(client):
    client.post("/v1/models/cls/predict", json={"texts": ["chest pain"]})
    text = client.get("/metrics").text
    assert 'edgeclin_requests_total{endpoint="/v1/models/{name}/predict",model="cls",status="200"}' in text
    for status in ("401", "404", "413", "422"):
        assert f'status="{status}"' in text
    for series in ('edgeclin_request_duration_seconds_bucket{endpoint="/v1/models/{name}/predict"',
                   'edgeclin_batch_texts_bucket{le="1.0",model="cls"}', 'edgeclin_queue_depth{model="ner"} 0.0',
                   'edgeclin_queue_wait_seconds_count{model="cls"}', "edgeclin_requests_in_flight ",
                   "process_resident_memory_bytes "):
        assert series in text, series
    load = next(line for line in text.splitlines() if line.startswith('edgeclin_model_load_seconds{model="ml"}'))
    assert float(load.split()[-1]) > 0
    assert 'edgeclin_model_info{backend="onnxruntime",digest="sha256:' in text
    assert "_created" not in text


# --- TLS, no batching, a full queue, logs, SIGTERM -----------------------------------------------

@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(folder / "key.pem"),
                    "-out", str(folder / "cert.pem"), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture(scope="module")
def tls_server(bundle, certificate, tmp_path_factory):
    """Launched through a wrapper that writes, at exit, which of the BANNED modules the process imported."""
    report = tmp_path_factory.mktemp("modules") / "imported.json"
    launcher = [sys.executable, "-c",
                "import atexit, json, sys\n"
                f"atexit.register(lambda: open({str(report)!r}, 'w').write(json.dumps("
                f"[m for m in {BANNED!r} if m in sys.modules])))\n"
                "from edgeclin.cli import main\nsys.argv[0] = 'edgeclin'\nmain()"]
    cert, key = certificate
    running = Server([f"cls={bundle}", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--max-batch", "1",
                      "--max-texts", "64", "--max-queue", "384", "--threads", "1"], launcher)
    running.report = report
    yield running
    running.kill()


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def tls_client(server, cert: Path) -> httpx.Client:
    return httpx.Client(base_url=server.url, verify=trusting(cert), timeout=60)


def test_tls_and_a_full_queue_answers_503(tls_server, certificate, folders):
    assert tls_server.url.startswith("https://127.0.0.1:")
    with tls_client(tls_server, certificate[0]) as session:
        assert session.get("/v2/health/ready").json() == {"ready": True}
        assert session.get("/v2/models/cls").json()["parameters"]["texts_per_run"] == 1
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_server.port}/v2/health/live", timeout=10)
    texts = (texts_of("cls", folders) * 2)[:64]

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=tls_server.url, verify=trusting(certificate[0]), timeout=120,
                                     limits=httpx.Limits(max_connections=40)) as session:
            return await asyncio.gather(*(session.post("/v1/models/cls/predict", json={"texts": texts})
                                          for _ in range(40)))

    responses = asyncio.run(flood())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            assert int(response.headers["retry-after"]) >= 1 and "at capacity" in response.json()["error"]
        else:
            assert len(response.json()["rows"]) == 64


def test_sigterm_answers_the_requests_in_flight(tls_server, certificate, folders):
    cert = certificate[0]
    texts = [SECRET_NOTE, *(texts_of("cls", folders) * 2)[:63]]

    def call() -> httpx.Response:
        with tls_client(tls_server, cert) as session:
            return session.post("/v1/models/cls/predict", json={"texts": texts})

    with ThreadPoolExecutor(6) as pool, tls_client(tls_server, cert) as probe:
        for _attempt in range(5):  # until the signal lands with requests in flight (they take ~0.1 s in all)
            futures = [pool.submit(call) for _ in range(6)]
            done = 0
            while done < 6:  # signal once all six are received and at least one is unanswered
                in_flight = gauge(probe.get("/metrics").text, "edgeclin_requests_in_flight") - 1  # minus the probe
                done = sum(f.done() for f in futures)
                if in_flight + done >= 6 and done < 6:
                    break
            if done < 6:
                break
        assert done < 6, "every request finished before the signal could be sent"
        tls_server.process.send_signal(signal.SIGTERM)
        responses = [f.result(timeout=60) for f in futures]
    assert [r.status_code for r in responses] == [200] * 6
    assert all(len(r.json()["rows"]) == 64 for r in responses)
    assert tls_server.process.wait(timeout=60) == 0
    log = "".join(tls_server.stderr) + "".join(tls_server.stdout)
    assert "SIGTERM: no new connections" in log and "stopped: every request received was answered" in log
    assert "status=200" in log and "texts=64" in log  # the request log holds counts and timings ...
    assert "zebra-sentinel" not in log  # ... never the text of a note
    assert json.loads(tls_server.report.read_text()) == []  # no torch, transformers, optimum or peft


def gauge(metrics: str, name: str) -> float:
    return float(next(line for line in metrics.splitlines() if line.startswith(name + " ")).split()[-1])
