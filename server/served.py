"""The models behind one server: their services, the names clients use, and request routing.

A request's `model` picks the model (any of its served names; `name:adapter`
picks a LoRA adapter of it); no `model` means the first model configured.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from jaxembed.engine.request.jobs import AdapterRef
from jaxembed.engine.service.embedding import EmbeddingService
from jaxembed.engine.service.routed import RoutedService
from jaxembed.routes import read_router
from jaxembed_server.adapters import AdapterResolver
from jaxembed_server.errors import invalid, model_not_found
from jaxembed_server.model_config import ModelConfig


@dataclasses.dataclass
class ServedModel:
    config: ModelConfig
    service: EmbeddingService | RoutedService
    names: tuple[str, ...]  # names clients may send, the canonical one first
    resolver: AdapterResolver | None  # None: LoRA is off for this model

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def card(self):
        return self.service.card

    @classmethod
    def build(
        cls,
        config: ModelConfig,
        service: EmbeddingService | RoutedService,
        names: tuple[str, ...] | None = None,
    ) -> ServedModel:
        if config.chat_template is not None:
            service.inputs.use_chat_template(config.chat_template)
        resolver = None
        if config.lora_enabled:
            resolver = AdapterResolver(
                {name: Path(path) for name, path in config.lora},
                Path(config.lora_root) if config.lora_root else None,
            )
        return cls(config, service, names or config.names(service.card.names), resolver)

    def adapters(self) -> list[str]:
        """Adapters a client can name now: the preloaded ones and those resident."""
        if self.resolver is None:
            return list(self.card.tasks)  # built-in task adapters need no --lora
        resident = self.service.status().adapters
        return list(dict.fromkeys([*self.resolver.preloaded, *resident]))


@dataclasses.dataclass(frozen=True)
class Route:
    model: ServedModel
    answer: str  # the `model` value of the response: what the client asked for
    adapter: AdapterRef | None


class ServedModels:
    def __init__(self, models: Sequence[ServedModel]):
        if not models:
            raise ValueError("a server needs at least one model")
        self.models = list(models)
        self._by_name: dict[str, ServedModel] = {}
        for model in self.models:
            for name in model.names:
                if name in self._by_name:
                    raise ValueError(
                        f"the served name {name!r} is given to two models "
                        f"({self._by_name[name].config.spec} and {model.config.spec}); "
                        "name them with --model NAME=SPEC or `name:` in --config"
                    )
                self._by_name[name] = model

    def __iter__(self):
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    @property
    def services(self) -> list[EmbeddingService]:
        return [m.service for m in self.models]

    def of_kind(self, kind: str) -> list[ServedModel]:
        return [m for m in self.models if m.card.kind == kind]

    def _check_kind(self, model: ServedModel, requested: str | None, kind: str | None) -> None:
        """A route for one kind of model (embedding / reranker) refuses the other kind."""
        if kind is None or model.card.kind == kind:
            return
        others = [m.name for m in self.of_kind(kind)]
        does = {"reranker": "rerank", "embedding": "embed"}[kind]
        what = f"{requested} is {'a reranker' if model.card.kind == 'reranker' else 'an embedding model'}"
        raise invalid(
            f"{what}; the models here that {does}: {others or 'none'}"
            if requested
            else f"this server serves no model that can {does} (models: {self.names})",
            param="model",
            code="wrong_model_kind",
        )

    def find(
        self, requested: str | None, kind: str | None = None
    ) -> tuple[ServedModel, str, str | None]:
        """(model, name to answer with, adapter named by `base:adapter` or None).

        `kind`: the route serves only models of this kind; without `model` it takes
        the first one configured."""
        if requested is None:
            default = next(iter(self.of_kind(kind)), self.models[0]) if kind else self.models[0]
            self._check_kind(default, None, kind)
            return default, default.name, None
        if requested in self._by_name:
            self._check_kind(self._by_name[requested], requested, kind)
            return self._by_name[requested], requested, None
        base, sep, adapter = requested.partition(":")
        if sep and base in self._by_name:
            model = self._by_name[base]
            if adapter in model.card.tasks:  # a built-in task adapter (engine/tasks.py)
                self._check_kind(model, requested, kind)
                return model, requested, adapter
            if model.resolver is None:
                raise invalid(
                    f"LoRA is not enabled for {base} on this server",
                    param="model",
                    code="lora_not_enabled",
                )
            return model, requested, adapter
        raise model_not_found(requested, self.names)

    def route(
        self, requested: str | None, lora_path: str | None, kind: str | None = "embedding"
    ) -> Route:
        """The model, answer name and (resolved) LoRA adapter a request names; `kind`: what
        the route does (None: any model, e.g. /tokenize)."""
        model, answer, spec = self.find(requested, kind)
        param = "model"
        if lora_path is not None:
            if model.resolver is None:
                raise invalid(
                    "LoRA is not enabled on this server", param="lora_path", code="lora_not_enabled"
                )
            if spec is not None and spec != lora_path:
                raise invalid("model names one adapter and lora_path another", param="lora_path")
            spec, param = lora_path, "lora_path"
        if spec is None:
            return Route(model, answer, None)
        if spec in model.card.tasks and param == "model":
            return Route(model, answer, AdapterRef(spec))
        name, path = model.resolver.resolve(spec, param)
        return Route(model, answer, AdapterRef(name, path))


def serve_models(
    configs: Sequence[ModelConfig],
    services: Sequence[EmbeddingService],
    names: Sequence[tuple[str, ...]] | None = None,
) -> ServedModels:
    """A served model per entry, except that the consecutive entries of one Router model's
    routes (model_config.expand_routes) become one model over a RoutedService. `names`:
    each entry's served names, when the engine process decided them."""
    served: list[ServedModel] = []
    i = 0
    while i < len(configs):
        config, j = configs[i], i + 1
        if config.route is None:
            served.append(ServedModel.build(config, services[i], names[i] if names else None))
            i = j
            continue
        while j < len(configs) and (configs[j].spec, configs[j].name) == (config.spec, config.name):
            j += 1
        layout = read_router(Path(config.spec).expanduser())
        routes = {configs[k].route: services[k] for k in range(i, j)}
        whole = dataclasses.replace(config, route=None)
        served.append(
            ServedModel.build(whole, RoutedService(layout, routes), names[i] if names else None)
        )
        i = j
    return ServedModels(served)
