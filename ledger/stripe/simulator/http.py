"""The simulator over real HTTP on 127.0.0.1: `SimulatorServer`.

This layer carries out what the engine's answers ask for: it spends each /v1 request's
latency between the engine's `begin` and `finish` (a money-moving POST holds its idempotency
key meanwhile), holds a "slow" answer, and closes the connection unanswered for a dropped
one. Webhook deliveries go out from a thread of their own.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import socketserver
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TextIO
from urllib.parse import urlsplit

from ledger.stripe.simulator.api import ApiRequest, ApiResponse, invalid
from ledger.stripe.simulator.control import answer_control
from ledger.stripe.simulator.engine import StripeSimulator
from ledger.stripe.simulator.webhooks import DEFAULT_RETRY_DELAYS, DeliveryAttempt, WebhookSender


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # 64 clients connecting at once must not overflow the listen backlog (default 5).
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        simulator: StripeSimulator,
        access_log: TextIO | None,
        log_lock: threading.Lock,
    ) -> None:
        self.simulator = simulator
        self.access_log = access_log
        self.log_lock = log_lock
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Tracked so stop() can close idle keep-alive connections whose threads wait on them.
        with self._connections_lock:
            self._connections.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that died mid-request (a SIGKILLed daemon, in the crash
        # tests) is business as usual for a server; anything else is reported.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; Nagle would hold the body for the client's ACK.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        # The access log is written by _log; http.server's own lines are not wanted.
        pass

    def _serve(self) -> None:
        split = urlsplit(self.path)
        try:
            body = self._read_body()
        except ValueError as error:
            self.close_connection = True
            response = invalid(str(error)).response()
            response.request_id = f"req_{secrets.token_hex(7)}"
            self._send(response)
            return
        simulator = self.server.simulator
        if split.path == "/_sim" or split.path.startswith("/_sim/"):
            # Tests' steering: no API key, never rate-limited.
            response = answer_control(simulator, self.command, split.path, body)
            # Not from the seeded generator: a test polling /_sim/state must not
            # change the ids and faults the API requests draw.
            response.request_id = f"req_{secrets.token_hex(7)}"
        else:
            call = simulator.begin(
                ApiRequest(
                    method=self.command,
                    path=split.path,
                    query=split.query,
                    body=body,
                    authorization=self.headers.get("Authorization"),
                    idempotency_key=self.headers.get("Idempotency-Key"),
                    stripe_version=self.headers.get("Stripe-Version"),
                )
            )
            # The latency, spent with the key held: a concurrent request with it gets 409.
            # A server stopping cuts it short; the request still finishes, freeing its key.
            latency = simulator.config.latency_ms / 1000
            if latency > 0:
                self.server.stopping.wait(latency)
            response = simulator.finish(call)
        self._log(split.path, response)
        if response.drop:
            # Committed and saved, but the client hears nothing: not a byte of the answer.
            self.close_connection = True
            return
        if response.delay_seconds > 0 and self.server.stopping.wait(response.delay_seconds):
            self.close_connection = True
            return
        self._send(response)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise ValueError("stripe-sim needs a Content-Length; chunked bodies are not supported")
        length_header = self.headers.get("Content-Length") or "0"
        if not length_header.isdigit():
            raise ValueError("invalid Content-Length")
        length = int(length_header)
        return self.rfile.read(length) if length else b""

    def _send(self, response: ApiResponse) -> None:
        data = json.dumps(response.body).encode()
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", response.request_id)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (a timeout during a slow answer): nothing left to tell it.
            self.close_connection = True

    def _log(self, path: str, response: ApiResponse) -> None:
        log = self.server.access_log
        if log is None:
            return
        # Method, path, status and fault only: never headers, so never the API key.
        notes = "".join(
            (
                f" fault={response.fault}" if response.fault else "",
                " rate-limited" if response.rate_limited else "",
                " replayed" if response.replayed else "",
                " (dropped)" if response.drop else "",
            )
        )
        line = f"stripe-sim {self.command} {path} {response.status}{notes}\n"
        with self.server.log_lock, contextlib.suppress(OSError, ValueError):
            log.write(line)
            log.flush()


class SimulatorServer:
    """The simulator served over HTTP from a background thread; a context manager.

    With ``webhook_url`` configured, each event the engine records is POSTed there, signed,
    from a thread of its own (retried after ``webhook_retry_delays`` on failure)."""

    def __init__(
        self,
        simulator: StripeSimulator,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        access_log: TextIO | None = None,
        webhook_retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
    ) -> None:
        self.simulator = simulator
        self.host = host
        self._requested_port = port
        self._access_log = access_log
        self._log_lock = threading.Lock()
        self._webhook_retry_delays = tuple(webhook_retry_delays)
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._sender: WebhookSender | None = None

    def start(self) -> SimulatorServer:
        """Bind and serve in a background thread; raises OSError if the port is taken."""
        if self._server is not None:
            raise RuntimeError("the stripe-sim server is already started")
        server = _HTTPServer(
            (self.host, self._requested_port), self.simulator, self._access_log, self._log_lock
        )
        self._server = server
        url = self.simulator.config.webhook_url
        if url is not None:
            self._sender = WebhookSender(
                url,
                self.simulator.take_deliveries,
                retry_delays=self._webhook_retry_delays,
                log=self._access_log,
                log_lock=self._log_lock,
            )
            self.simulator.set_delivery_listener(self._sender.wake)
            self._sender.start()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="stripe-sim",
            daemon=True,
        )
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the stripe-sim server is not started")
        return self._server.server_port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def webhook_attempts(self) -> list[DeliveryAttempt]:
        """Every webhook delivery attempt so far, oldest first (none without a URL)."""
        return self._sender.attempts() if self._sender is not None else []

    def stop(self) -> None:
        """Stop serving, wake slow answers, close open connections and stop delivering
        webhooks; safe to repeat."""
        server, thread, sender = self._server, self._thread, self._sender
        if server is None:
            return
        self._server = self._thread = self._sender = None
        server.shutdown()
        server.stopping.set()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join()
        if sender is not None:
            self.simulator.set_delivery_listener(None)
            sender.stop()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
