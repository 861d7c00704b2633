"""Client SDK tests run against a real node (``node``/``world`` from the e2e suite)."""

from tests.e2e.conftest import node, world  # noqa: F401
