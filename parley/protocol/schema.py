"""JSON Schema of the protocol, generated from the frame and body structs.

``parley protocol schema`` prints :func:`json_schema`; because it is derived
from the same structs the codec decodes with, the schema cannot drift from the
server.  Client-side validators must treat ``pattern`` as ECMAScript regexes
(they are also valid Python regexes).
"""

from __future__ import annotations

import inspect
from typing import Any

import msgspec

from parley.protocol.bodies import BODY_TYPES
from parley.protocol.frames import ClientFrame, ServerFrame

__all__ = ["SCHEMA_ID", "json_schema"]

SCHEMA_ID = "https://parley.invalid/schema/protocol-v1.json"

_REF = "#/$defs/{name}"


def json_schema() -> dict[str, Any]:
    """A JSON Schema (2020-12) document describing protocol version 1.

    ``$defs`` holds every struct; ``$defs.ClientFrame`` and ``$defs.ServerFrame``
    are the two tagged unions (discriminator ``t``); ``x-bodies`` maps each message
    kind to the schema of its ``body``.  The document validates any frame.
    """
    kinds = list(BODY_TYPES)
    types: list[Any] = [ClientFrame, ServerFrame, *(BODY_TYPES[k] for k in kinds)]
    (client, server, *bodies), defs = msgspec.json.schema_components(types, ref_template=_REF)
    defs = {name: _clean(d) for name, d in sorted(defs.items())}
    defs["ClientFrame"] = client
    defs["ServerFrame"] = server
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Parley WebSocket protocol v1",
        "description": "Every frame is one JSON object in a WebSocket text frame; 't' is its type.",
        "anyOf": [
            {"$ref": _REF.format(name="ClientFrame")},
            {"$ref": _REF.format(name="ServerFrame")},
        ],
        "x-bodies": dict(zip(kinds, bodies, strict=True)),
        "$defs": defs,
    }


def _clean(definition: dict[str, Any]) -> dict[str, Any]:
    """Dedent a struct docstring used as ``description``."""
    text = definition.get("description")
    if isinstance(text, str):
        definition = {**definition, "description": inspect.cleandoc(text)}
    return definition
