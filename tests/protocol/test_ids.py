"""Message ids: shape, ownership, skew window edges, minting."""

from __future__ import annotations

import secrets

import pytest

from parley.errors import InvalidMessageId
from parley.protocol import (
    DEVICE_ID_RE,
    MessageId,
    check_message_id,
    new_message_id,
    parse_message_id,
    random_suffix,
)
from parley.protocol.ids import DEFAULT_MAX_FUTURE_MS, DEFAULT_MAX_PAST_MS

NOW = 1_700_000_000_000
MID = f"1.42.phone-1_A.{NOW}.abcdEFGH1234"


def test_parse_round_trip() -> None:
    mid = parse_message_id(MID)
    assert mid == MessageId(uid=42, device="phone-1_A", ts_ms=NOW, rand="abcdEFGH1234", version=1)
    assert str(mid) == MID
    assert parse_message_id("1.0.d.0.00000000") == MessageId(0, "d", 0, "00000000")


def test_longest_id() -> None:
    s = f"1.{2**53 - 1}.{'d' * 64}.{2**53 - 1}.{'r' * 32}"
    assert parse_message_id(s).uid == 2**53 - 1
    assert len(s) <= 160


@pytest.mark.parametrize(
    "s",
    [
        "",
        "2.42.phone.1.abcdefgh",
        "1.042.phone.1.abcdefgh",
        "1.42.phone.01.abcdefgh",
        "1.-1.phone.1.abcdefgh",
        f"1.{2**53}.phone.1.abcdefgh",
        f"1.1.phone.{2**53}.abcdefgh",
        "1.42.ph.one.1.abcdefgh",
        "1.42..1.abcdefgh",
        f"1.42.{'d' * 65}.1.abcdefgh",
        "1.42.phone.1.abcdefg",
        f"1.42.phone.1.{'r' * 33}",
        "1.42.phone.1.abcd-efg",
        "1.42.phone.1.abcdefgh.",
        "1.42.phone.1.abcdefgh\n",
        "1.42.phöne.1.abcdefgh",
        "1.\u0664\u0662.phone.1.abcdefgh",
        "1.42.phone.1",
        "x" * 161,
    ],
)
def test_parse_rejects(s: str) -> None:
    with pytest.raises(InvalidMessageId) as info:
        parse_message_id(s)
    assert info.value.code == "invalid_message_id"


def test_check_ownership() -> None:
    assert check_message_id(MID, 42, "phone-1_A", NOW).uid == 42
    with pytest.raises(InvalidMessageId, match="another user"):
        check_message_id(MID, 43, "phone-1_A", NOW)
    with pytest.raises(InvalidMessageId, match="another user"):
        check_message_id(MID, 42, "tablet", NOW)


def test_skew_window_edges_inclusive() -> None:
    check_message_id(MID, 42, "phone-1_A", NOW + DEFAULT_MAX_PAST_MS)
    check_message_id(MID, 42, "phone-1_A", NOW - DEFAULT_MAX_FUTURE_MS)
    with pytest.raises(InvalidMessageId, match="past"):
        check_message_id(MID, 42, "phone-1_A", NOW + DEFAULT_MAX_PAST_MS + 1)
    with pytest.raises(InvalidMessageId, match="future"):
        check_message_id(MID, 42, "phone-1_A", NOW - DEFAULT_MAX_FUTURE_MS - 1)
    assert DEFAULT_MAX_PAST_MS == 7 * 24 * 3600 * 1000
    assert DEFAULT_MAX_FUTURE_MS == 5 * 60 * 1000


def test_custom_window() -> None:
    check_message_id(MID, 42, "phone-1_A", NOW + 10, max_past_ms=10, max_future_ms=0)
    with pytest.raises(InvalidMessageId):
        check_message_id(MID, 42, "phone-1_A", NOW + 11, max_past_ms=10, max_future_ms=0)
    with pytest.raises(InvalidMessageId):
        check_message_id(MID, 42, "phone-1_A", NOW - 1, max_past_ms=10, max_future_ms=0)


def test_new_message_id() -> None:
    mid = new_message_id(42, "phone-1_A", NOW, "abcdEFGH1234")
    assert mid == MID
    assert check_message_id(mid, 42, "phone-1_A", NOW) == parse_message_id(MID)
    fresh = new_message_id(7, "d", NOW, random_suffix(secrets.choice))
    assert parse_message_id(fresh).uid == 7
    assert len(parse_message_id(fresh).rand) == 16


@pytest.mark.parametrize(
    ("uid", "device", "now", "rand"),
    [
        (-1, "d", 0, "abcdefgh"),
        (2**53, "d", 0, "abcdefgh"),
        (1, "", 0, "abcdefgh"),
        (1, "a.b", 0, "abcdefgh"),
        (1, "d", -1, "abcdefgh"),
        (1, "d", 0, "short"),
        (1, "d", 0, "abcdefg!"),
    ],
)
def test_new_message_id_rejects(uid: int, device: str, now: int, rand: str) -> None:
    with pytest.raises(ValueError):
        new_message_id(uid, device, now, rand)


def test_random_suffix() -> None:
    assert random_suffix(lambda alphabet: alphabet[-1], 8) == "zzzzzzzz"
    assert len(random_suffix(secrets.choice, 32)) == 32
    with pytest.raises(ValueError):
        random_suffix(secrets.choice, 7)
    with pytest.raises(ValueError):
        random_suffix(secrets.choice, 33)


def test_device_id_re() -> None:
    assert DEVICE_ID_RE.fullmatch("a" * 64)
    assert DEVICE_ID_RE.fullmatch("Phone_1-x")
    for bad in ("", "a" * 65, "a.b", "a b", "é", "a\n"):
        assert DEVICE_ID_RE.fullmatch(bad) is None
