"""Login throttling, the revocation list and token checks, with a manual clock."""

from __future__ import annotations

import pytest

from parley.auth.sessions import RevocationList
from parley.auth.throttle import LoginThrottle, SlidingWindow, Throttled
from parley.auth.tokens import TokenService
from parley.clock import ManualClock
from parley.errors import Unauthenticated
from parley.store.keys import SigningKey


def test_window_refuses_after_limit_until_the_oldest_failure_ages_out() -> None:
    clock = ManualClock()
    w = SlidingWindow(clock, limit=3, window_s=10)
    for _ in range(3):
        assert w.retry_after("k") == 0
        w.hit("k")
        clock.advance(1000)
    assert w.retry_after("k") == pytest.approx(7)
    clock.advance(7000)
    assert w.retry_after("k") == 0
    assert w.retry_after("other") == 0


def test_window_stays_bounded() -> None:
    clock = ManualClock()
    w = SlidingWindow(clock, limit=2, window_s=10, max_keys=5)
    for i in range(50):
        w.hit(f"k{i}")
    assert len(w._events) <= 5


def test_login_throttle_reports_retry_after() -> None:
    clock = ManualClock()
    t = LoginThrottle(clock, per_account=2, per_address=100, window_s=60)
    key = LoginThrottle.account_key("default", "Alice")
    assert key == LoginThrottle.account_key("default", "alice")
    t.failed(key, "1.2.3.4")
    t.failed(key, "5.6.7.8")
    with pytest.raises(Throttled) as info:
        t.check(key, "9.9.9.9")
    assert info.value.retry_after_s == 60
    assert info.value.code == "rate_limited"
    t.check(LoginThrottle.account_key("default", "bob"), "9.9.9.9")


def test_revocation_list_forgets_after_a_token_lifetime() -> None:
    clock = ManualClock()
    revoked = RevocationList(clock, access_ttl_s=60)
    revoked.add("s1", clock.now_ms())
    assert revoked.is_revoked("s1") and not revoked.is_revoked("s2")
    clock.advance(revoked.horizon_ms + 1)
    assert not revoked.is_revoked("s1")
    assert len(revoked) == 0


def test_token_service_refuses_revoked_sessions_and_binds_devices() -> None:
    clock = ManualClock()
    revoked = RevocationList(clock, access_ttl_s=60)
    tokens = TokenService(
        [SigningKey("k1", b"x" * 32, 0, None)], clock, access_ttl_s=60, revocations=revoked
    )
    token = tokens.issue(1, 2, "s1", device_id="phone")
    claims = tokens.verify(token)
    assert (claims.session_id, claims.device_id) == ("s1", "phone")
    revoked.add("s1", clock.now_ms())
    with pytest.raises(Unauthenticated):
        tokens.verify(token)
    other = tokens.issue(1, 2, "s2")
    assert tokens.verify(other).device_id is None
    clock.advance(61_000)
    with pytest.raises(Unauthenticated):
        tokens.verify(other)


def test_keys_rotate_without_logging_anyone_out() -> None:
    clock = ManualClock()
    old = SigningKey("old", b"o" * 32, 0, None)
    tokens = TokenService([old], clock)
    token = tokens.issue(1, 2, "s1")
    tokens.replace_keys([SigningKey("new", b"n" * 32, 1, None), old])
    assert tokens.verify(token).user_id == 2
    tokens.replace_keys([SigningKey("new", b"n" * 32, 1, None)])
    with pytest.raises(Unauthenticated):
        tokens.verify(token)
