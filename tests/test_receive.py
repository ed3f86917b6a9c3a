"""What a fleet daemon answers a POST (exporters/receive.py), called as the HTTP server
calls it, over a real spool directory. The daemon's own tests (tests/test_fleet.py) post
over mutual TLS; these check the answers a wave depends on."""

from __future__ import annotations

import hashlib
import json
from email.message import Message
from pathlib import Path

from capturegen import BOOT_NAMES, make_capture
from memledger.exporters.receive import CAPTURES_PATH, Receiver
from memledger.exporters.web import PostRequest
from memledger.exporters.webconfig import Identity
from memledger.spool.reader import Spool
from prometheus_client import CollectorRegistry


def _post(receiver: Receiver, body: bytes, cn: str = "host-1") -> tuple[int, str]:
    answer = receiver(PostRequest(CAPTURES_PATH, body, Identity("certificate", cn), Message()))
    text = answer.body.decode()
    return answer.status, (json.loads(text)["status"] if answer.status == 200 else text.strip())


def _spool(tmp_path: Path) -> Spool:
    spool = Spool(str(tmp_path / "spool"))
    spool.ensure()
    return spool


def test_a_full_spool_answers_busy_and_nothing_is_written(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    receiver = Receiver(spool, CollectorRegistry(), max_waiting=3, clock=lambda: 0.0)
    bodies = [make_capture(BOOT_NAMES[0], 1, b) for b in range(4)]
    assert [_post(receiver, body)[0] for body in bodies[:3]] == [200, 200, 200]
    status, line = _post(receiver, bodies[3])
    assert status == 503
    assert line == "busy: 3 files wait in the spool (the limit is 3); try again later"
    assert len(spool.waiting()) == 3
    # Within the second, the count is the last one plus what was accepted since: never
    # below what waits, whatever else happened.
    (tmp_path / "spool" / spool.waiting()[0]).unlink()
    assert _post(receiver, bodies[3])[0] == 503


def test_the_count_follows_the_spool_once_files_are_stored(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    now = [0.0]
    receiver = Receiver(spool, CollectorRegistry(), max_waiting=2, clock=lambda: now[0])
    bodies = [make_capture(BOOT_NAMES[0], 1, b) for b in range(3)]
    assert [_post(receiver, body)[0] for body in bodies[:2]] == [200, 200]
    assert _post(receiver, bodies[2])[0] == 503
    claim = spool.claim(spool.waiting()[0])
    assert claim is not None
    spool.mark_done(claim)          # the daemon stored one
    now[0] += 1.0                   # a second later, the spool is counted again
    assert _post(receiver, bodies[2]) == (200, "accepted")
    assert _post(receiver, bodies[0]) == (200, "duplicate")   # in done/, not again
    assert {n.rsplit("@", 1)[1] for n in spool.waiting()} == {
        hashlib.sha256(b).hexdigest() for b in bodies[1:]}
