"""docs/protocol.md stays true: its examples decode, its tables list every code."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from parley import errors
from parley.protocol import (
    CLIENT_FRAME_TAGS,
    KINDS,
    SERVER_FRAME_TAGS,
    CloseCode,
    Limits,
    Send,
    decode_client_frame,
    decode_server_frame,
    encode,
    validate_body,
)

DOC = pathlib.Path(__file__).parents[2] / "docs" / "protocol.md"
TEXT = DOC.read_text()
BLOCKS = re.findall(r"```json (client|server)\n(.*?)```", TEXT, re.S)
L = Limits()


def test_doc_has_examples_of_every_frame() -> None:
    client = {json.loads(b)["t"] for side, b in BLOCKS if side == "client"}
    server = {json.loads(b)["t"] for side, b in BLOCKS if side == "server"}
    assert client == CLIENT_FRAME_TAGS
    assert server == SERVER_FRAME_TAGS


@pytest.mark.parametrize(
    ("side", "block"), BLOCKS, ids=[f"{s}-{i}" for i, (s, _) in enumerate(BLOCKS)]
)
def test_doc_example_decodes(side: str, block: str) -> None:
    data = json.dumps(json.loads(block)).encode()
    if side == "client":
        frame = decode_client_frame(data, L)
        if isinstance(frame, Send):
            validate_body(frame.kind, frame.body, L)
    else:
        # What the server would send for it says the same thing.
        assert json.loads(encode(decode_server_frame(data))) == json.loads(block)


def test_doc_body_examples_validate() -> None:
    section = TEXT[TEXT.index("Examples (each is the `body`") :]
    start = section.index("```json\n") + len("```json\n")
    lines = section[start : section.index("```", start)]
    kinds = ["text", "image", "audio", "video", "file", "location", "custom"]
    bodies = lines.strip().splitlines()
    assert len(bodies) == len(kinds)
    for kind, body in zip(kinds, bodies, strict=True):
        validate_body(kind, body.encode(), L)


def test_doc_lists_every_error_code() -> None:
    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ParleyError)
    } - {"config_error", "startup_failed"}  # start-up only, never on the wire
    for code in codes:
        assert f"| `{code}` |" in TEXT, code


def test_doc_lists_every_close_code_and_kind() -> None:
    for code in CloseCode:
        assert f"| {int(code)} |" in TEXT, code
    for kind in KINDS:
        assert f"| `{kind}` |" in TEXT, kind
    for tag in CLIENT_FRAME_TAGS | SERVER_FRAME_TAGS:
        assert f"| `{tag}` |" in TEXT, tag
