"""A fleet daemon's ``POST /api/v1/captures``: a host's capture file or event batch, taken
into the spool before the answer.

The body is one file exactly as ``memledger capture`` and ``collect`` write it. The answer
comes once the file is durably in the spool (fsync, rename, fsync of the directory), under
a name that records who sent it (spool/received.py); the spool's checks and the parser's
limits then apply to it as to any spool file, and the store keeps its boots under that
sender's host. Answers, each a one-line text/plain body unless said:

- 200 ``{"status": "accepted" | "duplicate", "sha256": …}`` (JSON): in the spool now, or it
  was already (waiting, being stored, or in done/);
- 400 the body does not match its ``X-Memledger-Sha256`` (damaged on the way);
- 403 no authenticated sender (a client certificate or a basic_auth user of
  ``--web.config.file``): a boot is stored under who sent it, never under what the file
  claims, so an anonymous body has no host;
- 404 another path; 415 not a capture or an event batch;
- 503 with ``Retry-After``: the spool holds ``max_waiting`` files, or its file system
  is nearly full. Nothing is lost: the sender keeps the file and tries again.

The spool is counted at most once a second (a count per POST was a directory listing per
file: 12 % of the daemon's time in a reboot wave), plus every file accepted since: an
upper bound, since files stored meanwhile are not subtracted, so the limit is never
passed, and a 503 that a stale count gave lasts until the next count.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable

from memledger.exporters.web import PostAnswer, PostRequest
from memledger.spool.reader import Spool
from memledger.spool.received import SENDER_MAX, received_name
from memledger.tracer.capture import is_capture
from memledger.tracer.runtime import is_batch
from prometheus_client import CollectorRegistry, Counter

__all__ = ("CAPTURES_PATH", "RESULTS", "Receiver", "sender_name")

CAPTURES_PATH = "/api/v1/captures"
RESULTS = ("accepted", "duplicate", "refused", "busy")
# Free space the spool's file system keeps beyond one more file: the database, the log and
# done/ live there too.
_FREE_RESERVE = 256 << 20
_RETRY_AFTER_S = 30
_COUNT_EVERY_S = 1.0


def sender_name(req: PostRequest) -> str | None:
    """Who sent a request, as the store names a host's sender: "certificate:CN" for a
    verified client certificate, "user:NAME" for a basic_auth user; None: nobody known."""
    return None if req.identity is None else f"{req.identity.kind}:{req.identity.name}"


def _text(status: int, line: str, **headers: str) -> PostAnswer:
    return PostAnswer(status, {"Content-Type": "text/plain; charset=utf-8", **headers},
                      (line + "\n").encode())


class Receiver:
    """Answers POSTs on the HTTP server's threads; the spool is touched by path only."""

    def __init__(self, spool: Spool, registry: CollectorRegistry, max_waiting: int = 10_000,
                 arrived: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spool = spool
        self.max_waiting = max_waiting
        self.arrived = arrived  # told each new file's spool name, once it is there
        self._clock = clock
        self._lock = threading.Lock()
        self._counted_at: float | None = None   # when the spool was last counted
        self._waiting = 0                       # that count, plus the files accepted since
        self.total = Counter("memledger_received", "Files hosts sent to this fleet daemon, by "
                             "answer (accepted: in the spool; duplicate: it was already; "
                             "refused: 4xx; busy: 503).", ["result"], registry=registry)
        for result in RESULTS:
            self.total.labels(result)

    def _count(self, result: str, answer: PostAnswer) -> PostAnswer:
        self.total.labels(result).inc()
        return answer

    def _waiting_at_most(self) -> int:
        """How many files wait in the spool, at most."""
        with self._lock:
            now = self._clock()
            if self._counted_at is None or now - self._counted_at >= _COUNT_EVERY_S:
                self._waiting, self._counted_at = self.spool.count_waiting(), now
            return self._waiting

    def _accepted(self) -> None:
        with self._lock:
            self._waiting += 1

    def _busy(self, size: int) -> str | None:
        waiting = self._waiting_at_most()
        if waiting >= self.max_waiting:
            return f"{waiting} files wait in the spool (the limit is {self.max_waiting})"
        try:
            st = os.statvfs(self.spool.path)
        except OSError as exc:
            return f"cannot check the spool's file system ({os.strerror(exc.errno or 0)})"
        if st.f_bavail * st.f_frsize < size + _FREE_RESERVE:
            return "the spool's file system is nearly full"
        return None

    def __call__(self, req: PostRequest) -> PostAnswer:
        body, headers, sender = req.body, req.headers, sender_name(req)
        if req.path.split("?", 1)[0] != CAPTURES_PATH:
            return _text(404, f"not found; captures are posted to {CAPTURES_PATH}")
        if not sender:
            return self._count("refused", _text(
                403, "no authenticated sender: a fleet daemon stores a boot under the client "
                     "certificate or basic_auth user that sent it (--web.config.file)"))
        if len(sender) > SENDER_MAX:
            return self._count("refused", _text(
                403, f"the sender's name is over {SENDER_MAX} characters"))
        sha = hashlib.sha256(body).hexdigest()
        claimed = headers.get("X-Memledger-Sha256")
        if claimed is not None and claimed.strip().lower() != sha:
            return self._count("refused", _text(
                400, f"the body's sha256 is {sha}, not the {claimed.strip()[:64]} its "
                     "X-Memledger-Sha256 says (damaged on the way)"))
        if not (is_capture(body[:2]) or is_batch(body)):
            return self._count("refused", _text(
                415, "not a memledger capture file or event batch"))
        name = received_name(sender, sha)
        if self.spool.holds(name):
            return self._count("duplicate", _json("duplicate", sha))
        if (why := self._busy(len(body))) is not None:
            return self._count("busy", _text(503, f"busy: {why}; try again later",
                                             **{"Retry-After": str(_RETRY_AFTER_S)}))
        try:
            self.spool.put(name, body)
        except OSError as exc:
            return self._count("busy", _text(
                503, f"busy: cannot write into the spool ({os.strerror(exc.errno or 0)})",
                **{"Retry-After": str(_RETRY_AFTER_S)}))
        self._accepted()
        if self.arrived is not None:
            self.arrived(name)
        return self._count("accepted", _json("accepted", sha))


def _json(status: str, sha: str) -> PostAnswer:
    return PostAnswer(200, {"Content-Type": "application/json"},
                      (json.dumps({"status": status, "sha256": sha}) + "\n").encode())
