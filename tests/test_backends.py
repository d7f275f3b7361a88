"""The backend registry and the CPU kinds it decides on, simulated so that one machine covers all of them.

``EDGECLIN_CPU_FEATURES`` replaces what /proc/cpuinfo says: each test of an automatic choice runs
under the four kinds of CPU the project's machines (and its users') have.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeclin import engines, runtime
from edgeclin.artifacts import BundleManifest
from edgeclin.hardware import SIMULATED_KINDS, cpu_features

KINDS = {  # kind -> (int8 preset, precision of a float graph under OpenVINO)
    "amx": ("avx512_vnni", "bf16"),
    "avx512_bf16": ("avx512_vnni", "bf16"),
    "avx2": ("avx2", "fp32"),
    "arm64": ("arm64", "fp32"),
}


def test_every_simulated_kind_is_covered():
    assert set(KINDS) == set(SIMULATED_KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_cpu_features_are_simulated(kind, monkeypatch):
    monkeypatch.setenv("EDGECLIN_CPU_FEATURES", kind)
    features = cpu_features()
    assert features.simulated and features.int8_preset == KINDS[kind][0]
    assert features.native_bf16 == (KINDS[kind][1] == "bf16") and features.has_amx == (kind == "amx")
    assert features.signature()["model"] == f"simulated {kind}"


def test_explicit_flags_and_a_bad_value(monkeypatch):
    from edgeclin.errors import EdgeclinError

    monkeypatch.setenv("EDGECLIN_CPU_FEATURES", "x86_64:avx2,avx512f")
    assert cpu_features().int8_preset == "avx512" and not cpu_features().native_bf16
    monkeypatch.setenv("EDGECLIN_CPU_FEATURES", "quantum")
    with pytest.raises(EdgeclinError, match="EDGECLIN_CPU_FEATURES='quantum'"):
        cpu_features()


@pytest.mark.parametrize("kind", KINDS)
def test_candidates_follow_the_cpu(kind, monkeypatch):
    monkeypatch.setenv("EDGECLIN_CPU_FEATURES", kind)
    graphs = {"model.onnx": "int8", "model.fp32.onnx": "fp32"}
    found = {(c.backend, c.model): c.precision for c in engines.candidates(graphs, installed_only=False)}
    assert found == {("onnxruntime", "model.onnx"): "int8", ("openvino", "model.onnx"): "int8",
                     ("openvino", "model.fp32.onnx"): KINDS[kind][1]}


@pytest.fixture(scope="module")
def exports_by_kind(lora_run, tmp_path_factory):
    """The same run exported with --int8 --openvino-fp32 under each simulated CPU kind."""
    from edgeclin.export import export

    bundles = {}
    with pytest.MonkeyPatch.context() as patch:
        for kind in KINDS:
            patch.setenv("EDGECLIN_CPU_FEATURES", kind)
            bundles[kind] = export(lora_run.output, tmp_path_factory.mktemp(kind) / "bundle", int8=True,
                                   keep_fp32=True, max_drop=100.0, quiet=True).bundle
    return bundles


@pytest.mark.parametrize("kind", KINDS)
def test_export_measures_what_this_cpu_kind_can_run(exports_by_kind, kind):
    manifest = json.loads((exports_by_kind[kind] / "manifest.json").read_text())
    assert manifest["isa"] == KINDS[kind][0] and manifest["quantization"]["isa"] == KINDS[kind][0]
    assert manifest["runtime"]["cpu"]["model"] == f"simulated {kind}"
    measured = {(c["backend"], c["model"]): c["precision"] for c in manifest["runtime"]["candidates"]}
    assert measured[("onnxruntime", "model.onnx")] == "int8"
    assert measured[("openvino", "model.fp32.onnx")] == KINDS[kind][1]
    assert all("macro_f1" in c and c["p50_ms"] > 0 for c in manifest["runtime"]["candidates"])


def _preferring_openvino_fp32_graph(bundle, folder):
    """A copy of the bundle whose measurement preferred OpenVINO on the fp32 graph (re-checksummed)."""
    from edgeclin.export import write_bundle

    manifest = BundleManifest.read(bundle)
    fp32 = next(c for c in manifest.runtime["candidates"] if c["model"] == "model.fp32.onnx")
    manifest.runtime = {**manifest.runtime, "preferred": {k: fp32[k] for k in ("backend", "model", "precision")}}
    labels = json.loads((bundle / "labels.json").read_text())
    extra = {name: bundle / name for graph in manifest.graphs.values() for name in graph["files"]}
    return write_bundle(folder, bundle / "model.onnx", bundle, labels, manifest,
                        {"model.fp32.onnx": bundle / "model.fp32.onnx", **extra})


@pytest.mark.parametrize("exported_on", ["amx", "avx2"])
@pytest.mark.parametrize("loaded_on", list(KINDS))
def test_auto_follows_export_on_its_cpu_kind_and_times_the_gated_engines_on_another(exports_by_kind, exported_on,
                                                                                  loaded_on, tmp_path, monkeypatch):
    from edgeclin import selection

    bundle = _preferring_openvino_fp32_graph(exports_by_kind[exported_on], tmp_path / "edited")
    monkeypatch.setenv("EDGECLIN_CPU_FEATURES", loaded_on)
    monkeypatch.setenv("EDGECLIN_CACHE", str(tmp_path / "cache"))
    model = runtime.load(bundle)
    if loaded_on == exported_on:
        assert (model.backend, model.model_path.name, model.precision) == \
            ("openvino", "model.fp32.onnx", KINDS[exported_on][1])
        assert model.choice.startswith("fastest at equal accuracy when export measured this kind of CPU")
    else:  # never measured on this kind: the engines that passed the gate, timed here once
        measured = BundleManifest.read(bundle).runtime["candidates"]
        assert (model.backend, model.model_path.name) in {(c["backend"], c["model"]) for c in measured if c["passed"]}
        assert model.choice.startswith("timed on this CPU on first use") and " ms" in model.choice
        assert list((tmp_path / "cache" / "engine-choice").glob("*.json"))

        def no_timing(*args, **kwargs):
            raise AssertionError("timed again: the choice was not cached")

        monkeypatch.setattr(selection, "time_candidates", no_timing)
        again = runtime.load(bundle)
        assert (again.backend, again.model_path.name) == (model.backend, model.model_path.name)
    assert model.predict(["knee pain after a fall"]).labels


def test_pinned_backend_is_exactly_what_runs(exports_by_kind, monkeypatch):
    monkeypatch.setenv("EDGECLIN_CPU_FEATURES", "amx")
    bundle = exports_by_kind["amx"]
    assert runtime.load(bundle, backend="onnxruntime").describe() == "onnxruntime, int8, model.onnx"
    assert runtime.load(bundle, backend="openvino").describe() == "openvino, int8, model.onnx"


class Renamed(engines.OnnxRuntime):
    """A new backend is one class and one registry line: here onnxruntime under another name."""

    name = "renamed-ort"


def test_a_registered_backend_is_used_everywhere(bundle, lora_run, tmp_path, monkeypatch):
    from edgeclin.bench import plan_variants
    from edgeclin.export import export

    monkeypatch.setitem(engines.BACKENDS, Renamed.name, Renamed())
    model = runtime.load(bundle, backend="renamed-ort")
    reference = runtime.load(bundle, backend="onnxruntime")
    texts = ["a productive cough", "knee pain after a fall"]
    assert model.backend == "renamed-ort"
    assert np.array_equal(model.predict(texts).probabilities, reference.predict(texts).probabilities)
    assert any(v.engine == "renamed-ort" for v in plan_variants([bundle], None, ["onnxruntime", "renamed-ort"]))
    measured = export(lora_run.output, tmp_path / "b", int8=True, max_drop=100.0, quiet=True).manifest["runtime"]
    assert "renamed-ort" in {c["backend"] for c in measured["candidates"]}


def test_a_registered_quantisation_recipe_is_tried_by_the_gate(lora_run, tmp_path, monkeypatch):
    from dataclasses import dataclass

    from edgeclin import quantization
    from edgeclin.export import export

    @dataclass(frozen=True)
    class MatMulOnly(quantization.DynamicInt8):
        kind = "matmul-only"

        @classmethod
        def plan(cls, options, isa):
            return [cls(isa, "matmul", False)] if options.int8 else []

        @property
        def label(self):
            return "int8 matmul-only recipe"

    monkeypatch.setattr(quantization, "RECIPES", {"matmul-only": MatMulOnly})
    result = export(lora_run.output, tmp_path / "b", int8=True, max_drop=100.0, quiet=True)
    assert result.manifest["chosen"] == "int8 matmul-only recipe"
    assert result.manifest["quantization"]["quantize"] == "matmul"
    assert result.manifest["quantization"]["optimum_ort_config"]["quantization"]["operators_to_quantize"]


def test_int8_bundles_carry_a_gated_openvino_ir_with_int8_weights(exports_by_kind, lora_run, tmp_path, monkeypatch):
    from edgeclin import graphs
    from edgeclin.export import export

    manifest = json.loads((exports_by_kind["amx"] / "manifest.json").read_text())
    ir = manifest["graphs"]["model.xml"]
    assert ir["weights"] == "int8" and ir["files"] == ["model.xml", "model.bin"]
    assert ir["settings"]["mode"] == "INT8_ASYM"  # (its size against fp32 is measured on MiniLM in benchmarks/)
    assert {"model.xml", "model.bin"} <= set(manifest["files"])
    assert ir["passed"] and ir["drop_points"] is not None and "macro_f1" in ir["metrics"]  # gated like the others
    measured = {(c["backend"], c["model"]): c["precision"] for c in manifest["runtime"]["candidates"]}
    assert measured[("openvino", "model.xml")] == "bf16"  # computed in bf16 where the CPU has it
    monkeypatch.setenv("EDGECLIN_CPU_FEATURES", "amx")
    ir_model = runtime.load(exports_by_kind["amx"], backend="onnxruntime")
    assert ir_model.predict(["knee pain after a fall"]).labels
    plain = export(lora_run.output, tmp_path / "no-ir", int8=True, ir=False, max_drop=100.0, quiet=True).manifest
    assert plain["graphs"] == {} and "model.xml" not in plain["files"]
    monkeypatch.setattr(graphs.OpenVinoIR, "available", lambda self: False)  # no NNCF: the portable bundle only
    without = export(lora_run.output, tmp_path / "no-nncf", int8=True, max_drop=100.0, quiet=True).manifest
    assert "model.xml" not in without["files"]


def test_openvino_does_not_pin_threads_to_cores(exports_by_kind):
    """Pinned, every one-thread OpenVINO process (a Spark worker each) starts on core 0 and they share it."""
    engine = runtime.load(exports_by_kind["amx"], backend="openvino", threads=1).engine
    assert engine.compiled.get_property("ENABLE_CPU_PINNING") is False
