"""Request and response bodies of the HTTP API, apart from the storage rows.

Naming follows Create / Update / Public: what a client sends to create or change
an object, and what it gets back.  Every string a client sends is bounded and
free of control characters; every id is a positive 53-bit integer (safe in
JavaScript and in both databases).
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec
from fastapi import Path, Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from parley.protocol import CLIENT_KINDS, Limits
from parley.protocol.bodies import BODY_TYPES

__all__ = [
    "MAX_ID",
    "BlockPublic",
    "ContactPublic",
    "ContactRequestCreate",
    "ConversationPublic",
    "ConversationUpdate",
    "DirectCreate",
    "GroupCreate",
    "GroupPublic",
    "GroupUpdate",
    "IdPath",
    "Limit",
    "MemberPublic",
    "MembersAdd",
    "MessagePublic",
    "MessageSend",
    "MuteCreate",
    "OptionalCursor",
    "Page",
    "RecallPublic",
    "RoleUpdate",
    "SentPublic",
    "TenantPolicies",
    "TenantPublic",
    "TenantUpdate",
    "TransferCreate",
    "UserPublic",
    "UserUpdate",
]

MAX_ID = 2**53 - 1
_PLAIN = r"^[^\x00-\x1f\x7f]*$"


def _int_like(value: Any) -> Any:
    """Request bodies are strict (no ``true`` or ``"42"`` for a number), but JSON
    Schema counts ``42.0`` as an integer, so that one is accepted."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


IntLike = Annotated[int, BeforeValidator(_int_like)]
UserId = Annotated[int, Field(ge=1, le=MAX_ID, examples=[42]), BeforeValidator(_int_like)]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID, examples=[42])]
OptionalCursor = Annotated[
    int | None, Query(ge=0, le=MAX_ID, description="The `next` of the previous page.")
]
Limit = Annotated[int, Query(ge=1, le=100, description="Page size (1..100).")]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=_PLAIN)]

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page; pass ``next`` as ``after`` (or ``before`` for history) for the next one."""

    items: list[T]
    next: int | None = Field(None, description="Cursor of the next page; null on the last.")


# -- users ---------------------------------------------------------------------------
class UserPublic(BaseModel):
    id: int = Field(examples=[42])
    username: str = Field(examples=["alice"])
    display_name: str = Field(examples=["Alice Liddell"])
    status_text: str = Field(examples=["In a meeting until 3"])
    created_at: int = Field(description="Milliseconds since the epoch.", examples=[1795000000000])


class UserUpdate(BaseModel):
    """Fields to change on one's own profile; absent fields stay as they are."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"display_name": "Alice", "status_text": "On holiday"}]},
    )

    display_name: Name | None = None
    status_text: Annotated[str, Field(max_length=200, pattern=_PLAIN)] | None = None


# -- contacts ------------------------------------------------------------------------
class ContactRequestCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"user_id": 42}]}
    )

    user_id: UserId


class ContactPublic(BaseModel):
    user_id: int = Field(examples=[42])
    state: Literal["accepted", "requested", "incoming"] = Field(
        description="accepted: a contact; requested: you asked them; incoming: they asked you."
    )
    since: int = Field(description="When the state last changed (ms).")


class BlockPublic(BaseModel):
    user_id: int = Field(examples=[42])
    since: int


# -- conversations -------------------------------------------------------------------
class DirectCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"user_id": 42}]}
    )

    user_id: UserId


class MessagePublic(BaseModel):
    conv: int = Field(examples=[7])
    seq: int = Field(examples=[128])
    mid: str = Field(examples=["1.42.phone.1795000000000.k3Jd9a"])
    sender: int = Field(examples=[42])
    kind: str = Field(examples=["text"])
    body: dict[str, Any] = Field(examples=[{"text": "hello"}])
    ts: int = Field(description="Server time the message was stored (ms).")
    recalled: bool = False


class ConversationPublic(BaseModel):
    id: int = Field(examples=[7])
    kind: Literal["direct", "group"]
    name: str = Field(examples=["Team"])
    role: str = Field(examples=["member"])
    peer_id: int | None = Field(None, description="The other user of a direct conversation.")
    last_seq: int
    read_seq: int
    unread: int = Field(examples=[3])
    pinned: bool
    muted: bool
    last_message: MessagePublic | None = None


class ConversationUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"pinned": True, "muted": False}]},
    )

    pinned: bool | None = None
    muted: bool | None = Field(None, description="Muted: no notifications (messages still come).")


# -- messages ------------------------------------------------------------------------
def _body_schema(kind: str) -> dict[str, Any]:
    """The JSON schema of one kind's body, inlined, with the server's default limits."""
    tp = BODY_TYPES[kind]
    schema: dict[str, Any] = msgspec.json.schema(tp)["$defs"][tp.__name__]
    for prop in schema.get("properties", {}).values():
        if prop.get("type") == "string" and "pattern" not in prop:
            prop["pattern"] = "^[^\\u0000]*$"
    if kind == "text":
        schema["properties"]["text"]["maxLength"] = Limits().max_text_chars
    return schema


def _send_schema(schema: dict[str, Any]) -> None:
    """``MessageSend`` documented as one alternative per kind, so clients (and
    schemathesis) see exactly which body each kind takes."""
    examples = schema.get("examples") or [
        {"kind": "text", "body": {"text": "Build 812 passed"}},
        {"kind": "location", "body": {"lat": 48.8584, "lon": 2.2945, "name": "Tour Eiffel"}},
    ]
    schema.clear()
    schema.update(
        {
            "title": "MessageSend",
            "description": "A message to send: `kind` and the body for that kind "
            "(the same bodies as on the WebSocket, docs/protocol.md).",
            "oneOf": [
                {
                    "type": "object",
                    "properties": {"kind": {"const": kind}, "body": _body_schema(kind)},
                    "required": ["kind", "body"],
                    "additionalProperties": False,
                }
                for kind in sorted(CLIENT_KINDS)
            ],
        }
    )
    if examples:
        schema["examples"] = examples


class MessageSend(BaseModel):
    """A message sent by the server on the caller's behalf; the server makes its id."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=lambda schema, _cls: _send_schema(schema),
    )

    kind: Literal["text", "image", "audio", "video", "file", "location", "custom"]
    body: dict[str, Any] = Field(
        description="The body for `kind`, exactly as on the WebSocket (docs/protocol.md).",
        examples=[{"text": "Build 812 passed"}],
    )


class SentPublic(BaseModel):
    conv: int
    mid: str = Field(description="The message id the server generated.")
    seq: int
    ts: int
    duplicate: bool = Field(description="True when this Idempotency-Key was used before.")


class RecallPublic(BaseModel):
    seq: int = Field(description="The seq of the recall event.")


# -- groups --------------------------------------------------------------------------
class GroupCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"name": "Team", "member_ids": [42, 43]}]},
    )

    name: Name
    member_ids: list[UserId] = Field(default_factory=list, max_length=100)


class GroupUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"announcement": "Standup at 10", "all_muted": False}]},
    )

    name: Name | None = None
    announcement: Annotated[str, Field(max_length=4000)] | None = None
    all_muted: bool | None = Field(None, description="Only the owner and admins may send.")


class GroupPublic(BaseModel):
    id: int = Field(examples=[7])
    name: str = Field(examples=["Team"])
    announcement: str
    all_muted: bool
    member_count: int
    your_role: Literal["owner", "admin", "member"]
    created_at: int


class MemberPublic(BaseModel):
    user_id: int
    role: Literal["owner", "admin", "member"]
    joined_at: int
    muted_until: int = Field(0, description="Muted (may not send) until this time (ms); 0: not.")


class MembersAdd(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"user_ids": [44]}]}
    )

    user_ids: list[UserId] = Field(min_length=1, max_length=100)


class RoleUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"role": "admin"}]}
    )

    role: Literal["admin", "member"]


class MuteCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"duration_s": 3600}]}
    )

    duration_s: IntLike = Field(
        ge=1, le=366 * 86400, description="How long the member may not send."
    )


class TransferCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"user_id": 43}]}
    )

    user_id: UserId


# -- tenant ----------------------------------------------------------------------------
class TenantPolicies(BaseModel):
    """The tenant's own settings; null where it follows the node's setting."""

    allow_registration: bool | None = Field(examples=[True])
    stranger_messages: bool | None = Field(examples=[None])


class TenantPublic(BaseModel):
    """The caller's tenant and the policies in effect for it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "slug": "default", "name": "Default", "allow_registration": True,
                    "stranger_messages": True,
                    "own": {"allow_registration": True, "stranger_messages": None},
                }
            ]
        }
    )

    slug: str = Field(examples=["default"])
    name: str = Field(examples=["Default"])
    allow_registration: bool = Field(
        description="In effect: whether anyone may create an account with "
        "POST /api/v1/auth/register in this tenant."
    )
    stranger_messages: bool = Field(
        description="In effect: whether users who are not contacts may message each other."
    )
    own: TenantPolicies = Field(
        description="The tenant's own settings (null: the node's setting applies)."
    )


class TenantUpdate(BaseModel):
    """Policies to change; absent fields stay as they are, null returns a field to the
    node's setting."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"allow_registration": True, "stranger_messages": False}]},
    )

    allow_registration: bool | None = None
    stranger_messages: bool | None = None
