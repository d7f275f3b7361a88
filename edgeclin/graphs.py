"""Graphs a bundle carries for engines other than onnxruntime's int8 ``model.onnx``.

Each is built from the fp32 ONNX graph at export, scored with the task metric on the gate's
examples by its own engine (on the exporting CPU, fast there or not), and carried only if it
passes; the runtime then picks among the carried engines by speed on the CPU it runs on.

- ``OpenVinoIR`` (default with ``--int8`` when OpenVINO and NNCF are installed): an OpenVINO IR
  (``model.xml`` + ``model.bin``) whose weights NNCF compressed to int8 (``compress_weights``,
  INT8_ASYM), computing in bf16 on CPUs with native bf16 (AMX, AVX512-BF16), f32 elsewhere: bf16
  speed from about a quarter of the fp32 graph's bytes.
- ``Fp32Onnx`` (``--keep-fp32``): the fp32 ONNX graph itself (``model.fp32.onnx``).

A new graph is one class here and its line in ``GRAPHS``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from edgeclin.engines import FP32_MODEL_FILE

IR_FILE = "model.xml"


class ExtraGraph:
    name: ClassVar[str]  # as tables show it
    file: ClassVar[str]  # the file an engine reads
    files: ClassVar[tuple[str, ...]]  # every file it needs (all copied and checksummed)
    weights: ClassVar[str]  # the precision of its weights: fp32 | int8

    def wanted(self, options) -> bool:
        """Do the export options (an ``ExportConfig``) ask for this graph?"""
        raise NotImplementedError

    def available(self) -> bool:
        return True

    def build(self, fp32_onnx: Path, folder: Path) -> dict:
        """Write the graph's files into ``folder``; return its settings for the manifest."""
        raise NotImplementedError


@dataclass(frozen=True)
class OpenVinoIR(ExtraGraph):
    name = "openvino IR, int8 weights"
    file = IR_FILE
    files = (IR_FILE, "model.bin")
    weights = "int8"

    def wanted(self, options) -> bool:
        return options.int8 and options.ir

    def available(self) -> bool:
        try:
            import nncf  # noqa: F401
            import openvino  # noqa: F401
        except ImportError:
            return False
        return True

    def build(self, fp32_onnx: Path, folder: Path) -> dict:
        import nncf
        import openvino as ov

        from edgeclin.logs import get_logger

        nncf_logger = nncf.common.logging.nncf_logger  # NNCF's progress and notes: nothing a user acts on
        nncf_logger.setLevel("ERROR")
        get_logger(__name__).debug(f"compressing the weights of {fp32_onnx.name} to int8 for OpenVINO")
        model = nncf.compress_weights(ov.Core().read_model(str(fp32_onnx)), mode=nncf.CompressWeightsMode.INT8_ASYM)
        ov.save_model(model, str(folder / IR_FILE), compress_to_fp16=False)
        return {"tool": "nncf.compress_weights", "mode": "INT8_ASYM", "nncf": nncf.__version__,
                "openvino": ov.__version__}


@dataclass(frozen=True)
class Fp32Onnx(ExtraGraph):
    name = "onnx fp32 (carried)"
    file = FP32_MODEL_FILE
    files = (FP32_MODEL_FILE,)
    weights = "fp32"

    def wanted(self, options) -> bool:
        return options.int8 and options.keep_fp32

    def build(self, fp32_onnx: Path, folder: Path) -> dict:
        shutil.copyfile(fp32_onnx, folder / FP32_MODEL_FILE)
        return {}


GRAPHS: dict[str, ExtraGraph] = {g.file: g for g in (OpenVinoIR(), Fp32Onnx())}


def planned_graphs(options) -> list[ExtraGraph]:
    """The extra graphs these export options ask for and this machine can build."""
    return [g for g in GRAPHS.values() if g.wanted(options) and g.available()]
