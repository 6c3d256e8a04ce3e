"""Which multimodal items a model can take, checked before anything is fetched or decoded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxembed.card import ModelCard
from jaxembed.errors import MediaError


def check_items(
    items: Sequence[Any], card: ModelCard, max_media_items: int, model: str | None = None
) -> None:
    """Refuse what this model cannot embed, before any fetching or decoding.

    `items` are EmbedItems or anything with the same `modalities`/`image`/`video`
    attributes (the HTTP layer checks its parsed items before it fetches them).
    """
    model = model or card.name
    for i, item in enumerate(items):
        unsupported = [m for m in item.modalities if m not in card.modalities]
        if unsupported:
            raise MediaError(
                f"input[{i}] has {'/'.join(unsupported)} content, but {model} only embeds "
                f"{'/'.join(card.modalities)}",
                code="unsupported_modality",
                index=i,
            )
    media = sum((item.image is not None) + (item.video is not None) for item in items)
    if media > max_media_items:
        raise MediaError(
            f"the request has {media} images/videos; the maximum is {max_media_items}",
            code="too_many_media_items",
        )
