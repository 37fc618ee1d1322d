"""Shared fixtures: tiny datasets written on disk in the real schemas, nothing downloaded."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from cmar.data.shapestories import schema_dataset as sr_dataset  # rows -> Dataset

# Each frame is a solid colour and its caption names that colour, so a test can check that
# frame t's image and caption t still belong together after loading.
PALETTE = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255),
    "black": (0, 0, 0), "yellow": (255, 255, 0), "cyan": (0, 255, 255), "magenta": (255, 0, 255),
}


def png(colour: str, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), PALETTE[colour]).save(buffer, format="PNG")
    return buffer.getvalue()


def segment(n: int, colour: str) -> str:
    return (f"<gdi image{n}>\n  The <gdo obj1>{colour} square</gdo> <gda obj1>sits</gda> "
            f"near <gdl bg1>the wall</gdl>. It waits.  </gdi>")


def cot(colours: list[str]) -> str:
    return "\n\n".join(
        f"## Image {n}\n### Objects\n| Object ID | Description | Bounding Box |\n|---|---|---|\n"
        f"| obj1 | a {c} square | 0,0,7,7 |" for n, c in enumerate(colours, start=1)
    )


def sr_row(story_id: str, colours: list[str], story: str | None = None,
           frame_count: int | None = None, images: list[bytes] | None = None) -> dict:
    """One row in the StoryReasoning schema."""
    return {
        "story_id": story_id,
        "images": [{"bytes": b, "path": None} for b in (images or [png(c) for c in colours])],
        "frame_count": len(colours) if frame_count is None else frame_count,
        "chain_of_thought": cot(colours),
        "story": story if story is not None else "\n".join(
            segment(n, c) for n, c in enumerate(colours, start=1)),
    }


COLOUR_CYCLE = list(PALETTE)


def colours_for(i: int, n: int) -> list[str]:
    return [COLOUR_CYCLE[(i + t) % len(COLOUR_CYCLE)] for t in range(n)]


@pytest.fixture
def storyreasoning_parquet(tmp_path):
    """A parquet folder shaped like the hub's copy: 12 train stories, 4 test stories, and one
    bad row of each kind in train."""
    train = [sr_row(str(i), colours_for(i, 5 + i % 3)) for i in range(12)]
    good = colours_for(0, 5)
    train += [
        sr_row("bad-segments", good, story="\n".join(segment(n, c) for n, c in
                                                     enumerate(good[:-1], start=1))),
        sr_row("bad-frame-count", good, frame_count=6),
        sr_row("bad-image", good, images=[png(c) for c in good[:2]] + [b"\x89PNG broken"]
               + [png(c) for c in good[3:]]),
        sr_row("bad-empty", good, story="\n".join(
            segment(n, c) if n != 3 else "<gdi image3>  \n </gdi>"
            for n, c in enumerate(good, start=1))),
    ]
    test = [sr_row(f"t{i}", colours_for(i, 6)) for i in range(4)]
    folder = tmp_path / "StoryReasoning" / "data"
    folder.mkdir(parents=True)
    sr_dataset(train).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    sr_dataset(test).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    return tmp_path / "StoryReasoning"


@pytest.fixture(scope="session")
def shapes_cache(tmp_path_factory):
    """A cache folder shared by tests that load the small ShapeStories preset."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection to a non-loopback address fails the test: nothing may need the hub."""
    import ipaddress
    import socket

    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost" or self.family == getattr(socket, "AF_UNIX", None)
        if not loopback:
            raise RuntimeError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
