"""Running the one ASGI app under uvicorn with the studio's HTTP settings.

- The HTTP parser is always h11 (never httptools, whose limits differ), allowing request heads
  up to :data:`MAX_HEAD_BYTES`: a long ``X-API-Key`` still reaches the API and gets its JSON 401.
- What the parser itself refuses (not HTTP, or a head beyond that size) is answered in JSON too.
- Forwarded headers (X-Forwarded-For/-Proto) are believed only from the proxies the operator
  names (:func:`studio.security.forwarded_allow_ips`); by default they are ignored.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEAD_BYTES = 128 * 1024
BAD_REQUEST = {"error": "bad_request",
               "message": "The request is not valid HTTP, or its headers are larger than "
                          f"{MAX_HEAD_BYTES // 1024} KB."}


class JsonErrorH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering requests it cannot parse with a JSON 400."""

    def send_400_response(self, msg: str) -> None:
        import h11

        data = json.dumps(BAD_REQUEST).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(data)).encode())]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=data), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def uvicorn_options(host: str, port: int, forwarded: list[str] | None,
                    debug: bool = False) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.run`` for the studio's server."""
    return dict(host=host, port=port, log_level="debug" if debug else "info",
                server_header=False, timeout_graceful_shutdown=10,
                http=JsonErrorH11Protocol, h11_max_incomplete_event_size=MAX_HEAD_BYTES,
                proxy_headers=bool(forwarded), forwarded_allow_ips=forwarded or None)


def run_server(app: Any, host: str, port: int, forwarded: list[str] | None,
               debug: bool = False) -> None:
    """Serve ``app`` until stopped (SIGINT/SIGTERM)."""
    import uvicorn

    uvicorn.run(app, **uvicorn_options(host, port, forwarded, debug))
