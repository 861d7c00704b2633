"""What an open connection keeps: not the upgrade's headers or query string."""

from __future__ import annotations

from parley.gateway.connection import WsConnection

from .support import TEXT, RawWs, Recorder, TokenAuth, running


async def test_open_connection_drops_the_upgrade_headers_and_query() -> None:
    rec, auth = Recorder(echo=True), TokenAuth()
    async with running(rec, auth) as server:
        _, _, client = await RawWs.connect(
            server.port, "/v1/ws?device=dev-1", [("Authorization", "Bearer good-7")]
        )
        conn = await rec.next_open()
        assert auth.requests[0].headers["authorization"] == "Bearer good-7"  # seen, then dropped
        assert isinstance(conn, WsConnection)
        transport = conn._transport
        assert transport is not None
        assert transport.request.path == b"/v1/ws"
        assert len(transport.request.headers) == 0
        assert len(transport.response.headers) == 0
        client.send(TEXT, b"still works")
        assert (await client.recv()).payload == b"still works"
        await client.close()
