"""Media safety: decoding limits (jaxembed/media.py) and fetching rules
(jaxembed/media_loader.py)."""

from __future__ import annotations

import asyncio
import base64
import os

import pytest
from PIL import Image

from jaxembed import media_loader as media
from jaxembed.errors import MediaError
from jaxembed.media import MediaLimits, decode_image, decode_video
from jaxembed.media_loader import MediaLoader, MediaPolicy, is_public_address
from tests.helpers import (
    MediaHTTPServer,
    bomb_png,
    generated_image,
    generated_video,
    image_bytes,
)

LIMITS = MediaLimits()


def _code(call) -> str:
    with pytest.raises(MediaError) as info:
        call()
    return info.value.code


# -- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_decodes_supported_formats_by_content(fmt):
    image = decode_image(image_bytes(generated_image((20, 10)), fmt), LIMITS)
    assert image.size == (20, 10) and image.format == fmt


def test_decompression_bomb_refused_before_decoding():
    assert _code(lambda: decode_image(bomb_png(100_000, 100_000), LIMITS)) == "invalid_image"
    # Under Pillow's own threshold but over ours: refused from the header alone.
    limits = MediaLimits(max_image_pixels=10_000)
    assert _code(lambda: decode_image(bomb_png(200, 200), limits)) == "image_too_large"


def test_non_image_and_truncated_image_refused():
    assert _code(lambda: decode_image(os.urandom(5000), LIMITS)) == "invalid_image"
    assert _code(lambda: decode_image(b"%PDF-1.7 not an image", LIMITS)) == "invalid_image"
    png = image_bytes(generated_image((64, 64)))
    assert _code(lambda: decode_image(png[: len(png) // 2], LIMITS)) == "invalid_image"
    # A video is not an image, whatever the item claims.
    assert _code(lambda: decode_image(generated_video(5), LIMITS)) == "invalid_image"


def test_video_limits_and_corruption():
    video = generated_video(30, fps=10)
    assert len(decode_video(video, 4, LIMITS)) == 4
    assert _code(lambda: decode_video(video[: len(video) // 2], 4, LIMITS)) == "invalid_video"
    assert _code(lambda: decode_video(os.urandom(4000), 4, LIMITS)) == "invalid_video"
    png = image_bytes(generated_image((20, 20)))
    assert _code(lambda: decode_video(png, 4, LIMITS)) == "invalid_video"
    too_long = MediaLimits(max_video_seconds=1.0)
    assert _code(lambda: decode_video(video, 4, too_long)) == "video_too_long"
    few_frames = MediaLimits(max_video_frames=10)
    assert _code(lambda: decode_video(video, 4, few_frames)) == "video_too_long"
    small = MediaLimits(max_frame_pixels=100)
    assert _code(lambda: decode_video(video, 4, small)) == "video_too_large"
    no_time = MediaLimits(max_decode_seconds=0.0)
    assert _code(lambda: decode_video(video, 4, no_time)) == "video_too_long"


# -- addresses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "not-an-ip",
    ],
)
def test_private_addresses_are_not_public(address):
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses(address):
    assert is_public_address(address)


# -- the loader ---------------------------------------------------------------------------------


def _read(loader: MediaLoader, source: str) -> bytes:
    return asyncio.run(loader.read(source))


def _read_code(loader: MediaLoader, source: str) -> str:
    with pytest.raises(MediaError) as info:
        _read(loader, source)
    return info.value.code


def test_inline_base64_and_data_uris():
    png = image_bytes(generated_image((8, 8)))
    loader = MediaLoader(MediaPolicy())
    encoded = base64.b64encode(png).decode()
    assert _read(loader, encoded) == png
    assert _read(loader, "data:image/png;base64," + encoded) == png
    assert _read(loader, "data:application/octet-stream;base64," + encoded) == png
    assert _read_code(loader, "data:image/png," + encoded) == "invalid_media"
    small = MediaLoader(MediaPolicy(max_bytes=100))
    assert _read_code(small, "data:image/png;base64," + encoded) == "media_too_large"


def test_schemes_other_than_http_refused():
    loader = MediaLoader(MediaPolicy())
    for url in ("ftp://example.com/a.png", "gopher://x/y", "javascript://x", "ldap://h/x"):
        assert _read_code(loader, url) == "media_forbidden"


def test_local_paths_need_a_root_and_stay_inside_it(tmp_path):
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    png = image_bytes(generated_image((8, 8)))
    (root / "sub" / "a.png").write_bytes(png)
    secret = tmp_path / "secret.png"
    secret.write_bytes(png)
    (root / "link.png").symlink_to(secret)
    assert _read_code(MediaLoader(MediaPolicy()), "sub/a.png") == "media_forbidden"
    loader = MediaLoader(MediaPolicy(root=root.resolve()))
    assert _read(loader, "sub/a.png") == png
    assert _read(loader, str(root / "sub" / "a.png")) == png
    assert _read(loader, f"file://{root}/sub/a.png") == png
    for escape in (
        "../secret.png",
        "sub/../../secret.png",
        str(secret),
        "link.png",
        f"file://{secret}",
        "/etc/passwd",
    ):
        assert _read_code(loader, escape) == "media_forbidden", escape
    assert _read_code(loader, "sub/missing.png") == "media_not_found"
    assert _read_code(loader, "sub") == "media_not_found"  # a directory is not a file
    (root / "big.png").write_bytes(b"\x89PNG" + b"\x00" * 5000)
    small = MediaLoader(MediaPolicy(root=root.resolve(), max_bytes=1000))
    assert _read_code(small, "big.png") == "media_too_large"


def test_url_fetching_rules():
    png = image_bytes(generated_image((8, 8)))
    with MediaHTTPServer({"a.png": png, "big": b"x" * 50_000}) as http:
        # Loopback is refused by default: literal IPs and names alike, before connecting.
        default = MediaLoader(MediaPolicy())
        assert _read_code(default, f"{http.url}/files/a.png") == "media_forbidden"
        port = http.url.rsplit(":", 1)[1]
        # Names and the other spellings of 127.0.0.1 resolve to loopback: refused too.
        for host in ("localhost", "127.1", "2130706433", "0x7f000001", "[::ffff:127.0.0.1]"):
            url = f"http://{host}:{port}/files/a.png"
            assert _read_code(default, url) == "media_forbidden", host
        assert http.requests == []
        allowed = MediaLoader(MediaPolicy(allow_private=True, max_bytes=10_000))
        assert _read(allowed, f"{http.url}/files/a.png") == png
        assert _read(allowed, f"{http.url}/redirect?to=/files/a.png") == png
        assert _read_code(allowed, f"{http.url}/files/big") == "media_too_large"
        assert _read_code(allowed, f"{http.url}/stream/big") == "media_too_large"
        assert _read_code(allowed, f"{http.url}/files/missing") == "media_fetch_failed"
        to_file = f"{http.url}/redirect?to=file:///etc/passwd"
        assert _read_code(allowed, to_file) == "media_forbidden"


def test_redirect_to_private_address_refused(monkeypatch):
    """Only 127.0.0.1 counts as public here, so the first hop is fetched and the
    redirect to another loopback address must be refused without being requested."""
    monkeypatch.setattr(media, "is_public_address", lambda address: address == "127.0.0.1")
    png = image_bytes(generated_image((8, 8)))
    with MediaHTTPServer({"a.png": png}) as http:
        port = http.url.rsplit(":", 1)[1]
        loader = MediaLoader(MediaPolicy())
        assert _read(loader, f"{http.url}/files/a.png") == png
        target = f"http://127.0.0.2:{port}/files/a.png"
        assert _read_code(loader, f"{http.url}/redirect?to={target}") == "media_forbidden"
        assert http.requests == ["/files/a.png", f"/redirect?to={target}"]


def test_slow_url_times_out():
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    loader = MediaLoader(MediaPolicy(allow_private=True, timeout=0.5))
    try:
        assert _read_code(loader, f"http://127.0.0.1:{port}/x.png") == "media_fetch_timeout"
    finally:
        listener.close()
        for conn, _ in accepted:
            conn.close()


def test_an_image_named_like_base64_is_read_as_a_path(tmp_path):
    (tmp_path / "abcd").write_bytes(image_bytes(Image.new("RGB", (4, 4))))
    loader = MediaLoader(MediaPolicy(root=tmp_path.resolve()))
    assert _read(loader, "abcd").startswith(b"\x89PNG")
