"""The messages between HTTP front-end processes and the engine process (`--api-workers N`).

Every message is a ZeroMQ multipart message: a msgpack header, then raw buffers. Token rows
travel as two int32 buffers (row lengths, all tokens concatenated) for every request a
front-end sends in one event-loop turn; results come back the same way, one message per
turn of the engine's loop — one hand-over per batch of requests, not per request.

    front-end → engine   hello | rows (many requests) | items (one multimodal job) | cancel
    engine → front-end   models (answer to hello) | done (many results) | status (heartbeat)

Library errors cross as (class name, message, attributes) and are rebuilt as the same class,
so the front-end's one error mapping answers exactly as a single process would. No pickle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from jaxembed import errors as library_errors
from jaxembed.engine.inputs.text import InputsSpec
from jaxembed.engine.request.jobs import AdapterRef, EmbedItem, EmbedJob, EmbedOptions
from jaxembed.engine.service.backend import EngineFacts, EngineStatus, RowOptions
from jaxembed.errors import EngineError, JaxEmbedError

HELLO, ROWS, ITEMS, CANCEL = "hello", "rows", "items", "cancel"
MODELS, DONE, STATUS = "models", "done", "status"


def pack(header: dict[str, Any], *buffers: bytes | memoryview) -> list:
    return [msgpack.packb(header, use_bin_type=True), *buffers]


def unpack(frames: Sequence[bytes]) -> tuple[dict[str, Any], list[bytes]]:
    return msgpack.unpackb(frames[0], raw=False), list(frames[1:])


# -- model descriptions (the answer to hello) ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ModelDescription:
    """What a front-end needs to serve one model without loading it."""

    names: tuple[str, ...]
    inputs: InputsSpec
    facts: EngineFacts

    def to_wire(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "inputs": dataclasses.asdict(self.inputs),
            "facts": dataclasses.asdict(self.facts),
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ModelDescription:
        inputs = data["inputs"]
        facts = data["facts"]
        return cls(
            names=tuple(data["names"]),
            inputs=InputsSpec(**{**inputs, "token_types": tuple(inputs["token_types"])}),
            facts=EngineFacts(**{**facts, "calibration_key": tuple(facts["calibration_key"])}),
        )


# -- rows -------------------------------------------------------------------------------------


def row_options_to_wire(o: RowOptions) -> list:
    adapter = o.adapter
    return [
        o.priority,
        None if adapter is None else adapter.name,
        None if adapter is None or adapter.path is None else str(adapter.path),
        o.deadline,
    ]


def row_options_from_wire(data: list) -> RowOptions:
    priority, name, path, deadline = data
    return RowOptions(priority, None if name is None else AdapterRef(name, path), deadline)


def join_rows(requests: Sequence[Sequence[np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Every request's rows as (lengths int32, tokens int32), all requests back to back."""
    rows = [r for request in requests for r in request]
    lengths = np.fromiter(map(len, rows), np.int32, len(rows))
    tokens = np.concatenate(rows).astype(np.int32, copy=False) if rows else np.zeros(0, np.int32)
    return lengths, tokens


def split_rows(lengths: bytes, tokens: bytes, counts: Sequence[int]) -> list[list[np.ndarray]]:
    """`join_rows` undone: per request (of `counts` rows each) its rows, as views."""
    sizes = np.frombuffer(lengths, np.int32)
    flat = np.frombuffer(tokens, np.int32)
    rows = np.split(flat, np.cumsum(sizes)[:-1]) if len(sizes) else []
    out, start = [], 0
    for count in counts:
        out.append(rows[start : start + count])
        start += count
    return out


# -- multimodal jobs ----------------------------------------------------------------------------


def job_to_wire(job: EmbedJob) -> dict[str, Any]:
    options = dataclasses.asdict(job.options)
    inputs = job.inputs
    if job.multimodal:
        inputs = [
            {"text": item.text, "image": _media(item.image), "video": _media(item.video)}
            for item in inputs
        ]
    elif not isinstance(inputs, str):
        inputs = [x if isinstance(x, str) else list(map(int, x)) for x in inputs]
    return {"inputs": inputs, "multimodal": job.multimodal, "options": options}


def _media(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes | bytearray):
        return value
    raise TypeError("only encoded media (bytes) cross to the engine process")


def job_from_wire(data: dict[str, Any]) -> EmbedJob:
    options = dict(data["options"])
    if options.get("adapter") is not None:
        options["adapter"] = AdapterRef(**options["adapter"])
    inputs = data["inputs"]
    if data["multimodal"]:
        inputs = [EmbedItem(**item) for item in inputs]
    return EmbedJob(inputs, EmbedOptions(**options))


# -- results and errors ---------------------------------------------------------------------------


def error_to_wire(error: BaseException) -> dict[str, Any]:
    if not isinstance(error, JaxEmbedError):
        error = EngineError(f"the engine failed: {type(error).__name__}")
    attrs = {
        k: v for k, v in vars(error).items() if isinstance(v, str | int | float | bool | type(None))
    }
    return {"class": type(error).__name__, "message": str(error), "attrs": attrs}


def _library_error_classes() -> dict[str, type[JaxEmbedError]]:
    found, todo = {}, [JaxEmbedError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def error_from_wire(data: dict[str, Any]) -> JaxEmbedError:
    """The same class with the same message and fields (constructors are bypassed: their
    signatures differ, the attributes are what the error mapping reads)."""
    cls = _library_error_classes().get(data["class"])
    if cls is None or not issubclass(cls, library_errors.JaxEmbedError):
        return EngineError(data["message"])
    error = cls.__new__(cls)
    Exception.__init__(error, data["message"])
    for key, value in data["attrs"].items():
        setattr(error, key, value)
    return error


def status_to_wire(status: EngineStatus) -> list:
    return list(dataclasses.astuple(status))


def status_from_wire(data: list) -> EngineStatus:
    *fields, adapters = data
    return EngineStatus(*fields, adapters=tuple(adapters))
