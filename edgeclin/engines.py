"""The engines that run a bundle's ONNX graphs, behind one registry (torch-free).

A backend says whether it is installed here, which (graph, precision) candidates of a bundle
it can run on a given CPU, and builds the engine for one of them. Choosing a backend
(``runtime.resolve_backend``), export's measurement, bench's plan and the CLI's choices all
iterate over ``BACKENDS``: adding a backend is one class here plus its line in ``BACKENDS``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from edgeclin.errors import EdgeclinError
from edgeclin.hardware import CpuFeatures, cpu_features

MODEL_FILE = "model.onnx"  # the bundle's main graph (int8 when exported with --int8)
FP32_MODEL_FILE = "model.fp32.onnx"  # optional: the fp32 graph, for bf16 engines on AMX CPUs


@dataclass(frozen=True)
class Candidate:
    """One way to run a bundle: a backend, the graph file it reads, the precision it computes in."""

    backend: str
    model: str
    precision: str  # fp32 | bf16 | int8

    def as_dict(self) -> dict:
        return asdict(self)


class Engine(Protocol):
    input_names: list[str]
    output_name: str
    output_shape: list
    precision: str

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray: ...


class Backend:
    name: ClassVar[str]
    install_hint: ClassVar[str] = ""

    def available(self) -> bool:
        return True

    def candidates(self, graphs: dict[str, str], cpu: CpuFeatures) -> list[Candidate]:
        """What this backend can run of a bundle whose graph files have these precisions (file -> fp32|int8)."""
        raise NotImplementedError

    def engine(self, model_path: Path, precision: str, threads: int | None = None, device: str = "cpu") -> Engine:
        raise NotImplementedError

    def require(self) -> None:
        if not self.available():
            raise EdgeclinError(f"backend {self.name} needs the {self.name} package ({self.install_hint})")


class OnnxRuntimeEngine:
    """Runs an ONNX file with onnxruntime's CPU (or CUDA) execution provider."""

    def __init__(self, model_path: Path, precision: str, threads: int | None = None, device: str = "cpu") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EdgeclinError(f"{model_path}: onnxruntime cannot load it: {exc}") from None
        self.precision = precision
        self.input_names = [i.name for i in self.session.get_inputs()]
        output = self.session.get_outputs()[0]
        self.output_name, self.output_shape = output.name, list(output.shape or [])

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output_name], feed)[0]


class OnnxRuntime(Backend):
    """Runs everywhere: the bundle's main graph as it is."""

    name = "onnxruntime"

    def candidates(self, graphs: dict[str, str], cpu: CpuFeatures) -> list[Candidate]:
        return [Candidate(self.name, MODEL_FILE, graphs[MODEL_FILE])] if MODEL_FILE in graphs else []

    def engine(self, model_path: Path, precision: str, threads: int | None = None, device: str = "cpu") -> Engine:
        return OnnxRuntimeEngine(model_path, precision, threads, device)


class OpenVinoEngine:
    """Runs an ONNX file with OpenVINO on the CPU, with the given inference precision hint."""

    def __init__(self, model_path: Path, precision: str, hint: str, threads: int | None = None) -> None:
        import openvino as ov

        core = ov.Core()
        # No CPU pinning: OpenVINO pins its threads from core 0, so several one-thread processes
        # (Spark workers, a bench beside a server) would all share core 0 (measured: 74.5 vs 140 notes/s).
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = core.compile_model(core.read_model(str(model_path)), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise EdgeclinError(f"{model_path}: OpenVINO cannot load it: {str(exc).splitlines()[0]}") from None
        self.precision = precision
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        output = self.compiled.outputs[0]
        self.output_name = output.get_any_name()
        self.output_shape = [d.get_length() if d.is_static else None for d in output.get_partial_shape()]
        self.request = self.compiled.create_infer_request()

    def __call__(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        result = self.request.infer(feed)
        return next(iter(result.values())).copy()


class OpenVino(Backend):
    """Optional (``pip install openvino``): bf16 on CPUs with native bf16 (AMX, AVX512-BF16)."""

    name = "openvino"
    install_hint = "pip install openvino"

    def available(self) -> bool:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return False
        return True

    def candidates(self, graphs: dict[str, str], cpu: CpuFeatures) -> list[Candidate]:
        float_precision = "bf16" if cpu.native_bf16 else "fp32"
        return [Candidate(self.name, file, "int8" if precision == "int8" else float_precision)
                for file, precision in graphs.items()]

    def engine(self, model_path: Path, precision: str, threads: int | None = None, device: str = "cpu") -> Engine:
        self.require()
        if device != "cpu":
            raise EdgeclinError("the openvino backend runs on the CPU only")
        # int8 graphs keep their int8 ops; everything else computes in bf16 where the CPU has it
        float_hint = "bf16" if precision == "bf16" or (precision == "int8" and cpu_features().native_bf16) else "f32"
        return OpenVinoEngine(model_path, precision, float_hint, threads)


BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (OnnxRuntime(), OpenVino())}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise EdgeclinError(f"unknown backend {name!r} (choose from auto, {', '.join(BACKENDS)})") from None


def candidates(graphs: dict[str, str], cpu: CpuFeatures | None = None, *,
               installed_only: bool = True) -> list[Candidate]:
    """Every (backend, graph, precision) that can run a bundle with these graphs, in registry order."""
    cpu = cpu or cpu_features()
    return [c for backend in BACKENDS.values() if backend.available() or not installed_only
            for c in backend.candidates(graphs, cpu)]
