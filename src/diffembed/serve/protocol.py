"""uvicorn's h11 protocol with the two things diffembed needs below the ASGI app.

* **JSON 400 for malformed HTTP.** A bad request line, header or Content-Length never reaches the
  app: h11 refuses it and uvicorn writes a ``text/plain`` 400 itself. Here that answer carries the
  same ``{"error": {...}}`` body as every other error.
* **An idle deadline that byte-dripping cannot reset.** Stock uvicorn arms its keep-alive timer only
  after a response and cancels it on every byte received, so a connection that never completes a
  request head (idle after connecting, or sending a header byte every few seconds) stays open
  forever. Here the timer also runs from the moment a connection opens, and only a complete request
  head (request line and headers) stops it. The request body has its own deadline
  (``BodyLimitMiddleware``), since the app, not the protocol, reads it.

It is passed to uvicorn as ``http=JsonErrorH11Protocol``, so it is used whether or not httptools is
installed. It relies on ``H11Protocol``'s internals (``send_400_response``, the keep-alive timer),
which the dependency lock pins; tests/serve/test_connections.py checks both behaviours on a real
server.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MALFORMED_MESSAGE = "malformed HTTP request (request line, headers or Content-Length); the connection is closed"


def malformed_body() -> bytes:
    return json.dumps({"error": {"message": MALFORMED_MESSAGE, "type": "invalid_request_error",
                                 "code": "malformed_http"}}, separators=(",", ":")).encode("utf-8")


class JsonErrorH11Protocol(H11Protocol):
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # The first request head must arrive within the keep-alive timeout, like any later one.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        # Unlike the parent, bytes alone do not cancel the idle timer: handle_events cancels it when
        # a whole request head has arrived (and on_response_complete re-arms it after the answer).
        self.conn.receive_data(data)
        self.handle_events()

    def send_400_response(self, msg: str) -> None:
        body = malformed_body()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            self.transport.write(self.conn.send(h11.Response(status_code=400, headers=headers,
                                                             reason=b"Bad Request")))
            self.transport.write(self.conn.send(h11.Data(data=body)))
            self.transport.write(self.conn.send(h11.EndOfMessage()))
        except h11.LocalProtocolError:  # a response had already begun on this connection: just close
            pass
        self.transport.close()
