"""The protocol's tunable limits, validated once and passed down explicitly."""

from __future__ import annotations

from dataclasses import dataclass

from parley.errors import ConfigError
from parley.protocol.frames import (
    MAX_CONVS_PAGE,
    MAX_HISTORY_PAGE,
    MAX_ID,
    MAX_SYNC_PAGE,
    WelcomeLimits,
)

__all__ = ["MAX_MENTIONS", "MAX_TEXT_CHARS", "MIN_FRAME_BYTES", "Limits"]

MAX_MENTIONS = 100
"""Most user ids one text message may mention (fixed by the protocol)."""

MAX_TEXT_CHARS = 65_536
"""Highest configurable ``max_text_chars`` (the static bound of ``text.text``)."""

MIN_FRAME_BYTES = 1024
"""Smallest accepted ``max_frame_bytes``: every control frame must fit."""

_DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Limits enforced by the codec and body validation.

    Page caps may only lower the protocol maxima (1000 / 200 / 500): requested
    ``limit`` values above a cap are clamped by the codec, not refused.
    Construction raises :class:`~parley.errors.ConfigError` on a bad value.
    """

    max_frame_bytes: int = 65_536
    max_text_chars: int = 8_000
    max_custom_bytes: int = 16_384
    mid_max_past_ms: int = 7 * _DAY_MS
    mid_max_future_ms: int = 5 * 60_000
    sync_page_max: int = MAX_SYNC_PAGE
    history_page_max: int = MAX_HISTORY_PAGE
    convs_page_max: int = MAX_CONVS_PAGE

    def __post_init__(self) -> None:
        _between("max_frame_bytes", self.max_frame_bytes, MIN_FRAME_BYTES, 16 * 1024 * 1024)
        _between("max_text_chars", self.max_text_chars, 1, MAX_TEXT_CHARS)
        _between("max_custom_bytes", self.max_custom_bytes, 16, 16 * 1024 * 1024)
        _between("mid_max_past_ms", self.mid_max_past_ms, 0, MAX_ID - 1)
        _between("mid_max_future_ms", self.mid_max_future_ms, 0, MAX_ID - 1)
        _between("sync_page_max", self.sync_page_max, 1, MAX_SYNC_PAGE)
        _between("history_page_max", self.history_page_max, 1, MAX_HISTORY_PAGE)
        _between("convs_page_max", self.convs_page_max, 1, MAX_CONVS_PAGE)

    def welcome(self, *, recall_window_ms: int | None = None) -> WelcomeLimits:
        """The ``limits`` object of the ``welcome`` frame for these limits."""
        return WelcomeLimits(
            max_frame_bytes=self.max_frame_bytes,
            max_text_chars=self.max_text_chars,
            max_custom_bytes=self.max_custom_bytes,
            max_mentions=MAX_MENTIONS,
            sync_page_max=self.sync_page_max,
            history_page_max=self.history_page_max,
            convs_page_max=self.convs_page_max,
            mid_max_past_ms=self.mid_max_past_ms,
            mid_max_future_ms=self.mid_max_future_ms,
            recall_window_ms=recall_window_ms,
        )


def _between(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            f"protocol limit {name} must be an integer in [{low}, {high}], got {value!r}"
        )
