"""A load generator for HTTP/1.1 through the balancer that reports every failed request.

The claim of a zero-downtime deploy is a count: the requests users sent while a release rolled out,
and how many of them failed. So this generator records every request (start, end, phase, status or
error kind), and a failure is never averaged away: the report counts them by kind, per phase, and
keeps the first few of each phase as examples.

Each worker thread holds one keep-alive connection, as a browser does. The one error it forgives is
the one a browser forgives: an idle keep-alive connection that the server closed meanwhile fails on
reuse before any byte of a response arrives; the request is then sent once more on a fresh
connection (RFC 9112, 9.3.1: the client cannot know that the server closed it). Such retries are
counted and reported on their own; any other error is a failure.

    with LoadGenerator("http://172.30.99.10", paths=["/", ("/healthz", 0.1)]) as load:
        load.phase("steady"); time.sleep(10)
        load.phase("deploy"); run_the_deploy()
    print(load.report().format_table())

Standard library only. It is test and bench support, not part of the package: the benches import
it from their own directory, the tests through pytest's pythonpath (pyproject.toml).
"""

from __future__ import annotations

import dataclasses
import http.client
import http.cookies
import io
import json
import math
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

# --- failure kinds ----------------------------------------------------------------------------

#: An answer that is not 2xx or 3xx (the status code is recorded).
STATUS = "status"
#: The connection was refused, reset or closed (mid-response too), after the one retry allowed.
SOCKET = "socket"
#: No complete answer within the per-request timeout.
TIMEOUT = "timeout"
#: Session mode: a request of a logged-in worker was answered as if it had no session (401).
SESSION = "session"
#: The server answered something that is not HTTP/1.x.
PROTOCOL = "protocol"
#: Still in flight when stop() gave up waiting for it.
UNFINISHED = "unfinished"
#: The request could not even be sent (a bug or a bad path on the client side).
CLIENT = "client"
FAILURE_KINDS = (STATUS, SOCKET, TIMEOUT, SESSION, PROTOCOL, UNFINISHED, CLIENT)

DEFAULT_CONCURRENCY = 8
DEFAULT_PHASE = "load"
_UNNAMED = ""  # the phase before the first phase() call (see LoadGenerator._first_phase)
DEFAULT_TIMEOUT = 5.0
#: How many failures (and retries) of each phase the report keeps as examples.
DEFAULT_EXAMPLES = 5

PathPicker = Callable[[random.Random], str]
#: Paths to request: a picker, or a list of paths, each a path (weight 1) or (path, weight).
PathMix = PathPicker | Sequence[str | tuple[str, float]]


def weighted_picker(mix: PathMix) -> PathPicker:
    """A picker for ``mix``: ``mix`` itself when it is callable, else a weighted random choice."""
    if callable(mix):
        return mix
    paths: list[str] = []
    weights: list[float] = []
    for entry in mix:
        path, weight = (entry, 1.0) if isinstance(entry, str) else entry
        if not path.startswith("/"):
            raise ValueError(f"path {path!r}: give an absolute path such as /healthz")
        if not weight > 0:
            raise ValueError(f"path {path!r}: weight {weight!r} must be positive")
        paths.append(path)
        weights.append(float(weight))
    if not paths:
        raise ValueError("give at least one path")

    def pick(rng: random.Random) -> str:
        return rng.choices(paths, weights)[0]

    return pick


def _default_login_body(worker: int) -> Mapping[str, Any]:
    return {"user": f"loadgen-{worker}"}


@dataclass(frozen=True)
class SessionLogin:
    """Session mode: each worker logs in once (POST ``path`` with ``body(worker)`` as JSON), keeps
    the cookies it is given and sends them with every request. An answer in ``lost_statuses`` while
    logged in means the session was lost (a failure of kind "session"); the worker then logs in
    again, as a user would, so that each loss counts once per worker."""

    path: str = "/login"
    body: Callable[[int], Mapping[str, Any]] = _default_login_body
    lost_statuses: frozenset[int] = frozenset({401})


# --- one request, as recorded -------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One request. Times are seconds since the generator started (monotonic clock)."""

    start: float
    end: float
    phase: str
    method: str
    path: str
    worker: int
    #: The HTTP status of the answer, None when there was none.
    status: int | None
    #: The failure kind (see FAILURE_KINDS), None when the request succeeded.
    failure: str | None
    detail: str = ""
    #: Sent a second time on a fresh connection after an idle keep-alive connection was closed.
    retried: bool = False

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ms": round(self.ms, 3)}


# --- the connection: http.client, metered ----------------------------------------------------


class _Meter:
    """Per connection: the current request's deadline, and how many bytes of its answer arrived
    (zero bytes is what makes a failed reuse of an idle connection safe to retry)."""

    __slots__ = ("deadline", "received")

    def __init__(self) -> None:
        self.deadline = math.inf
        self.received = 0

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("per-request timeout")
        return left


class _MeteredSocket(socket.socket):
    """The connection's socket, carrying the meter to the responses read from it."""

    meter: _Meter


class _MeteredReader(io.RawIOBase):
    """The raw stream a response reads: counts bytes, and bounds each read by the request's
    deadline, so that the timeout is per request (a server trickling bytes cannot extend it)."""

    def __init__(self, sock: _MeteredSocket) -> None:
        super().__init__()
        self._sock = sock
        # makefile, not SocketIO directly: it holds a reference that keeps the socket open for this
        # response after the connection lets go of it (a "Connection: close" answer).
        self._raw = sock.makefile("rb", buffering=0)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int | None:
        meter = self._sock.meter
        self._sock.settimeout(meter.remaining())
        count = self._raw.readinto(buffer)
        if count:
            meter.received += count
        return count

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _Response(http.client.HTTPResponse):
    def __init__(
        self,
        sock: socket.socket,
        debuglevel: int = 0,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(sock, debuglevel, method, url)
        if isinstance(sock, _MeteredSocket):
            self.fp.close()
            self.fp = io.BufferedReader(_MeteredReader(sock))


class _Connection(http.client.HTTPConnection):
    response_class = _Response

    def __init__(self, host: str, port: int | None) -> None:
        super().__init__(host, port)
        self.meter = _Meter()

    def connect(self) -> None:
        self.timeout = self.meter.remaining()
        super().connect()
        plain = self.sock
        metered = _MeteredSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        # At once: a socket made from a descriptor starts "blocking" while the descriptor is not.
        metered.settimeout(self.meter.remaining())
        metered.meter = self.meter
        self.sock = metered


# --- the generator ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    status: int
    reason: str
    headers: http.client.HTTPMessage


class _Worker:
    def __init__(self, gen: LoadGenerator, index: int) -> None:
        self.gen = gen
        self.index = index
        self.rng = random.Random(f"{gen.seed}-{index}")
        self.conn = _Connection(gen.host, gen.port)
        self.cookies: dict[str, str] = {}
        self.logged_in = False

    def run(self) -> None:
        gen = self.gen
        interval = gen.concurrency / gen.rate if gen.rate else 0.0
        # Workers start spread over one interval, so that a paced load is even, not in bursts.
        next_at = time.monotonic() + interval * self.index / gen.concurrency
        try:
            while not gen.stopping.is_set():
                if interval:
                    delay = next_at - time.monotonic()
                    if delay > 0 and gen.stopping.wait(delay):
                        break
                    # Behind schedule (a slow answer): go on from now rather than burst to catch up.
                    next_at = max(next_at + interval, time.monotonic())
                if gen.session is not None and not self.logged_in:
                    self.login(gen.session)
                else:
                    self.request("GET", gen.pick(self.rng))
        finally:
            self.conn.close()

    def login(self, login: SessionLogin) -> None:
        body = json.dumps(dict(login.body(self.index))).encode()
        answer = self.request("POST", login.path, body)
        self.logged_in = answer is not None and 200 <= answer.status < 300

    def request(self, method: str, path: str, body: bytes | None = None) -> _Answer | None:
        gen = self.gen
        full_path = gen.prefix + path
        phase = gen.current_phase
        started = time.monotonic()
        gen.begin(self.index, started, phase, method, full_path)
        deadline = started + gen.timeout
        reused = self.conn.sock is not None
        retried = False
        retry_cause = ""
        answer: _Answer | None = None
        failure: str | None = None
        detail = ""
        try:
            try:
                answer = self._exchange(method, full_path, body, deadline)
            except ConnectionError as error:
                # A refused connect is never a stale keep-alive connection; a reset or close of a
                # reused one before any byte of the answer is (the server closed it while idle).
                # Repeating is safe for what this generator sends: GETs, and a login that only
                # opens a new session.
                if (
                    not reused
                    or self.conn.meter.received
                    or isinstance(error, ConnectionRefusedError)
                ):
                    raise
                retried = True
                retry_cause = _describe(error)
                self.conn.close()
                answer = self._exchange(method, full_path, body, deadline)
        except TimeoutError as error:
            failure, detail = TIMEOUT, f"no complete answer within {gen.timeout:g} s ({error})"
        except http.client.IncompleteRead as error:
            failure, detail = SOCKET, f"connection closed mid-answer: {error!r}"
        except OSError as error:
            failure, detail = SOCKET, _describe(error)
        except http.client.HTTPException as error:
            failure, detail = PROTOCOL, _describe(error)
        except Exception as error:  # recorded, not raised: a dead worker would silently shed load
            failure, detail = CLIENT, _describe(error)
        if failure is not None:
            self.conn.close()  # its state is unknown after an error: the next request reconnects
        elif answer is not None:
            self._remember_cookies(answer)
            failure, detail = self._judge(answer)
        if retried:
            retry_note = f"first attempt on the idle connection: {retry_cause}"
            detail = f"{detail}; {retry_note}" if detail else retry_note
        gen.record(
            Sample(
                start=started - gen.started,
                end=time.monotonic() - gen.started,
                phase=phase,
                method=method,
                path=full_path,
                worker=self.index,
                status=answer.status if answer is not None else None,
                failure=failure,
                detail=detail,
                retried=retried,
            )
        )
        return answer

    def _exchange(self, method: str, path: str, body: bytes | None, deadline: float) -> _Answer:
        conn = self.conn
        conn.meter.deadline = deadline
        conn.meter.received = 0
        headers = {"User-Agent": "deploykit-loadgen", "Accept-Encoding": "identity"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if conn.sock is not None:
            conn.sock.settimeout(conn.meter.remaining())
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()  # the whole answer: its latency, and the connection ready for reuse
        return _Answer(response.status, response.reason, response.headers)

    def _remember_cookies(self, answer: _Answer) -> None:
        if self.gen.session is None:
            return
        for header in answer.headers.get_all("Set-Cookie") or []:
            jar = http.cookies.SimpleCookie()
            try:
                jar.load(header)
            except http.cookies.CookieError:
                continue
            for name, morsel in jar.items():
                if not morsel.value or morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value

    def _judge(self, answer: _Answer) -> tuple[str | None, str]:
        login = self.gen.session
        served_by = answer.headers.get("X-Served-By")
        by = f" from {served_by}" if served_by else ""
        if login is not None and self.logged_in and answer.status in login.lost_statuses:
            self.logged_in = False  # log in again, as the user would
            return SESSION, f"HTTP {answer.status}{by}: the session was lost"
        if 200 <= answer.status < 400:
            return None, ""
        return STATUS, f"HTTP {answer.status} {answer.reason}{by}"


def _labelled(sample: Sample, first: str) -> Sample:
    return dataclasses.replace(sample, phase=first) if sample.phase == _UNNAMED else sample


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class LoadGenerator:
    """``concurrency`` worker threads, each with its own keep-alive connection to ``base_url``
    (http only), requesting paths from ``paths`` until stopped.

    ``rate`` (requests/s, all workers together) paces the load; None sends as fast as answers
    come. ``timeout`` bounds each request from its start to the last byte of its answer.
    ``stop_grace`` is how long stop() waits for requests in flight (default: the timeout and a
    second) before it records them as "unfinished".
    """

    def __init__(
        self,
        base_url: str,
        *,
        paths: PathMix,
        concurrency: int = DEFAULT_CONCURRENCY,
        rate: float | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        session: SessionLogin | None = None,
        stop_grace: float | None = None,
        seed: int | str = 0,
    ) -> None:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"{base_url!r}: give an http:// URL such as http://172.30.99.10")
        if concurrency < 1:
            raise ValueError(f"concurrency {concurrency}: give at least 1")
        if rate is not None and not rate > 0:
            raise ValueError(f"rate {rate!r}: give a positive number of requests/s, or None")
        if not timeout > 0:
            raise ValueError(f"timeout {timeout!r}: give a positive number of seconds")
        self.base_url = base_url
        self.host = url.hostname
        self.port = url.port
        self.prefix = url.path.rstrip("/")
        self.pick = weighted_picker(paths)
        self.concurrency = concurrency
        self.rate = rate
        self.timeout = timeout
        self.session = session
        self.stop_grace = timeout + 1.0 if stop_grace is None else stop_grace
        self.seed = seed
        self.stopping = threading.Event()
        self.current_phase = _UNNAMED
        self.started = 0.0
        self.started_at = 0.0  # the same instant on the wall clock (Unix time), for reports
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self._inflight: dict[int, tuple[float, str, str, str]] = {}
        self._phases: list[tuple[str, float]] = []  # (label, entered at), in order
        self._stopped_at: float | None = None
        self._threads: list[threading.Thread] = []

    # -- control ----------------------------------------------------------------------------

    def start(self) -> Self:
        if self._threads:
            raise RuntimeError("this load generator was started already")
        self.started = time.monotonic()
        self.started_at = time.time()
        self._phases.append((self.current_phase, 0.0))
        for index in range(self.concurrency):
            worker = _Worker(self, index)
            thread = threading.Thread(
                target=worker.run, name=f"loadgen-{index}", daemon=True
            )  # daemon: a request stuck past stop() must not keep the program alive
            self._threads.append(thread)
            thread.start()
        return self

    def phase(self, label: str) -> None:
        """Requests started from now on belong to phase ``label``."""
        if not label:
            raise ValueError("give the phase a label")
        with self._lock:
            self.current_phase = label
            if self._threads and self._stopped_at is None:
                self._phases.append((label, time.monotonic() - self.started))

    def stop(self) -> None:
        """Stop sending; wait up to ``stop_grace`` for the requests in flight, then record those
        still running as "unfinished". Safe to call twice."""
        if self._stopped_at is not None or not self._threads:
            return
        self.stopping.set()
        stop_at = time.monotonic()
        give_up = stop_at + self.stop_grace
        for thread in self._threads:
            thread.join(max(0.0, give_up - time.monotonic()))
        with self._lock:
            self._stopped_at = stop_at - self.started
            now = time.monotonic() - self.started
            for worker, (start, phase, method, path) in sorted(self._inflight.items()):
                self._samples.append(
                    Sample(
                        start=start,
                        end=now,
                        phase=phase,
                        method=method,
                        path=path,
                        worker=worker,
                        status=None,
                        failure=UNFINISHED,
                        detail=f"still in flight {self.stop_grace:g} s after stop()",
                    )
                )
            self._inflight.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what workers report ----------------------------------------------------------------

    def begin(self, worker: int, started: float, phase: str, method: str, path: str) -> None:
        with self._lock:
            self._inflight[worker] = (started - self.started, phase, method, path)

    def record(self, sample: Sample) -> None:
        with self._lock:
            if self._stopped_at is not None:
                return  # recorded as unfinished already, when stop() gave up waiting for it
            self._inflight.pop(sample.worker, None)
            self._samples.append(sample)

    # -- results ----------------------------------------------------------------------------

    def _first_phase(self) -> str:
        """The label of the requests started before the first phase() call: that of the first
        phase named (workers start at once, so the first phase() after start() comes after a few
        requests, which belong to it), or "load" when no phase was ever named."""
        return next((label for label, _ in self._phases if label != _UNNAMED), DEFAULT_PHASE)

    @property
    def samples(self) -> list[Sample]:
        """Every request recorded so far, in the order they ended."""
        with self._lock:
            first = self._first_phase()
            return [_labelled(s, first) for s in self._samples]

    def report(self, examples: int = DEFAULT_EXAMPLES) -> Report:
        """Per phase and in total: requests, failures by kind (with examples), retries,
        latencies and rate. While running, a snapshot up to now."""
        with self._lock:
            first = self._first_phase()
            samples = sorted((_labelled(s, first) for s in self._samples), key=lambda s: s.start)
            phases = [(label or first, entered) for label, entered in self._phases]
            end = (
                self._stopped_at
                if self._stopped_at is not None
                else (time.monotonic() - self.started if self._threads else 0.0)
            )
        seconds: dict[str, float] = {}
        for i, (label, entered) in enumerate(phases):
            left = phases[i + 1][1] if i + 1 < len(phases) else end
            seconds[label] = seconds.get(label, 0.0) + max(0.0, left - entered)
        by_phase: dict[str, list[Sample]] = {label: [] for label in seconds}
        for sample in samples:
            by_phase.setdefault(sample.phase, []).append(sample)
        return Report(
            base_url=self.base_url,
            started_at=self.started_at,
            concurrency=self.concurrency,
            phases=tuple(
                PhaseReport.of(label, seconds.get(label, 0.0), found, examples)
                for label, found in by_phase.items()
            ),
            total=PhaseReport.of("total", end, samples, examples),
            samples=tuple(samples),
        )


# --- the report -------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile of ``values`` (sorted or not); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class PhaseReport:
    name: str
    seconds: float
    requests: int
    failures_by_kind: dict[str, int]
    #: The first failures of the phase, in the order they started.
    examples: tuple[Sample, ...]
    retries: int
    retry_examples: tuple[Sample, ...]
    #: Latencies (ms) of the requests that got an answer, whatever its status.
    latency_ms: dict[str, float | None] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, seconds: float, samples: Sequence[Sample], examples: int) -> Self:
        failed = [s for s in samples if s.failure is not None]
        by_kind: dict[str, int] = {}
        for sample in failed:
            assert sample.failure is not None
            by_kind[sample.failure] = by_kind.get(sample.failure, 0) + 1
        retried = [s for s in samples if s.retried]
        answered = [s.ms for s in samples if s.status is not None]
        return cls(
            name=name,
            seconds=seconds,
            requests=len(samples),
            failures_by_kind=by_kind,
            examples=tuple(failed[:examples]),
            retries=len(retried),
            retry_examples=tuple(retried[:examples]),
            latency_ms={
                "p50": percentile(answered, 50),
                "p90": percentile(answered, 90),
                "p99": percentile(answered, 99),
                "max": max(answered) if answered else None,
            },
        )

    @property
    def failures(self) -> int:
        return sum(self.failures_by_kind.values())

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "requests_per_second": round(self.rps, 2),
            "failures": self.failures,
            "failures_by_kind": dict(self.failures_by_kind),
            "examples": [s.to_dict() for s in self.examples],
            "retries": self.retries,
            "retry_examples": [s.to_dict() for s in self.retry_examples],
            "latency_ms": {
                k: None if v is None else round(v, 3) for k, v in self.latency_ms.items()
            },
        }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@dataclass(frozen=True)
class Report:
    base_url: str
    started_at: float
    concurrency: int
    phases: tuple[PhaseReport, ...]
    total: PhaseReport
    samples: tuple[Sample, ...] = field(repr=False)

    @property
    def failures(self) -> int:
        return self.total.failures

    @property
    def retries(self) -> int:
        return self.total.retries

    def phase(self, name: str) -> PhaseReport:
        for phase in self.phases:
            if phase.name == name:
                return phase
        return PhaseReport.of(name, 0.0, [], 0)

    def to_dict(self, *, samples: bool = False) -> dict[str, Any]:
        """For JSON. ``samples`` adds every request (large: one entry per request)."""
        data: dict[str, Any] = {
            "base_url": self.base_url,
            "started_at": self.started_at,
            "concurrency": self.concurrency,
            "failures": self.failures,
            "retries": self.retries,
            "phases": [p.to_dict() for p in self.phases],
            "total": self.total.to_dict(),
        }
        if samples:
            data["samples"] = [s.to_dict() for s in self.samples]
        return data

    def format_table(self) -> str:
        """A table for people: one line per phase and the total, then every example failure
        and retry (times are seconds since the load started)."""
        header = (
            f"{'phase':<16} {'seconds':>8} {'requests':>9} {'req/s':>8} {'failures':>9} "
            f"{'retries':>8} {'p50':>8} {'p90':>8} {'p99':>8} {'max ms':>8}  failures by kind"
        )
        lines = [header, "-" * len(header)]
        for phase in (*self.phases, self.total):
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(phase.failures_by_kind.items()))
            lat = phase.latency_ms
            lines.append(
                f"{phase.name:<16} {phase.seconds:>8.1f} {phase.requests:>9} {phase.rps:>8.1f} "
                f"{phase.failures:>9} {phase.retries:>8} {_ms(lat.get('p50')):>8} "
                f"{_ms(lat.get('p90')):>8} {_ms(lat.get('p99')):>8} {_ms(lat.get('max')):>8}"
                f"  {kinds}".rstrip()
            )
        for phase in self.phases:
            for title, shown, count in (
                ("failure", phase.examples, phase.failures),
                ("retry", phase.retry_examples, phase.retries),
            ):
                for sample in shown:
                    what = sample.failure or "retried, then answered"
                    lines.append(
                        f"  {title} [{phase.name}] t={sample.start:.3f} s {sample.method} "
                        f"{sample.path}: {what}: {sample.detail or f'HTTP {sample.status}'}"
                    )
                if count > len(shown):
                    lines.append(f"  ... and {count - len(shown)} more {title}(s) in {phase.name}")
        return "\n".join(lines)
