"""bench/loadgen.py against a real HTTP server on 127.0.0.1 that fails on purpose.

Every failure kind is produced by a real socket doing the real thing (a 500, a connection closed
mid-answer, an answer slower than the timeout, a server that goes away), and the counts the
generator reports are checked against what the server did.
"""

from __future__ import annotations

import contextlib
import json
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from loadgen import (
    PROTOCOL,
    SESSION,
    SOCKET,
    STATUS,
    TIMEOUT,
    UNFINISHED,
    LoadGenerator,
    SessionLogin,
    percentile,
    weighted_picker,
)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.release = threading.Event()  # set at teardown: slow handlers give up at once
        self.sessions: set[str] = set()
        self.connections: set[socket.socket] = set()
        self.idle_close = 5.0  # seconds a keep-alive connection may stay idle
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.accepted = 0  # connections

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hung up (a timeout) is what these tests do on purpose

    def forget_sessions(self) -> None:
        with self.lock:
            self.sessions.clear()

    def go_away(self) -> None:
        """Stop as a crashed or removed server does: no listener, every connection closed."""
        self.shutdown()
        self.server_close()
        with self.lock:
            for conn in self.connections:
                with contextlib.suppress(OSError):  # closed by its client already
                    conn.shutdown(socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as HAProxy speaks it
    server: Server

    def setup(self) -> None:
        # An idle keep-alive connection is closed after this long (the read of the next request
        # times out).
        self.request.settimeout(self.server.idle_close)
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm and the client's
        # delayed ACK add 40 ms to every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.lock:
            self.server.connections.add(self.connection)
            self.server.accepted += 1

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes = b"ok\n", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path
        with self.server.lock:
            self.server.hits[path] = self.server.hits.get(path, 0) + 1
        if path == "/ok":
            self.reply(200)
        elif path == "/moved":
            self.reply(302, Location="/ok")
        elif path == "/fail":
            self.reply(500, b"boom\n")
        elif path == "/slow":
            self.server.release.wait(2.0)
            self.reply(200)
        elif path == "/cut":
            # Headers promise 1000 bytes; 10 arrive, then the connection closes.
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif path == "/drop":
            # Closed without a byte of an answer.
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif path == "/garbage":
            self.wfile.write(b"SPDY/9 nonsense\r\n\r\n")
            self.close_connection = True
        elif path == "/me":
            cookie = self.headers.get("Cookie", "")
            sid = cookie.partition("sid=")[2].split(";")[0]
            with self.server.lock:
                known = sid in self.server.sessions
            self.reply(200 if known else 401)
        else:
            self.reply(404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        data = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/login" and data.get("user"):
            sid = secrets.token_hex(8)
            with self.server.lock:
                self.server.sessions.add(sid)
            self.reply(200, Set_Cookie=f"sid={sid}; Path=/; HttpOnly")
        else:
            self.reply(400)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join()


def run(gen: LoadGenerator, seconds: float) -> LoadGenerator:
    with gen:
        time.sleep(seconds)
    return gen


# --- a clean server -------------------------------------------------------------------------


def test_a_clean_server_gives_no_failures_and_real_figures(server: Server) -> None:
    gen = LoadGenerator(server.url, paths=[("/ok", 3), "/moved"], concurrency=4)
    with gen:
        gen.phase("steady")
        time.sleep(0.3)
        gen.phase("deploy")
        time.sleep(0.3)
    report = gen.report()

    assert report.failures == 0
    assert report.retries == 0
    assert [p.name for p in report.phases] == ["steady", "deploy"]
    assert all(p.requests > 20 for p in report.phases)
    assert sum(p.requests for p in report.phases) == report.total.requests
    # Every request the server saw is one the report counts (3xx is a success, not followed).
    assert report.total.requests == server.hits["/ok"] + server.hits["/moved"]
    assert {s.status for s in report.samples} == {200, 302}
    lat = report.total.latency_ms
    assert lat["p50"] is not None and lat["p99"] is not None and lat["max"] is not None
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] < 1000  # type: ignore[operator]
    assert report.phase("deploy").rps > 0
    assert 0.25 < report.phase("steady").seconds < 0.5
    # One keep-alive connection per worker, kept for the whole run.
    assert server.accepted == 4
    json.dumps(report.to_dict(samples=True))
    assert "total" in report.format_table()


def test_a_paced_load_keeps_its_rate(server: Server) -> None:
    gen = run(LoadGenerator(server.url, paths=["/ok"], concurrency=4, rate=100), 0.6)
    report = gen.report()
    assert report.failures == 0
    assert 40 <= report.total.requests <= 75


# --- each failure kind ------------------------------------------------------------------------


def test_error_statuses_are_failures_counted_exactly(server: Server) -> None:
    gen = run(LoadGenerator(server.url, paths=[("/ok", 3), ("/fail", 1)], concurrency=4), 0.5)
    report = gen.report()

    fails = server.hits["/fail"]
    assert fails > 0
    assert report.total.failures_by_kind == {STATUS: fails}
    for sample in report.samples:
        if sample.path == "/fail":
            assert (sample.failure, sample.status) == (STATUS, 500)
            assert sample.detail.startswith("HTTP 500")
        else:
            assert (sample.failure, sample.status) == (None, 200)
    assert len(report.total.examples) == 5
    assert report.total.examples[0].path == "/fail"


def test_a_connection_closed_mid_answer_is_a_socket_failure_never_retried(server: Server) -> None:
    gen = run(LoadGenerator(server.url, paths=["/cut"], concurrency=2), 0.3)
    report = gen.report()

    assert report.total.requests == server.hits["/cut"] > 0
    assert report.total.failures_by_kind == {SOCKET: report.total.requests}
    # Bytes of the answer had arrived: sending the request again would not be safe.
    assert report.retries == 0
    assert "IncompleteRead" in report.total.examples[0].detail


def test_a_connection_closed_before_any_answer_on_a_fresh_connection_fails(
    server: Server,
) -> None:
    gen = run(LoadGenerator(server.url, paths=["/drop"], concurrency=2), 0.3)
    report = gen.report()

    assert report.total.failures_by_kind == {SOCKET: report.total.requests}
    assert report.total.requests > 0
    # Each request had a connection of its own (the server closes them): nothing to retry.
    assert report.retries == 0


def test_a_slow_answer_is_a_timeout(server: Server) -> None:
    gen = run(LoadGenerator(server.url, paths=["/slow"], concurrency=2, timeout=0.2), 0.5)
    report = gen.report()

    assert report.total.failures_by_kind == {TIMEOUT: report.total.requests}
    assert report.total.requests >= 2
    assert all(0.19 < s.end - s.start < 0.5 for s in report.samples)
    # No answer, so no latency figure: timeouts are counted, not averaged in.
    assert report.total.latency_ms["p99"] is None


def test_what_is_not_http_is_a_protocol_failure(server: Server) -> None:
    gen = run(LoadGenerator(server.url, paths=["/garbage"], concurrency=1), 0.2)
    report = gen.report()
    assert report.total.failures_by_kind == {PROTOCOL: report.total.requests}


def test_requests_in_flight_when_stop_gives_up_are_unfinished(server: Server) -> None:
    gen = LoadGenerator(server.url, paths=["/slow"], concurrency=3, timeout=5, stop_grace=0.2)
    with gen:
        time.sleep(0.2)
    started = time.monotonic()
    gen.stop()  # a second stop changes nothing
    report = gen.report()

    assert time.monotonic() - started < 0.1
    assert report.total.failures_by_kind == {UNFINISHED: 3}
    assert {s.worker for s in report.samples} == {0, 1, 2}
    server.release.set()
    time.sleep(0.1)  # the answers arriving now are not recorded twice
    assert gen.report().total.requests == 3


def test_a_refused_connection_is_a_socket_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connections are refused
        gen = run(LoadGenerator(f"http://127.0.0.1:{port}", paths=["/"], rate=50), 0.2)
    report = gen.report()
    assert report.total.failures_by_kind == {SOCKET: report.total.requests}
    assert "ConnectionRefusedError" in report.total.examples[0].detail


# --- idle keep-alive connections: the one retry -----------------------------------------------


def test_an_idle_connection_closed_by_the_server_is_retried_once_not_failed(
    server: Server,
) -> None:
    server.idle_close = 0.05  # the server closes keep-alive connections idle for 50 ms
    gen = run(LoadGenerator(server.url, paths=["/ok"], concurrency=2, rate=10), 0.85)
    report = gen.report()

    assert report.failures == 0
    # Every request after each worker's first found its connection closed while idle.
    assert report.total.requests >= 6
    assert report.retries == report.total.requests - 2
    assert all(s.status == 200 for s in report.samples)
    assert "first attempt on the idle connection" in report.total.retry_examples[0].detail


def test_a_server_that_goes_away_fails_every_request_after_one_retry_each(
    server: Server,
) -> None:
    gen = LoadGenerator(server.url, paths=["/ok"], concurrency=2, rate=100)
    with gen:
        gen.phase("up")
        time.sleep(0.3)
        gen.phase("going")  # requests in flight meanwhile may end either way
        server.go_away()
        gen.phase("gone")
        time.sleep(0.3)
    report = gen.report()

    assert report.phase("up").failures == 0
    gone = report.phase("gone")
    assert gone.requests > 10
    assert gone.failures_by_kind == {SOCKET: gone.requests}
    # The first request of each worker went out on its old connection and was retried (on a
    # fresh one, refused); later ones were refused at once.
    assert 1 <= report.retries <= 2
    assert all(s.failure == SOCKET for s in report.samples if s.retried)


# --- session mode -----------------------------------------------------------------------------


def test_session_mode_logs_in_once_and_counts_each_lost_session(server: Server) -> None:
    gen = LoadGenerator(server.url, paths=["/me"], concurrency=3, rate=150, session=SessionLogin())
    with gen:
        gen.phase("steady")
        time.sleep(0.3)
        gen.phase("deploy")
        server.forget_sessions()  # what a deploy that loses the sessions does
        time.sleep(0.3)
    report = gen.report()

    steady, deploy = report.phase("steady"), report.phase("deploy")
    assert steady.failures == 0
    logins = [s for s in report.samples if s.method == "POST"]
    assert len(logins) == 6  # each worker: once at start, once after its session was lost
    # Each worker notices once, then logs in again and carries on.
    assert deploy.failures_by_kind == {SESSION: 3}
    assert deploy.requests > 20
    last = {s.worker: s for s in report.samples}
    assert all(s.failure is None for s in last.values())


def test_without_session_mode_a_401_is_a_status_failure(server: Server) -> None:
    gen = run(LoadGenerator(server.url, paths=["/me"], concurrency=1, rate=50), 0.2)
    report = gen.report()
    assert report.total.failures_by_kind == {STATUS: report.total.requests}


# --- the parts --------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7
    assert percentile([], 50) is None


def test_weighted_picker_follows_the_weights() -> None:
    pick = weighted_picker(["/a", ("/b", 3)])
    rng = random.Random(1)
    drawn = [pick(rng) for _ in range(4000)]
    assert 0.7 < drawn.count("/b") / len(drawn) < 0.8
    with pytest.raises(ValueError, match="absolute path"):
        weighted_picker(["healthz"])
    with pytest.raises(ValueError, match="at least one"):
        weighted_picker([])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="http://"):
        LoadGenerator("https://example.org", paths=["/"])
    with pytest.raises(ValueError, match="concurrency"):
        LoadGenerator("http://127.0.0.1", paths=["/"], concurrency=0)
