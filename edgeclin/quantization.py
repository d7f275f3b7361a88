"""Quantisation recipes: each a small serialisable config that turns the fp32 graph into another graph.

``export --int8`` asks every registered recipe kind which variants the options call for, and
the gate tries them in that order until one keeps the task metric. A new recipe is one class
here plus its line in ``RECIPES``.

- ``DynamicInt8``: optimum's ``ORTQuantizer`` with the CPU's ``AutoQuantizationConfig`` preset
  (avx2, avx512, avx512_vnni, arm64), per-tensor or per-channel, on one of three op sets
  (``QUANTIZE_OPS``): optimum's default (Gather too: the embedding table, half of a MiniLM's
  bytes, with one scale for the whole table); MatMul/Attention with the embedding tables stored
  int8 with one scale per row (``int8_embedding_rows``); or MatMul/Attention alone. optimum's
  serialised ``ORTConfig`` is kept in the manifest.
- ``StaticQdqInt8``: onnxruntime's calibrated static int8 (QDQ) on MatMul only; LayerNorm,
  GELU, Softmax and the residual Adds stay in float (quantising them is what makes static int8
  lose accuracy on transformers: optimum #151, onnxruntime #8770).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from edgeclin.files import read_json

MATMUL = ["MatMul", "Attention"]


@dataclass(frozen=True)
class OpSet:
    operators: list[str] | None  # optimum's operators_to_quantize; None: its default set
    embedding_rows: bool = False  # also store the embedding tables int8, one scale per row


# Tried in this order (smallest first). One scale for a whole embedding table is what optimum's
# default does; a few outlier rows then coarsen every token's vector (measured on AVX2 in
# benchmarks/README.md: one scale per row is as faithful to fp32 as leaving the table in fp32).
QUANTIZE_OPS = {
    "all": OpSet(None),
    "matmul+embeddings": OpSet(MATMUL, embedding_rows=True),
    "matmul": OpSet(MATMUL),
}
VOCABULARY_ROWS = 1000  # a Gather table this tall is a vocabulary; position tables stay fp32 (small)
DEFAULT_CALIBRATION = 300

CalibrationSource = Callable[[int], list[dict]]  # count -> batches of model inputs from training texts


class Recipe:
    kind: ClassVar[str]
    batch_independent: ClassVar[bool] = True  # False: a text's answer depends on its batch (run texts one by one)

    @property
    def label(self) -> str:
        """The name a person reads in tables and messages, e.g. "int8 dynamic avx512_vnni all per-tensor"."""
        raise NotImplementedError

    def settings(self) -> dict:
        """What the manifest records as the bundle's ``quantization``."""
        raise NotImplementedError

    def apply(self, source: Path, target: Path, calibration: CalibrationSource) -> dict:
        """Write the quantised graph of ``source`` to ``target``; return the tool's own serialised config."""
        raise NotImplementedError

    @classmethod
    def plan(cls, options, isa: str) -> list[Recipe]:
        """The variants of this kind that the export options (an ``ExportConfig``) ask for, requested first."""
        raise NotImplementedError


@dataclass(frozen=True)
class DynamicInt8(Recipe):
    kind = "dynamic"
    batch_independent = False  # activation scales are computed over the whole input tensor
    isa: str
    quantize: str = "all"
    per_channel: bool = False

    @property
    def label(self) -> str:
        return f"int8 dynamic {self.isa} {self.quantize} {'per-channel' if self.per_channel else 'per-tensor'}"

    def settings(self) -> dict:
        return {"isa": self.isa, "mode": self.kind, "quantize": self.quantize, "per_channel": self.per_channel}

    def apply(self, source: Path, target: Path, calibration: CalibrationSource) -> dict:
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        preset = getattr(AutoQuantizationConfig, self.isa)
        op_set = QUANTIZE_OPS[self.quantize]
        qconfig = preset(is_static=False, per_channel=self.per_channel, operators_to_quantize=op_set.operators)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            quantizer = ORTQuantizer.from_pretrained(source.parent, file_name=source.name)
            quantizer.quantize(save_dir=scratch, quantization_config=qconfig, file_suffix="int8")
            shutil.move(str(next(Path(scratch).glob("*int8.onnx"))), target)
            config = Path(scratch) / "ort_config.json"
            ort_config = read_json(config) if config.exists() else {}
        if op_set.embedding_rows:
            ort_config["embedding_rows_int8"] = int8_embedding_rows(target, target)
        return ort_config

    @classmethod
    def plan(cls, options, isa: str) -> list[Recipe]:
        # none is assumed safer (PITFALLS 6): the requested setting first, then the others
        order = [(options.quantize, options.per_channel)] + [(q, p) for q in QUANTIZE_OPS for p in (False, True)]
        return [cls(isa, q, p) for q, p in dict.fromkeys(order)] if options.int8 else []


@dataclass(frozen=True)
class StaticQdqInt8(Recipe):
    kind = "static"
    isa: str
    calibration: int = DEFAULT_CALIBRATION
    per_channel: bool = False

    @property
    def label(self) -> str:
        return f"int8 static QDQ MatMul ({self.calibration} calibration texts)"

    def settings(self) -> dict:
        return {"isa": self.isa, "mode": self.kind, "static": True, "calibration": self.calibration,
                "per_channel": self.per_channel}

    def apply(self, source: Path, target: Path, calibration: CalibrationSource) -> dict:
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        batches = iter(calibration(self.calibration))

        class Reader(CalibrationDataReader):
            def get_next(self):
                return next(batches, None)

        options = {"DefaultTensorType": onnx.TensorProto.FLOAT}  # a fused graph otherwise fails (optimum #85)
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul"], per_channel=self.per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, extra_options=options)
        return {"tool": "onnxruntime.quantization.quantize_static", "quant_format": "QDQ",
                "op_types_to_quantize": ["MatMul"], "activation_type": "QUInt8", "weight_type": "QInt8"}

    @classmethod
    def plan(cls, options, isa: str) -> list[Recipe]:
        if not (options.int8 and options.static):
            return []
        return [cls(isa, options.calibration or DEFAULT_CALIBRATION, options.per_channel)]


def int8_embedding_rows(source: Path, target: Path) -> list[str]:
    """Store each vocabulary table that only Gathers read as int8 with one fp32 scale per row.

    ``Gather(table, ids)`` becomes ``Cast(Gather(table_q, ids)) * Gather(scales, ids)``: the same
    rows, dequantised after the lookup, so only the looked-up rows cost anything at run time.
    Symmetric (scale = max |row| / 127). Returns the names of the tables it converted.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    tables = _vocabulary_tables(graph)
    for name, init in tables.items():
        rows = numpy_helper.to_array(init)
        scales = np.abs(rows).max(axis=1, keepdims=True) / 127.0
        scales[scales == 0] = 1.0  # an all-zero row (an unused token) stays zero
        graph.initializer.remove(init)
        graph.initializer.extend([
            numpy_helper.from_array(np.clip(np.round(rows / scales), -127, 127).astype(np.int8), f"{name}_int8"),
            numpy_helper.from_array(scales.astype(np.float32), f"{name}_row_scale")])
    nodes = []
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in tables:
            table, ids, out = node.input[0], node.input[1], node.output[0]
            nodes += [helper.make_node("Gather", [f"{table}_int8", ids], [f"{out}_int8"], axis=0),
                      helper.make_node("Cast", [f"{out}_int8"], [f"{out}_unscaled"], to=TensorProto.FLOAT),
                      helper.make_node("Gather", [f"{table}_row_scale", ids], [f"{out}_row_scale"], axis=0),
                      helper.make_node("Mul", [f"{out}_unscaled", f"{out}_row_scale"], [out])]
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(target))
    return sorted(tables)


def _vocabulary_tables(graph) -> dict:
    """The 2-D fp32 initializers of at least VOCABULARY_ROWS rows that only row lookups read, by name."""
    from onnx import TensorProto

    readers: dict[str, list] = {name.name: [None] for name in graph.input}  # a graph input can be overridden
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return {init.name: init for init in graph.initializer
            if init.data_type == TensorProto.FLOAT and len(init.dims) == 2 and init.dims[0] >= VOCABULARY_ROWS
            and readers.get(init.name) and all(_gathers_rows(node, init.name) for node in readers[init.name])}


def _gathers_rows(node, table: str) -> bool:
    """Is ``node`` a row lookup (Gather on axis 0) in ``table``? (None stands for a graph input.)"""
    if node is None or node.op_type != "Gather" or node.input[0] != table:
        return False
    return all(attr.i == 0 for attr in node.attribute if attr.name == "axis")


RECIPES: dict[str, type[Recipe]] = {"static": StaticQdqInt8, "dynamic": DynamicInt8}  # tried in this order


def plan_recipes(options, isa: str) -> list[Recipe]:
    """Every recipe the export options ask for, in the order the gate tries them."""
    return [recipe for kind in RECIPES.values() for recipe in kind.plan(options, isa)]
