"""merge, export and the torch-free runtime, on a tiny random BERT trained for a few steps."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import measured_metric

from edgeclin import runtime
from edgeclin.artifacts import open_model_folder
from edgeclin.cli import main
from edgeclin.data import Columns, read_split
from edgeclin.errors import EdgeclinError
from edgeclin.export import export
from edgeclin.merge import merge
from edgeclin.torch_model import load_torch_model
from edgeclin.training import TrainConfig, train


def test_merge_is_verified_and_loads_as_plain_model(lora_run, demo_folder, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    merged_dir = merge(lora_run.output, tmp_path / "merged")
    record = json.loads((merged_dir / "merge.json").read_text())
    assert record["max_abs_logit_diff"] <= 1e-4 and record["checked_inputs"] == 40
    assert (merged_dir / "model.safetensors").exists() and not (merged_dir / "adapter_config.json").exists()

    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    tests = [e.text for e in read_split(demo_folder / "test.csv", "test", Columns()).examples]
    with torch.no_grad():
        logits = merged(**tokenizer(tests, return_tensors="pt", padding=True, truncation=True, max_length=48)).logits
    # the trained head survived merging: the plain model predicts what training measured
    assert np.allclose(torch.softmax(logits, -1).numpy(), lora_run.test_probabilities, atol=1e-5)
    assert merged.config.id2label[0] == json.loads((merged_dir / "labels.json").read_text())["labels"][0]


def test_full_run_passes_through_and_bad_folders_are_refused(tiny_bert, demo_folder, tmp_path):
    full = train(TrainConfig(model=str(tiny_bert), data=str(demo_folder), output=str(tmp_path / "full"),
                             method="full", epochs=1, max_length=48, precision="fp32", progress=False,
                             allow_degenerate=True))
    assert merge(full.output) == full.output
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeclinError, match="holds no model"):
        merge(tmp_path / "empty")
    with pytest.raises(EdgeclinError, match="no such folder"):
        export(tmp_path / "missing")


def test_bundle_is_complete_and_self_describing(bundle, lora_run):
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = {p.name for p in bundle.iterdir()}
    assert {"model.onnx", "tokenizer.json", "config.json", "labels.json", "manifest.json"} <= names
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert manifest["quantization"]["mode"] == "dynamic" and manifest["isa"] in ("avx2", "avx512", "avx512_vnni",
                                                                                "arm64")
    assert manifest["source"]["method"] == "lora" and manifest["max_length"] == 48
    gate = manifest["gate"]
    assert gate["variants"][0]["name"] == "onnx fp32" and gate["variants"][1]["passed"]
    assert manifest["opset"] >= 11
    fp32, int8 = gate["variants"][0], gate["variants"][1]
    assert int8["bytes"] < fp32["bytes"]
    # fp32 ONNX reproduces the PyTorch model on the test split
    assert fp32["metrics"]["macro_f1"] == pytest.approx(gate["source_pytorch_fp32"]["macro_f1"], abs=1e-9)


def test_bundle_loads_in_plain_onnxruntime_and_optimum(bundle):
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    assert {i.name for i in session.get_inputs()} >= {"input_ids", "attention_mask"}
    model = ORTModelForSequenceClassification.from_pretrained(bundle, file_name="model.onnx")
    tokenizer = AutoTokenizer.from_pretrained(bundle)
    text = ["patient with a productive cough and wheezing at night"]
    logits = model(**tokenizer(text, return_tensors="pt")).logits.numpy()
    ours = runtime.load(bundle, backend="onnxruntime").logits(text)  # the same graph, the same engine
    assert np.allclose(logits, ours, atol=1e-4)


def test_fp32_export_matches_pytorch(lora_run, demo_folder, tmp_path):
    result = export(lora_run.output, tmp_path / "fp32", quiet=True)
    assert result.manifest["quantization"] is None
    tests = read_split(demo_folder / "test.csv", "test", Columns()).examples
    # fp32 outputs compared: pinned ("auto" may run a bf16 engine that export measured faster here)
    probabilities = runtime.load(result.bundle, backend="onnxruntime").predict([e.text for e in tests]).probabilities
    assert np.allclose(probabilities, lora_run.test_probabilities, atol=1e-4)


def test_gate_failure_leaves_no_bundle_unless_forced(lora_run, tmp_path):
    out = tmp_path / "gated"
    with pytest.raises(EdgeclinError, match="no bundle written"):
        export(lora_run.output, out, int8=True, max_drop=-100.0, quiet=True)  # nothing can pass
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".gated")]
    forced = export(lora_run.output, out, int8=True, max_drop=-100.0, force=True, quiet=True)
    assert forced.manifest["gate"]["forced"] is True
    assert len(forced.manifest["gate"]["variants"]) == 7  # fp32 + all six dynamic settings were tried


def test_optimize_and_static_variants(lora_run, tmp_path):
    result = export(lora_run.output, tmp_path / "static", int8=True, optimize=True, static=True, calibration=16,
                    quantize="matmul", max_drop=100.0, quiet=True)
    names = [v["name"] for v in result.manifest["gate"]["variants"]]
    assert names[1] == "onnx fp32 optimized" and names[2].startswith("int8 static QDQ")
    assert result.manifest["quantization"]["mode"] == "static"
    labels = json.loads((result.bundle / "labels.json").read_text())["labels"]
    assert runtime.load(result.bundle).predict(["knee pain after a fall"]).labels[0] in labels


def test_optimized_graph_takes_dynamic_int8(lora_run, tmp_path):
    """PITFALLS 7: onnxruntime's quantiser cannot type the outputs of the fused ops (Attention, SkipLayerNorm) by
    itself; the optimised graph carries their shapes and types, so --optimize --int8 quantises it."""
    result = export(lora_run.output, tmp_path / "optimized", int8=True, optimize=True, max_drop=100.0, quiet=True)
    names = [v["name"] for v in result.manifest["gate"]["variants"]]
    assert names[1] == "onnx fp32 optimized" and names[2].startswith("int8 dynamic")
    assert result.manifest["optimized"] is True and result.manifest["quantization"]["mode"] == "dynamic"
    assert runtime.load(result.bundle).predict(["knee pain after a fall"]).labels
    # OpenVINO reads no onnxruntime fused ops: measured as an engine that cannot load the graph, never chosen
    measured = result.manifest["runtime"]["candidates"]
    unloadable = [c for c in measured if c.get("loads") is False]
    assert [c["backend"] for c in unloadable] == ["openvino"] and not unloadable[0]["passed"]
    assert result.manifest["runtime"]["preferred"]["backend"] == "onnxruntime"
    assert "cannot load it" in (result.bundle / "README.md").read_text()


def test_predict_cli_reproduces_gate_metric(bundle, demo_folder, tmp_path):
    out = tmp_path / "pred.jsonl"
    result = CliRunner().invoke(main, ["predict", str(bundle), "--data", str(demo_folder / "test.csv"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 40 and {"text", "true_label", "label"} <= set(rows[0])
    summary = json.loads((tmp_path / "pred.jsonl.metrics.json").read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    chosen = next(v for v in manifest["gate"]["variants"] if v["name"] == manifest["chosen"])
    assert summary["metrics"]["macro_f1"] == pytest.approx(measured_metric(manifest, summary, "macro_f1"))
    if summary["backend"] == "onnxruntime":
        assert summary["metrics"]["macro_f1"] == pytest.approx(chosen["metrics"]["macro_f1"])
    csv_out = tmp_path / "pred.csv"
    result = CliRunner().invoke(main, ["predict", str(bundle), "--data", str(demo_folder / "test.csv"), "-o",
                                       str(csv_out)])
    assert result.exit_code == 0 and csv_out.read_text().startswith("text,true_label,label,p_")


def test_runtime_never_imports_torch(bundle, demo_folder):
    code = (
        "import sys; from edgeclin import runtime; from edgeclin.predict import predict_file; "
        f"b = runtime.load({str(bundle)!r}); print(b.predict(['chest pain']).labels); "
        f"predict_file({str(bundle)!r}, {str(demo_folder / 'test.csv')!r}, None); "
        "from edgeclin.cli import main; "
        "bad = [m for m in ('torch', 'transformers', 'optimum', 'peft') if m in sys.modules]; "
        "assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_tampered_or_incomplete_bundle_is_refused(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "tokenizer.json").read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit different: only the sha256 can tell
    (copy / "tokenizer.json").write_bytes(bytes(data))
    with pytest.raises(EdgeclinError, match=r"tokenizer\.json has changed since export"):
        runtime.load(copy)
    shutil.rmtree(copy)
    shutil.copytree(bundle, copy)
    (copy / "model.onnx").unlink()
    result = CliRunner().invoke(main, ["predict", str(copy), "--data", "whatever.csv"])
    assert result.exit_code == 2 and "incomplete: model.onnx is missing" in result.stderr
    (copy / "manifest.json").unlink()
    with pytest.raises(EdgeclinError, match="not an edgeclin bundle"):
        runtime.load(copy)


def test_onnx_from_another_model_is_refused(bundle, tmp_path, tiny_bert):
    """A model.onnx with another head swapped in (manifest rewritten to match): caught by shape."""
    from edgeclin.export import export_onnx, write_bundle

    other = export_onnx(tiny_bert, tmp_path / "other")  # the 2-label base model
    manifest = json.loads((bundle / "manifest.json").read_text())
    labels = manifest["labels"]
    for name in ("files", "graphs"):  # only model.onnx is swapped in
        manifest.pop(name)
    swapped = write_bundle(tmp_path / "swapped", other, bundle, {"labels": labels}, manifest)
    with pytest.raises(EdgeclinError, match="does not fit"):
        runtime.load(swapped)


def test_predict_bad_column(bundle, tmp_path):
    data = tmp_path / "in.csv"
    data.write_text("note\nchest pain\n")
    result = CliRunner().invoke(main, ["predict", str(bundle), "--data", str(data)])
    assert result.exit_code == 2 and "no column 'text' (columns present: note)" in result.stderr
    result = CliRunner().invoke(main, ["predict", str(bundle), "--data", str(data), "--text-col", "note"])
    assert result.exit_code == 0 and json.loads(result.stdout.splitlines()[0])["label"] in \
        json.loads((bundle / "labels.json").read_text())["labels"]


def test_source_model_is_the_unmerged_adapter(lora_run):
    model = load_torch_model(open_model_folder(lora_run.output))
    assert type(model).__name__ == "PeftModelForSequenceClassification"


def test_ia3_exports_and_prompt_methods_are_refused(tiny_bert, demo_folder, tmp_path):
    common = dict(model=str(tiny_bert), data=str(demo_folder), epochs=1, max_length=48, precision="fp32",
                  progress=False, allow_degenerate=True)
    ia3 = train(TrainConfig(method="ia3", output=str(tmp_path / "ia3"), **common))
    bundle = export(ia3.output, tmp_path / "ia3-bundle", quiet=True)
    tests = read_split(demo_folder / "test.csv", "test", Columns()).examples
    probabilities = runtime.load(bundle.bundle, backend="onnxruntime").predict([e.text for e in tests]).probabilities
    assert np.allclose(probabilities, ia3.test_probabilities, atol=1e-4)

    prompt = train(TrainConfig(method="prompt", num_virtual_tokens=4, output=str(tmp_path / "prompt"), **common))
    for action in (lambda: merge(prompt.output), lambda: export(prompt.output, tmp_path / "p-bundle", quiet=True)):
        with pytest.raises(EdgeclinError, match="trained with prompt tuning, which cannot be merged or exported"):
            action()
    assert not (tmp_path / "p-bundle").exists()


def test_options_that_do_nothing_are_refused(lora_run, tmp_path):
    for args, message in ((["--openvino-fp32"], "without --int8"), (["--int8", "--calibration", "10"],
                          "--calibration sets the calibration texts of --static"),
                          (["--static"], "--static is an int8 option")):
        result = CliRunner().invoke(main, ["export", str(lora_run.output), "-o", str(tmp_path / "b"), *args])
        assert result.exit_code == 2 and message in result.stderr, (args, result.output)
        assert not (tmp_path / "b").exists()


def test_plain_folder_reference_and_onnx_see_the_same_tokens(tiny_bert, tmp_path, monkeypatch):
    """A Hugging Face folder with no run record: PyTorch and ONNX both read up to 512 tokens (once the
    PyTorch reference stopped at 256 while ONNX read 512, so the parity check compared different inputs)."""
    from conftest import write_csv

    from edgeclin.tasks import SINGLE_LABEL, get_task

    rows = [(" ".join(["cough"] * 300 + ["knee"] * (20 + i)), f"LABEL_{i % 2}") for i in range(12)]
    for name in ("train", "valid", "test"):
        write_csv(tmp_path / "data" / f"{name}.csv", rows)
    strategy, lengths = get_task(SINGLE_LABEL), []
    real_encode = type(strategy).encode

    def recording(self, tokenizer, examples, label2id, fmt):
        lengths.append(fmt.max_length)
        return real_encode(self, tokenizer, examples, label2id, fmt)

    monkeypatch.setattr(type(strategy), "encode", recording)
    result = export(tiny_bert, tmp_path / "bundle", eval_data=tmp_path / "data", quiet=True)
    manifest = result.manifest
    assert manifest["max_length"] == 512 and manifest["source"]["kind"] == "model folder"
    assert len(lengths) >= 2 and set(lengths) == {512}  # the PyTorch reference and every ONNX variant
    fp32 = manifest["gate"]["variants"][0]["metrics"]
    assert fp32 == pytest.approx(manifest["gate"]["source_pytorch_fp32"], abs=1e-9)


def _graph_with_tables(folder):
    """A vocabulary (one outlier row, one zero row), a position table and a table a MatMul also reads."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    tables = {"vocab": rng.normal(size=(1200, 8)), "positions": rng.normal(size=(512, 8)),
              "tied": rng.normal(size=(1500, 8)), "w": rng.normal(size=(8, 4))}
    tables["vocab"][5] *= 40
    tables["vocab"][7] = 0
    node = helper.make_node
    nodes = [node("Gather", ["vocab", "ids"], ["e"]), node("Gather", ["positions", "ids"], ["p"]),
             node("Gather", ["tied", "ids"], ["t"]), node("Add", ["e", "p"], ["ep"]), node("Add", ["ep", "t"], ["x"]),
             node("MatMul", ["x", "w"], ["y"]), node("Transpose", ["tied"], ["tied_t"]),
             node("MatMul", ["x", "tied_t"], ["z"])]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("e", "y", "z")]
    graph = helper.make_graph(nodes, "tables", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
                              outputs, [numpy_helper.from_array(a.astype(np.float32), n) for n, a in tables.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")
    return folder / "model.onnx", tables["vocab"]


def test_embedding_rows_are_int8_each_at_its_own_scale(tmp_path):
    import onnx
    import onnxruntime as ort

    from edgeclin.quantization import DynamicInt8, int8_embedding_rows

    source, vocab = _graph_with_tables(tmp_path)
    assert int8_embedding_rows(source, tmp_path / "rows.onnx") == ["vocab"]  # positions: short; tied: a MatMul reads it
    ids = np.array([[0, 5, 7, 511, 3]])

    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})

    (e, _, _), (e_rows, _, _) = run(source), run(tmp_path / "rows.onnx")
    row_scales = np.abs(vocab[ids[0]]).max(axis=1) / 127
    assert np.all(np.abs(e_rows - e)[0].max(axis=1) <= row_scales / 2 + 1e-6)  # the outlier row 5 costs only itself
    assert not e_rows[0, 2].any()  # a zero row stays zero
    # an initializer that is also a graph input may be fed at run time: left alone
    overridable = onnx.load(str(source))
    overridable.graph.input.append(onnx.helper.make_tensor_value_info("vocab", onnx.TensorProto.FLOAT, [1200, 8]))
    onnx.save(overridable, str(tmp_path / "overridable.onnx"))
    assert int8_embedding_rows(tmp_path / "overridable.onnx", tmp_path / "overridable-rows.onnx") == []
    # the recipe: MatMul int8 by optimum, then the rows; the manifest's config names the converted tables
    config = DynamicInt8("avx2", "matmul+embeddings", True).apply(source, tmp_path / "q.onnx", None)
    assert config["embedding_rows_int8"] == ["vocab"]
    weights = {init.name for init in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    assert {"vocab_int8", "vocab_row_scale", "positions", "tied"} <= weights and "vocab" not in weights
