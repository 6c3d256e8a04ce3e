"""`TokenizeQueue`: the texts of every request waiting, tokenised together off the event loop.

A request's texts are checked on the event loop (cheap: types and emptiness), then queued;
one worker thread takes everything waiting, runs one `encode_batch` per kind of encoding
(the Rust tokenizer releases the GIL and uses its own threads), applies each request's own
limit and truncation, and hands all results back to the event loop in one call. Many small
requests cost one tokenizer call between them instead of one each, and the event loop only
parses and answers. Other input work that needs the tokenizer (pairs, windows) runs on the
same thread, in arrival order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxembed.aio import Resolution, resolve_on_loops
from jaxembed.engine.inputs.text import Inputs, ModelInputs, classify_inputs
from jaxembed.engine.request.jobs import EmbedOptions


@dataclasses.dataclass(eq=False)
class _Texts:
    texts: list[str]
    options: EmbedOptions
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


@dataclasses.dataclass(eq=False)
class _Call:
    work: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class TokenizeQueue:
    def __init__(self, inputs: ModelInputs, *, name: str = "model"):
        self.inputs = inputs
        self._cond = threading.Condition()
        self._waiting: list[_Texts | _Call] = []
        self._closed = False
        self._thread = threading.Thread(
            target=self._loop, name=f"jaxembed-tokenize-{name}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    async def tokenize(self, inputs: Inputs, options: EmbedOptions) -> list[np.ndarray]:
        """Token ids per input exactly as the model runs them (prompt, limit, truncation):
        texts through the shared tokenizer round, token ids validated here."""
        model = self.inputs
        model.check_instruction(options.instruction)
        kind, items = classify_inputs(inputs)
        if kind == "tokens":
            return model.tokenizer.check_ids(
                items,
                truncate=options.truncate,
                direction=options.truncation_direction,
                max_tokens=options.max_tokens,
            )
        texts = model.apply_prompt(items, options.prompt_name, options.instruction)
        model.tokenizer.check_texts(texts, options.truncation_direction)
        loop = asyncio.get_running_loop()
        request = _Texts(texts, options, loop, loop.create_future())
        self._submit(request)
        return await request.future

    async def run(self, work: Callable[[], Any]) -> Any:
        """`work()` on the tokenizer thread (pair encodings, windows), in arrival order."""
        loop = asyncio.get_running_loop()
        call = _Call(work, loop, loop.create_future())
        self._submit(call)
        return await call.future

    def _submit(self, item: _Texts | _Call) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the tokenizer queue is closed")
            self._waiting.append(item)
            if len(self._waiting) == 1:
                self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed and not self._waiting:
                    return
                taken, self._waiting = self._waiting, []
            resolve_on_loops(self._process(taken))

    def _process(self, taken: list[_Texts | _Call]) -> list[Resolution]:
        done: list[Resolution] = []
        texts = [t for t in taken if isinstance(t, _Texts)]
        for add_special in {t.options.add_special_tokens for t in texts}:
            group = [t for t in texts if t.options.add_special_tokens == add_special]
            done += self._encode_group(group, add_special)
        for call in taken:
            if isinstance(call, _Call):
                done.append(_outcome(call.loop, call.future, call.work))
        return done

    def _encode_group(self, group: list[_Texts], add_special: bool) -> list[Resolution]:
        """One encode_batch for every text of the group, then each request's own limits."""
        tokenizer = self.inputs.tokenizer
        try:
            ids = tokenizer.raw_ids([x for t in group for x in t.texts], add_special)
        except Exception as e:  # a tokenizer failure fails these requests, not the thread
            return [(t.loop, t.future, None, e) for t in group]
        done, start = [], 0
        for t in group:
            own = ids[start : start + len(t.texts)]
            start += len(t.texts)
            o = t.options
            done.append(
                _outcome(
                    t.loop,
                    t.future,
                    lambda t=t, own=own, o=o: tokenizer.finish(
                        t.texts,
                        own,
                        truncate=o.truncate,
                        direction=o.truncation_direction,
                        max_tokens=o.max_tokens,
                        add_special_tokens=o.add_special_tokens,
                    ),
                )
            )
        return done


def _outcome(loop, future, work: Callable[[], Any]) -> Resolution:
    try:
        return (loop, future, work(), None)
    except Exception as e:  # the request's own error (too long, bad pair), raised to it
        return (loop, future, None, e)
