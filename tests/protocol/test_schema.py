"""The JSON Schema covers every frame, body and bound, and is plain JSON."""

from __future__ import annotations

import json
import re
from typing import Any

from parley.protocol import CLIENT_FRAME_TAGS, KINDS, SERVER_FRAME_TAGS, json_schema


def test_every_frame_type_is_in_the_schema() -> None:
    schema = json_schema()
    defs = schema["$defs"]
    client = defs["ClientFrame"]["discriminator"]
    server = defs["ServerFrame"]["discriminator"]
    assert client["propertyName"] == server["propertyName"] == "t"
    assert set(client["mapping"]) == CLIENT_FRAME_TAGS
    assert set(server["mapping"]) == SERVER_FRAME_TAGS
    for ref in [*client["mapping"].values(), *server["mapping"].values()]:
        assert ref.removeprefix("#/$defs/") in defs


def test_every_body_kind_is_in_the_schema() -> None:
    schema = json_schema()
    assert set(schema["x-bodies"]) == KINDS
    for ref in schema["x-bodies"].values():
        assert ref["$ref"].removeprefix("#/$defs/") in schema["$defs"]


def test_schema_is_json_with_bounds_and_wire_names() -> None:
    schema = json.loads(json.dumps(json_schema()))
    defs = schema["$defs"]
    assert schema["$schema"].endswith("2020-12/schema")
    assert "from" in defs["Msg"]["properties"]
    assert "sender" not in defs["Msg"]["properties"]
    assert defs["Send"]["additionalProperties"] is False
    assert defs["Sync"]["properties"]["limit"]["maximum"] == 1000
    assert defs["Presence"]["properties"]["text"]["maxLength"] == 140
    assert defs["Send"]["properties"]["body"]["type"] == "object"
    assert not defs["Ack"]["description"].startswith(" ")


def test_patterns_compile() -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("pattern"), str):
                re.compile(node["pattern"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json_schema())
