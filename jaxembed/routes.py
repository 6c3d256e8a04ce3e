"""sentence-transformers `Router` models: several module paths in one directory, one per input
kind — e.g. a cheap query side (a static or sparse-static table) and a transformer for
documents — chosen per `encode` call by its task (`encode_query`: "query",
`encode_document`: "document") and the input's modality.

Files (sentence-transformers 5.x/6.x): `modules.json` lists the Router (usually at the root)
and any modules after it (a Normalize applied to every route); `router_config.json` names
each route's modules (`structure`), their types, and the routing `parameters`
(`default_route`, `route_mappings` keyed by the string form of a (task, modality) tuple);
each module lives in a folder named after its id, e.g. `query_0_SparseStaticEmbedding/`,
`document_0_MLMTransformer/`, `document_1_SpladePooling/`.

jaxembed serves each route as its own model (a route view: the first module's folder holds
the weights and tokenizer; the later modules and the tail are found relative to it) and
picks one per request from its input type, as sentence-transformers picks one per call.
Plain data and files, no JAX.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxembed.card import ModelCard, card_from_model_dir, st_meta_fields
from jaxembed.errors import InvalidInputError, ModelLoadError
from jaxembed.static_layout import sparse_static_hf_config, static_hf_config

ROUTER_CONFIG = "router_config.json"
# The modality of every request a text route serves.
TEXT = "text"
# The input types that set sentence-transformers' task (encode_query / encode_document).
ROUTED_TASKS = ("query", "document")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path} is not readable JSON: {e}") from None


@dataclasses.dataclass(frozen=True)
class RouteModule:
    type: str  # the saved class path, e.g. ...sparse_static_embedding.SparseStaticEmbedding
    path: str  # relative to the model directory

    @property
    def kind(self) -> str:
        return self.type.rsplit(".", 1)[-1]


@dataclasses.dataclass(frozen=True)
class RouterLayout:
    model_dir: Path
    routes: Mapping[str, tuple[RouteModule, ...]]  # route name → its modules, in order
    tail: tuple[RouteModule, ...]  # modules after the Router, applied to every route
    default_route: str | None
    mappings: Mapping[tuple[str | None, str | None], str]  # (task, modality) → route

    @property
    def route_names(self) -> tuple[str, ...]:
        return tuple(self.routes)

    def route_for(self, input_type: str | None) -> str:
        """The route sentence-transformers takes for an `encode_query` ("query"), an
        `encode_document` ("document") or a plain `encode` (None, or any other prompt) of
        texts: the (task, modality) mappings, then a route named after the task, then the
        default route. A task no route serves is refused, as sentence-transformers does."""
        task = input_type if input_type in ROUTED_TASKS else None
        for key in ((task, TEXT), (task, None), (None, TEXT), (None, None)):
            if key in self.mappings:
                return self.mappings[key]
        if task in self.routes:
            return task
        if task is not None or self.default_route is None:
            raise InvalidInputError(
                f"{self.model_dir.name} is a Router model with routes {list(self.routes)}; "
                f"none serves input_type {input_type!r}",
                param="input_type",
            )
        return self.default_route

    def view_modules(self, route: str) -> list[dict[str, str]]:
        """`modules.json` entries of one route as seen from its first module's folder: that
        module at "", the others (and the tail) by paths relative to it."""
        first, *rest = self.routes[route]
        up = "../" * len(Path(first.path).parts)
        return [
            {"type": first.type, "path": ""},
            *({"type": m.type, "path": f"{up}{m.path}" if m.path else up} for m in rest),
            *({"type": m.type, "path": f"{up}{m.path}" if m.path else up} for m in self.tail),
        ]

    def weights_dir(self, route: str) -> Path:
        return self.model_dir / self.routes[route][0].path


def _route_mappings(raw: Any) -> dict[tuple[str | None, str | None], str]:
    mappings = {}
    for key, route in (raw or {}).items():
        try:
            task, modality = ast.literal_eval(key)
        except (ValueError, SyntaxError, TypeError):
            raise ModelLoadError(
                f"router route_mappings key {key!r} is not a (task, modality)"
            ) from None
        mappings[(task, modality if not isinstance(modality, list) else tuple(modality))] = route
    return mappings


def read_router(model_dir: Path) -> RouterLayout | None:
    """The Router layout of `model_dir`, or None if its modules.json has no Router."""
    modules_path = model_dir / "modules.json"
    if not model_dir.is_dir() or not modules_path.is_file():
        return None
    modules = _read(modules_path)
    if not isinstance(modules, list):
        return None
    index = next(
        (
            i
            for i, m in enumerate(modules)
            if isinstance(m, dict) and str(m.get("type", "")).rsplit(".", 1)[-1] == "Router"
        ),
        None,
    )
    if index is None:
        return None
    if index != 0:
        raise ModelLoadError(f"{model_dir}: a Router after other modules is not supported")
    router_dir = model_dir / str(modules[0].get("path", ""))
    config = _read(router_dir / ROUTER_CONFIG)
    types, structure = config.get("types") or {}, config.get("structure") or {}
    prefix = Path(str(modules[0].get("path", "")))
    routes = {}
    for name, ids in structure.items():
        missing = [i for i in ids if i not in types]
        if missing or not ids:
            raise ModelLoadError(f"{model_dir}: route {name!r} names unknown modules {missing}")
        routes[name] = tuple(RouteModule(types[i], str(prefix / i)) for i in ids)
    params = config.get("parameters") or {}
    default = params.get("default_route")
    if default is None and params.get("allow_empty_key", True) and routes:
        default = next(iter(routes))
    tail = tuple(
        RouteModule(str(m.get("type", "")), str(m.get("path", "")))
        for m in modules[1:]
        if isinstance(m, dict)
    )
    return RouterLayout(
        model_dir, routes, tail, default, _route_mappings(params.get("route_mappings"))
    )


def check_route(layout: RouterLayout, route: str | None) -> str:
    """`route` (a name of the layout's), or a load error that lists them."""
    if route not in layout.routes:
        what = "" if route is None else f"route {route!r} is not one of them; "
        raise ModelLoadError(
            f"{layout.model_dir} is a sentence-transformers Router model with routes "
            f"{list(layout.routes)}: {what}load one with `route=` (the server loads every "
            "route and picks one per request by its input type)"
        )
    return route


def route_view(layout: RouterLayout, route: str) -> tuple[Path, ModelCard, dict[str, Any]]:
    """(weights directory, card, architecture config) of one route, as a model of its own:
    named after the Router model, with the model-wide prompts and similarity."""
    weights_dir = layout.weights_dir(route)
    kind = layout.routes[route][0].kind
    if kind == "SparseStaticEmbedding":
        hf_config = sparse_static_hf_config(weights_dir)
    elif kind == "StaticEmbedding":
        hf_config = static_hf_config(weights_dir)
    else:
        hf_config = _read(weights_dir / "config.json")
    card = card_from_model_dir(weights_dir, hf_config, modules=layout.view_modules(route))
    card = card.replace(
        name=layout.model_dir.resolve().name.lower(), **st_meta_fields(layout.model_dir)
    )
    return weights_dir, card, hf_config


def route_of(spec: str | Path | None, input_type: str | None) -> str | None:
    """The route a sentence-transformers Router model at `spec` takes for `input_type`
    (query, document; None: its default route), or None when `spec` is no Router model."""
    path = Path(spec).expanduser() if spec else None
    layout = read_router(path) if path is not None else None
    return layout.route_for(input_type) if layout is not None else None
