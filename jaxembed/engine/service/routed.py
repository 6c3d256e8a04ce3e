"""`RoutedService`: a sentence-transformers Router model behind one service — an
`EmbeddingService` per route (each its own model on the devices), one chosen per job by its
input type as `encode_query` / `encode_document` choose (jaxembed/routes.py).

Everything that is not about one job (start, close, state, capacity) covers every route;
what describes the model (its card, its inputs for `/tokenize`) is the default route's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from jaxembed.engine.request.jobs import EmbedJob, EmbedOptions, EmbedResult, TextInputs
from jaxembed.engine.request.progress import RequestProgress
from jaxembed.engine.service.backend import EngineStatus
from jaxembed.engine.service.embedding import EmbeddingService
from jaxembed.errors import ModelLoadError
from jaxembed.routes import RouterLayout


class RoutedService:
    def __init__(self, layout: RouterLayout, routes: Mapping[str, EmbeddingService]):
        if set(routes) != set(layout.routes):
            raise ModelLoadError(f"routes {sorted(routes)} != the model's {list(layout.routes)}")
        cards = [s.card for s in routes.values()]
        shapes = {(c.dimensions, c.sparse, c.kind) for c in cards}
        if len(shapes) != 1:
            raise ModelLoadError(
                f"{layout.model_dir}: the routes' vectors differ in width or kind "
                f"({ {n: (s.card.dimensions, s.card.pooling) for n, s in routes.items()} }): "
                "one index cannot hold both sides"
            )
        self.layout = layout
        self.routes = dict(routes)
        self.default = self.routes[layout.default_route or next(iter(routes))]

    def __getattr__(self, name: str) -> Any:
        # The model's description (card, inputs, config, facts, calibration, encode, ...)
        # is the default route's.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.default, name)

    def route(self, options: EmbedOptions) -> EmbeddingService:
        return self.routes[self.layout.route_for(options.prompt_name)]

    # -- one job: its route's -----------------------------------------------------------------

    async def embed(self, job: EmbedJob, progress: RequestProgress | None = None) -> EmbedResult:
        return await self.route(job.options).embed(job, progress)

    def check_job(self, job: EmbedJob) -> EmbedOptions:
        return self.route(job.options).check_job(job)

    async def tokenize(self, inputs: TextInputs, options: EmbedOptions):
        return await self.route(options).tokenize(inputs, options)

    # -- the model: every route's -------------------------------------------------------------

    def start(self, *, warmup: bool = True, progress=None) -> None:
        for service in self.routes.values():
            service.start(warmup=warmup, progress=progress)

    def close(self, timeout: float = 30.0) -> bool:
        return all([service.close(timeout) for service in self.routes.values()])

    def status(self) -> EngineStatus:
        """Every route's engine as one: warm when all are, unhealthy if any is, queues and
        compiles summed."""
        statuses = [s.status() for s in self.routes.values()]
        summed = {
            f.name: sum(getattr(s, f.name) for s in statuses)
            for f in dataclasses.fields(EngineStatus)
            if f.type in ("int", "float")
        }
        return dataclasses.replace(
            self.default.status(),
            warm=all(s.warm for s in statuses),
            unhealthy=next((s.unhealthy for s in statuses if s.unhealthy), None),
            **summed,
        )

    @property
    def warm(self) -> bool:
        return all(s.warm for s in self.routes.values())

    def unhealthy_reason(self) -> str | None:
        return next((r for s in self.routes.values() if (r := s.unhealthy_reason())), None)

    def check_capacity(self) -> None:
        for service in self.routes.values():
            service.check_capacity()
