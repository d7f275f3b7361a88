"""edgeclin bench on tiny models with few iterations: structure, metrics, compare, no-GPU rows."""

import json

import pytest
from click.testing import CliRunner

from edgeclin.bench import bench, compare
from edgeclin.cli import main
from edgeclin.errors import EdgeclinError


@pytest.fixture(scope="module")
def results_dir(lora_run, bundle, demo_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "a"
    return bench([lora_run.output, bundle], baseline=lora_run.output, data=demo_folder, batch_sizes=(1, 2),
                 seq_lens=(16,), threads=(1,), warmup=1, repeats=3, rounds=1, out=out, progress=False)


def test_outputs_and_every_variant_measured(results_dir, lora_run, bundle):
    names = {p.name for p in results_dir.iterdir()}
    assert {"results.json", "results.csv", "report.md", "latency_vs_batch.png", "accuracy_vs_latency.png"} <= names
    results = json.loads((results_dir / "results.json").read_text())
    env = results["environment"]
    assert env["cpu"] and env["cores"] >= 1 and env["versions"]["onnxruntime"] and "isa" in env
    runnable = [v["name"] for v in results["variants"] if v["status"] == "ok"]
    assert any("pytorch fp32" in n for n in runnable) and any("onnxruntime int8" in n for n in runnable)
    assert sum(v["baseline"] for v in results["variants"]) == 1
    latency = {(r["variant"], r["batch"]) for r in results["latency"] if "p50_ms" in r}
    assert latency == {(n, b) for n in runnable for b in (1, 2)}
    for row in results["latency"]:
        if "p50_ms" in row:
            assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["runs"] == 3
    e2e = {r["variant"]: r for r in results["end_to_end"]}
    for name in runnable:
        row = e2e[name]
        assert row["texts"] == 40 and row["texts_per_s"] > 0 and row["peak_rss_mb"] > 0 and row["bytes"] > 0
        assert 0 <= row["metrics"]["macro_f1"] <= 1
    # each variant's metric is the one the rest of edgeclin measured on the same 40 test notes
    torch_row = next(r for n, r in e2e.items() if "pytorch fp32" in n)
    int8_row = next(r for n, r in e2e.items() if "onnxruntime int8" in n)
    # (bench runs the merged model: the same predictions, probabilities equal to ~1e-6, so AUROC
    # may move by a tie or two)
    for key in ("accuracy", "macro_f1", "weighted_f1"):
        assert torch_row["metrics"][key] == pytest.approx(lora_run.metrics["test"][key], abs=1e-6)
    assert torch_row["metrics"]["auroc"] == pytest.approx(lora_run.metrics["test"]["auroc"], abs=5e-3)
    manifest = json.loads((bundle / "manifest.json").read_text())
    gated = next(v for v in manifest["gate"]["variants"] if v["name"] == manifest["chosen"])
    assert int8_row["metrics"] == pytest.approx(gated["metrics"], abs=1e-6)
    assert int8_row["bytes"] < torch_row["bytes"]
    report = (results_dir / "report.md").read_text()
    assert "1.00x" in report and "Baseline" in report


def test_no_gpu_rows_say_so(results_dir):
    import torch

    results = json.loads((results_dir / "results.json").read_text())
    cuda_rows = [r for r in results["latency"] if "cuda" in r["variant"]]
    assert cuda_rows
    if not torch.cuda.is_available():
        assert all(r == {"variant": r["variant"], "status": "not run: no GPU"} for r in cuda_rows)
        assert "not run: no GPU" in (results_dir / "report.md").read_text()


def test_compare_prints_ratios(results_dir, tmp_path):
    data = json.loads((results_dir / "results.json").read_text())
    for row in data["latency"]:
        if "p50_ms" in row:
            row["p50_ms"] /= 2  # the second machine is twice as fast
    other = tmp_path / "b.json"
    other.write_text(json.dumps(data))
    table = compare(results_dir / "results.json", other)
    assert "| 2.00x |" in table
    result = CliRunner().invoke(main, ["bench", "--compare", str(results_dir / "results.json"), str(other)])
    assert result.exit_code == 0 and "2.00x" in result.output
    data["latency"], data["end_to_end"] = [], []
    other.write_text(json.dumps(data))
    with pytest.raises(EdgeclinError, match="share no measurement"):
        compare(results_dir / "results.json", other)


def test_onnxruntime_only_when_openvino_is_missing(bundle, demo_folder, tmp_path, monkeypatch):
    from edgeclin import engines, runtime

    monkeypatch.setattr(engines.BACKENDS["openvino"], "available", lambda: False)
    out = bench([bundle], batch_sizes=(1,), seq_lens=(8,), threads=(1,), warmup=1, repeats=2, rounds=1,
                out=tmp_path / "o",
                progress=False)
    results = json.loads((out / "results.json").read_text())
    statuses = {v["engine"]: v["status"] for v in results["variants"] if v["device"] == "cpu"}
    assert statuses["onnxruntime"] == "ok" and statuses["openvino"] == "not run: openvino not installed"
    with pytest.raises(EdgeclinError, match="needs the openvino package"):
        runtime.load(bundle, backend="openvino")


def test_openvino_backend_agrees_with_onnxruntime(bundle):
    import numpy as np

    from edgeclin import runtime

    texts = ["chest pain radiating to the left arm", "knee pain after a fall", "a productive cough"]
    ort_probs = runtime.load(bundle, backend="onnxruntime").predict(texts).probabilities
    ov_probs = runtime.load(bundle, backend="openvino").predict(texts).probabilities
    assert np.abs(ort_probs - ov_probs).max() < 0.05  # bf16 on AMX CPUs: close, not bit-equal


def test_openvino_fp32_graph_and_auto_backend(lora_run, demo_folder, tmp_path):
    """--openvino-fp32 carries the fp32 graph; export measures the backends; auto follows the manifest
    only on the same kind of CPU; bench measures the carried graph as its own variant."""
    from edgeclin import runtime
    from edgeclin.export import export, write_bundle
    from edgeclin.hardware import cpu_features

    result = export(lora_run.output, tmp_path / "bundle", int8=True, keep_fp32=True, ir=False, quiet=True,
                    max_drop=100.0)
    manifest = result.manifest
    assert "model.fp32.onnx" in manifest["files"]
    measured = manifest["runtime"]
    assert measured["cpu"] == cpu_features().signature()
    assert {(c["backend"], c["model"]) for c in measured["candidates"]} == {
        ("onnxruntime", "model.onnx"), ("openvino", "model.onnx"), ("openvino", "model.fp32.onnx")}
    assert all(c["p50_ms"] > 0 and "macro_f1" in c for c in measured["candidates"])
    assert runtime.load(result.bundle).backend == measured["preferred"]["backend"]

    # a manifest that prefers OpenVINO on the fp32 graph: followed here; on another CPU the gated engines are timed
    preferred = {"backend": "openvino", "model": "model.fp32.onnx", "precision": "bf16"}
    gated = {(c["backend"], c["model"]) for c in measured["candidates"] if c["passed"]}
    for cpu, name in ((cpu_features().signature(), "here"), ({"model": "another CPU", "isa": ["amx_bf16"]}, "other")):
        edited = {k: v for k, v in manifest.items() if k != "files"}
        edited["runtime"] = {**measured, "cpu": cpu, "preferred": preferred}
        folder = write_bundle(tmp_path / f"edited-{name}", result.bundle / "model.onnx", result.bundle,
                              json.loads((result.bundle / "labels.json").read_text()), edited,
                              {"model.fp32.onnx": result.bundle / "model.fp32.onnx"})
        model = runtime.load(folder)
        if name == "here":
            assert (model.backend, model.model_path.name) == ("openvino", "model.fp32.onnx")
        else:
            assert (model.backend, model.model_path.name) in gated and model.choice.startswith("timed on this CPU")
        assert model.predict(["knee pain after a fall"]).labels

    out = bench([result.bundle], data=demo_folder, batch_sizes=(1,), seq_lens=(16,), threads=(1,), warmup=1,
                repeats=2, rounds=1, out=tmp_path / "bench", progress=False)
    rows = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["end_to_end"]}
    graph = next(name for name in rows if "(fp32 graph)" in name)
    assert rows[graph]["bytes"] == manifest["files"]["model.fp32.onnx"]["bytes"]
    assert rows[graph]["metrics"]["macro_f1"] is not None


def test_an_openvino_ir_counts_its_weights(tmp_path):
    from edgeclin.bench import BenchVariant, deploy_bytes

    (tmp_path / "model.xml").write_bytes(b"x" * 10)
    (tmp_path / "model.bin").write_bytes(b"w" * 1000)
    (tmp_path / "model.onnx").write_bytes(b"o" * 100)
    ir = BenchVariant("b: openvino bf16", str(tmp_path), "openvino", "bf16", model_file="model.xml")
    assert deploy_bytes(ir) == 1010
    assert deploy_bytes(BenchVariant("b: onnxruntime int8", str(tmp_path), "onnxruntime", "int8")) == 100
