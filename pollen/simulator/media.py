"""The files behind the simulator's result URLs, so a result can be fetched like a real one.

``GET /media/<kind>/<name>`` answers deterministic bytes for any name: images are real PNGs
(a small square whose colour comes from the name; ``image/png`` whatever the extension says),
other kinds are bytes derived from the name with the content type their extension says (32 KiB).
The same name always gives the same bytes, so a copy can be compared with its source.

``GET /media/expired/<anything>`` answers 404, like a provider's URL after it expired: point
result URLs there with the config's ``media_url`` (``<simulator>/media/expired``) to script
results whose files are gone.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pollen.simulator.core import Simulator
from pollen.simulator.state import SimTask

#: where result URLs point when the simulator does not know its own address
FALLBACK_HOST = "https://sim.pollen.invalid"
CONTENT_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "mp4": "video/mp4",
    "mp3": "audio/mpeg",
}
IMAGE_SIDE = 64
#: other files (videos, audio): the name's 32-byte sha256 this many times, 32 KiB, so a size
#: limit between an image's PNG (well under 1 KiB) and 32 KiB tells them apart
REPEATS = 1024


def media_base(sim: Simulator) -> str:
    """Where result files of a task created now live: ``media_url`` from the config, else
    this simulator's own ``/media`` route (kept in the task's params at creation)."""
    return (sim.config.media_url or sim.own_media_url or FALLBACK_HOST).rstrip("/")


def media_url(task: SimTask, path: str) -> str:
    """The URL of one of ``task``'s result files."""
    return f"{task.params.get('media_base', FALLBACK_HOST)}/{path.lstrip('/')}"


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png(name: str, side: int = IMAGE_SIDE) -> bytes:
    """A valid ``side`` x ``side`` RGB PNG, one colour chosen by ``name``."""
    red, green, blue = hashlib.sha256(name.encode()).digest()[:3]
    row = b"\x00" + bytes((red, green, blue)) * side
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(row * side)),
            _chunk(b"IEND", b""),
        )
    )


def body(kind: str, name: str) -> tuple[bytes, str]:
    """The bytes and content type served for ``/media/<kind>/<name>``."""
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    content_type = CONTENT_TYPES.get(extension, "application/octet-stream")
    if content_type.startswith("image/"):  # a real picture, whatever the extension asked for
        return png(name), "image/png"
    seed = hashlib.sha256(f"{kind}/{name}".encode()).digest()
    return seed * REPEATS, content_type


async def serve(request: Request) -> Response:
    kind, name = request.path_params["kind"], request.path_params["name"]
    data, content_type = body(kind, name)
    return Response(data, media_type=content_type)


async def expired(request: Request) -> Response:
    del request
    return Response("this file has expired", status_code=404, media_type="text/plain")


def routes(sim: Simulator) -> list[Route]:
    del sim  # the bytes depend on the name alone
    return [
        Route("/media/expired/{rest:path}", expired, methods=["GET"]),
        Route("/media/{kind}/{name}", serve, methods=["GET"]),
    ]
