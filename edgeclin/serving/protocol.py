"""The wire formats: the plain JSON API (v1) and the Open Inference Protocol v2, in and out.

Requests are parsed here, not by FastAPI, so that every refusal is one clear line that names
the field (``texts[3]: Input should be a valid string``) and never echoes the note; both APIs
answer errors as ``{"error": "..."}``, the form the v2 protocol specifies. The pydantic models
also document both APIs at ``/docs``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from edgeclin.schema import Example
from edgeclin.serving.registry import ServedModel

MAX_REPORTED = 3  # validation errors named in one message


class ApiError(Exception):
    """A request refused with an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# --- v1: {"texts": [...], "pairs": [...]} --------------------------------------------------------

class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"texts": ["Chest pain radiating to the left arm, troponin raised."]}]})

    texts: list[StrictStr] = Field(min_length=1, description="The notes, one per row of the answer.")
    pairs: list[StrictStr] | None = Field(None, description="Sentence-pair models only: a second text per text.")


class PredictResponse(BaseModel):
    model: str
    model_version: str = Field(description="The first 12 hex digits of the bundle digest.")
    rows: list[dict[str, Any]] = Field(description="The rows `edgeclin predict` writes, one per text, in order.")


# --- v2: the Open Inference Protocol (KServe, Triton, OpenVINO Model Server) ---------------------

class InferInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(description="text, or text_pair for sentence-pair models.")
    shape: list[StrictInt]
    datatype: StrictStr = Field(description="BYTES (UTF-8 strings in JSON).")
    data: list[Any]
    parameters: dict[str, Any] | None = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StrictStr
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                     "data": ["Chest pain radiating to the left arm, troponin raised."]}]}]})

    id: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]


class ErrorResponse(BaseModel):
    error: str


# --- parsing -------------------------------------------------------------------------------------

def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(422, "body: not UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise ApiError(422, f"body: invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})") from None


def field_name(location: tuple) -> str:
    """pydantic's error location as a path: ("inputs", 0, "data") -> "inputs[0].data"."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def validated(schema: type[BaseModel], data: Any) -> Any:
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        # only the location and pydantic's message: the offending value may be a note
        errors = exc.errors(include_url=False, include_input=False)
        shown = "; ".join(f"{field_name(e['loc'])}: {e['msg']}" for e in errors[:MAX_REPORTED])
        more = f" (and {len(errors) - MAX_REPORTED} more)" if len(errors) > MAX_REPORTED else ""
        raise ApiError(422, shown + more) from None


def examples_of(model: ServedModel, texts: list[str], pairs: list[str] | None, max_texts: int, *,
                texts_field: str = "texts", pairs_field: str = "pairs") -> list[Example]:
    """The examples of one request, checked against the model and the per-request limit."""
    if len(texts) > max_texts:
        raise ApiError(413, f"{texts_field}: {len(texts)} texts in one request; the limit is {max_texts} "
                       "(--max-texts)")
    _check_texts(texts, texts_field)
    if model.takes_pairs and pairs is None:
        raise ApiError(422, f"{pairs_field}: model {model.name} classifies text pairs: give one for every text")
    if not model.takes_pairs and pairs is not None:
        raise ApiError(422, f"{pairs_field}: model {model.name} classifies single texts, not pairs")
    if pairs is not None:
        if len(pairs) != len(texts):
            raise ApiError(422, f"{pairs_field}: {len(pairs)} pairs for {len(texts)} texts")
        _check_texts(pairs, pairs_field)
    return [Example(text=text, label="", text_pair=pairs[i] if pairs is not None else None)
            for i, text in enumerate(texts)]


def _check_texts(texts: list[str], where: str) -> None:
    for i, text in enumerate(texts):
        if not text.strip():
            raise ApiError(422, f"{where}[{i}]: empty text")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape (\ud800) in the JSON
            raise ApiError(422, f"{where}[{i}]: not valid Unicode (a lone surrogate)") from None


def v2_texts(model: ServedModel, request: InferRequest) -> tuple[list[str], list[str] | None]:
    """The ``text`` (and ``text_pair``) input tensors of a v2 request, as lists of strings."""
    known = ("text", "text_pair") if model.takes_pairs else ("text",)
    found: dict[str, list[str]] = {}
    for i, tensor in enumerate(request.inputs):
        where = f"inputs[{i}]"
        if tensor.name not in known:
            raise ApiError(422, f"{where}.name: unknown input {tensor.name!r} (model {model.name} takes "
                           f"{', '.join(known)})")
        if tensor.name in found:
            raise ApiError(422, f"{where}.name: input {tensor.name!r} given twice")
        if tensor.datatype != "BYTES":
            raise ApiError(422, f"{where}.datatype: must be BYTES (texts), not {tensor.datatype!r}")
        found[tensor.name] = _strings(tensor, where)
    if "text" not in found:
        raise ApiError(422, "inputs: no input named 'text'")
    return found["text"], found.get("text_pair")


def _strings(tensor: InferInput, where: str) -> list[str]:
    """A BYTES tensor's data, flat or nested as its shape ([n] or [n, 1]), as strings."""
    flat: list[Any] = []
    for item in tensor.data:
        flat.extend(item if isinstance(item, list) else [item])
    for j, item in enumerate(flat):
        if not isinstance(item, str):
            raise ApiError(422, f"{where}.data[{j}]: must be a string")
    if any(d < 0 for d in tensor.shape) or math.prod(tensor.shape) != len(flat):
        raise ApiError(422, f"{where}.shape: {tensor.shape} does not hold the {len(flat)} elements of data")
    if not flat:
        raise ApiError(422, f"{where}.data: no texts")
    return flat


# --- answers -------------------------------------------------------------------------------------

def v2_outputs(model: ServedModel, rows: list[dict], requested: list[RequestedOutput] | None) -> list[dict]:
    """The output tensors of a v2 answer: label and probabilities, or entities (JSON per text) for NER."""
    if model.is_ner:
        outputs = {"entities": {"name": "entities", "shape": [len(rows)], "datatype": "BYTES",
                                "data": [json.dumps(row["entities"], ensure_ascii=False) for row in rows]}}
    else:
        labels = model.predictor.labels
        outputs = {"label": {"name": "label", "shape": [len(rows)], "datatype": "BYTES",
                             "data": [row["label"] for row in rows]},
                   "probabilities": {"name": "probabilities", "shape": [len(rows), len(labels)], "datatype": "FP32",
                                     "data": [row[f"p_{label}"] for row in rows for label in labels]}}
    if not requested:
        return list(outputs.values())
    for i, output in enumerate(requested):
        if output.name not in outputs:
            raise ApiError(422, f"outputs[{i}].name: unknown output {output.name!r} ({', '.join(outputs)})")
    return [outputs[output.name] for output in requested]


def check_outputs(model: ServedModel, requested: list[RequestedOutput] | None) -> None:
    """Refuse unknown requested outputs before the texts are queued."""
    v2_outputs(model, [], requested)
