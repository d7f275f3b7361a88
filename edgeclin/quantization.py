"""Quantisation recipes: each a small serialisable config that turns the fp32 graph into another graph.

``export --int8`` asks every registered recipe kind which variants the options call for, and
the gate tries them in that order until one keeps the task metric. A new recipe is one class
here plus its line in ``RECIPES``.

- ``DynamicInt8``: optimum's ``ORTQuantizer`` with the CPU's ``AutoQuantizationConfig`` preset
  (avx2, avx512, avx512_vnni, arm64), on optimum's default op set (Gather too: the embedding
  table, half of a MiniLM's bytes) or MatMul/Attention only, per-tensor or per-channel;
  optimum's serialised ``ORTConfig`` is kept in the manifest.
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

QUANTIZE_OPS = {
    "all": None,  # optimum's default dynamic op set: Gather (the embeddings) too
    "matmul": ["MatMul", "Attention"],
}
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
        qconfig = preset(is_static=False, per_channel=self.per_channel,
                         operators_to_quantize=QUANTIZE_OPS[self.quantize])
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            quantizer = ORTQuantizer.from_pretrained(source.parent, file_name=source.name)
            quantizer.quantize(save_dir=scratch, quantization_config=qconfig, file_suffix="int8")
            shutil.move(str(next(Path(scratch).glob("*int8.onnx"))), target)
            config = Path(scratch) / "ort_config.json"
            return read_json(config) if config.exists() else {}

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


RECIPES: dict[str, type[Recipe]] = {"static": StaticQdqInt8, "dynamic": DynamicInt8}  # tried in this order


def plan_recipes(options, isa: str) -> list[Recipe]:
    """Every recipe the export options ask for, in the order the gate tries them."""
    return [recipe for kind in RECIPES.values() for recipe in kind.plan(options, isa)]
