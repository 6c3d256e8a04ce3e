"""Where images and videos come from (a request's items, a corpus job's image column),
fetched safely, then decoded within limits (jaxembed/media.py).

A media reference is one of: an `http(s)://` URL, a `data:` URI, raw base64,
a `file://` URL or a plain path. Safe by default:

* URLs: only http and https; the host's addresses must be public — loopback,
  private, link-local, shared, multicast and reserved ranges are refused
  unless `--allow-private-media`. The check runs on the addresses the
  connection really uses (a resolver inside the HTTP client), for IP
  literals, and again on every redirect hop, so neither DNS tricks nor a
  redirect can reach an internal service. Timeout and byte limit per fetch.
* Local files only with `--media-root`, and only inside it after symlinks
  and `..` are resolved; regular files only.
* Bytes are identified by content (jaxembed/media.py), never by extension or
  the declared type; decoding limits stop decompression bombs and huge videos.

Every failure is a `MediaError` (the server's HTTP 400, a corpus job's bad row) that says
what was wrong without echoing server paths. (The library's layer: the server and
`jaxembed embed-dataset` both fetch through it.)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import ipaddress
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from jaxembed.aio import gather_or_cancel
from jaxembed.engine.request.jobs import EmbedItem
from jaxembed.errors import MediaError
from jaxembed.paths import PathOutsideRoot, resolve_inside

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
_BASE64 = re.compile(r"^[A-Za-z0-9+/\s]+={0,2}\s*$")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Magic numbers of the image and video containers we decode (for telling base64 from a path).
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")
_MAGIC_AT_4 = (b"ftyp",)
_MAGIC_VIDEO = (b"\x1a\x45\xdf\xa3", b"OggS")


@dataclasses.dataclass(frozen=True)
class MediaPolicy:
    allow_private: bool = False
    root: Path | None = None  # resolved; None: local paths refused
    max_bytes: int = 32 * 2**20
    timeout: float = 10.0
    max_redirects: int = 5


def is_public_address(address: str) -> bool:
    """Whether an IP address is globally routable (IPv4-mapped IPv6 judged as its IPv4)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _literal_address(host: str) -> str | None:
    """The IP address a URL host spells literally, shorthand IPv4 included ("127.1",
    "2130706433", "0x7f000001", which inet_aton accepts), or None for a name."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None


def _forbidden_address() -> MediaError:
    return MediaError(
        "the URL's host is a loopback, private or link-local address, which is not fetched "
        "unless allowed (--allow-private-media)",
        code="media_forbidden",
    )


class _PublicOnlyResolver(AbstractResolver):
    """Resolves with the system resolver, then refuses non-public addresses.

    The HTTP client connects to exactly the addresses returned here, so there
    is no gap between checking a name and connecting to it.
    """

    def __init__(self, allow_private: bool):
        self._inner = aiohttp.ThreadedResolver()
        self._allow_private = allow_private
        self.refused = False

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        infos = await self._inner.resolve(host, port, family)
        if not self._allow_private and any(not is_public_address(i["host"]) for i in infos):
            self.refused = True
            raise OSError(f"{host} resolves to a non-public address")
        return infos

    async def close(self) -> None:
        await self._inner.close()


def looks_like_media(data: bytes) -> bool:
    return (
        data.startswith(_MAGIC)
        or data[4:8] in _MAGIC_AT_4
        or data.startswith(_MAGIC_VIDEO)
        or data[8:12] == b"WEBP"
    )


class MediaLoader:
    """Turns a media reference into bytes under a `MediaPolicy`."""

    def __init__(self, policy: MediaPolicy):
        self.policy = policy

    async def read(self, source: str) -> bytes:
        if source.startswith("data:"):
            return self._data_uri(source)
        scheme = _SCHEME.match(source)
        if scheme and "://" in source[: scheme.end() + 2]:
            name = scheme.group(1).lower()
            if name in ("http", "https"):
                return await self._fetch(source)
            if name == "file":
                return await self._read_file(unquote(urlsplit(source).path))
            raise MediaError(
                f"URL scheme {name!r} is not supported: use http(s) URLs, base64, data URIs "
                "or (where the server allows) file paths",
                code="media_forbidden",
            )
        decoded = self._maybe_base64(source)
        if decoded is not None:
            return decoded
        return await self._read_file(source)

    # -- inline data ---------------------------------------------------------------------------

    def _decode_base64(self, text: str) -> bytes:
        if len(text) * 3 // 4 > self.policy.max_bytes + 3:
            raise self._too_large()
        try:
            return base64.b64decode(text, validate=False)
        except (binascii.Error, ValueError):
            raise MediaError("the base64 data is not valid", code="invalid_media") from None

    def _data_uri(self, uri: str) -> bytes:
        header, sep, payload = uri.partition(",")
        if not sep or not header.endswith(";base64"):
            raise MediaError(
                "data URIs must be base64-encoded (data:<type>;base64,<data>)", code="invalid_media"
            )
        return self._decode_base64(payload)

    def _maybe_base64(self, text: str) -> bytes | None:
        """Raw base64 if the text is base64 that is long or decodes to known media; else None."""
        compact = "".join(text.split())
        if len(compact) < 8 or len(compact) % 4 or not _BASE64.match(text):
            return None
        data = self._decode_base64(compact)
        return data if len(compact) >= 64 or looks_like_media(data) else None

    # -- local files -----------------------------------------------------------------------------

    async def _read_file(self, path: str) -> bytes:
        root = self.policy.root
        if root is None:
            raise MediaError(
                "local file paths are not enabled (the operator can allow them "
                "inside a directory with --media-root); send a URL, base64 or a data URI",
                code="media_forbidden",
            )
        try:
            resolved = resolve_inside(root, path)
        except PathOutsideRoot:
            raise MediaError(
                "the path points outside the media root", code="media_forbidden"
            ) from None
        except ValueError:
            raise MediaError("the path is not valid", code="invalid_media") from None
        return await asyncio.get_running_loop().run_in_executor(None, self._read_limited, resolved)

    def _read_limited(self, path: Path) -> bytes:
        if not path.is_file():
            raise MediaError("no such file under the media root", code="media_not_found")
        with path.open("rb") as f:
            data = f.read(self.policy.max_bytes + 1)
        if len(data) > self.policy.max_bytes:
            raise self._too_large()
        return data

    # -- URLs ------------------------------------------------------------------------------------

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise MediaError(
                f"redirected to a {parts.scheme or 'relative'!r} URL; only http(s) is fetched",
                code="media_forbidden",
            )
        host = parts.hostname
        if not host:
            raise MediaError("the URL has no host", code="invalid_media")
        address = _literal_address(host)
        if address is None:
            return  # a name: checked by the resolver when the client connects
        if not self.policy.allow_private and not is_public_address(address):
            raise _forbidden_address()

    async def _fetch(self, url: str) -> bytes:
        policy = self.policy
        resolver = _PublicOnlyResolver(policy.allow_private)
        connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, limit=4)
        timeout = aiohttp.ClientTimeout(total=policy.timeout)
        try:
            async with aiohttp.ClientSession(
                connector=connector, timeout=timeout, trust_env=False
            ) as session:
                for _ in range(policy.max_redirects + 1):
                    self._check_url(url)
                    async with session.get(url, allow_redirects=False) as response:
                        if response.status in REDIRECT_STATUSES:
                            location = response.headers.get("Location")
                            if not location:
                                raise MediaError(
                                    "the URL redirected without a Location",
                                    code="media_fetch_failed",
                                )
                            url = urljoin(url, location)
                            continue
                        if response.status != 200:
                            raise MediaError(
                                f"fetching the URL returned HTTP {response.status}",
                                code="media_fetch_failed",
                            )
                        return await self._read_body(response)
                raise MediaError(
                    f"the URL redirected more than {policy.max_redirects} times",
                    code="media_fetch_failed",
                )
        except aiohttp.ClientConnectorError:
            if resolver.refused:
                raise _forbidden_address() from None
            raise MediaError(
                "could not connect to the URL's host", code="media_fetch_failed"
            ) from None
        except TimeoutError:
            raise MediaError(
                f"fetching the URL took longer than {policy.timeout:g} s",
                code="media_fetch_timeout",
            ) from None
        except aiohttp.ClientError as e:
            raise MediaError(
                f"fetching the URL failed ({type(e).__name__})", code="media_fetch_failed"
            ) from None

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self.policy.max_bytes
        if response.content_length is not None and response.content_length > limit:
            raise self._too_large()
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> MediaError:
        return MediaError(
            f"the media is larger than this server's limit of {self.policy.max_bytes} bytes",
            code="media_too_large",
        )


async def fetch_items(loader: MediaLoader, items: Sequence[Any]) -> list[EmbedItem]:
    """Parsed `{text, image, video}` items → EmbedItems whose media are bytes.

    All references are read concurrently; the first failure cancels the rest and
    names its item (`input[3].image: ...`).
    """

    async def read(index: int, kind: str, source: str | None) -> bytes | None:
        if source is None:
            return None
        try:
            return await loader.read(source)
        except MediaError as e:
            raise MediaError(f"input[{index}].{kind}: {e}", code=e.code, index=index) from None

    data = await gather_or_cancel(
        read(i, kind, getattr(item, kind))
        for i, item in enumerate(items)
        for kind in ("image", "video")
    )
    return [
        EmbedItem(text=item.text, image=data[2 * i], video=data[2 * i + 1])
        for i, item in enumerate(items)
    ]
