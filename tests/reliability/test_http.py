"""/metrics under load, with stalled clients (issue 8).

wrk (Debian's) loads the real daemon on loopback for 5 s, as fast as it answers, with a
Lua check of every response: status 200 and the exact sample lines for the stored boot,
whose reclaimed bytes are the kernel's printed figure. Meanwhile 20 clients send half a
request and stall (slowloris): a normal scrape must still be answered, and the server
must drop the stalled ones after its client timeout. The rate reached is printed for the
docs/store.md; speed itself is measured in bench/, not asserted here.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from capturegen import BOOTS, make_capture
from conftest import kernel_efi_freed_bytes
from daemonrun import Daemon, drop, wait_for
from memledger.exporters.web import CLIENT_TIMEOUT_S
from prometheus_client.utils import floatToGoString

# Starts processes or servers (make fast leaves these out; make unit runs them).
pytestmark = pytest.mark.slow

CHECK_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0; good = 0; want = args end
function response(status, headers, body)
  local ok = status == 200
  for _, line in ipairs(want) do
    if not string.find(body, line, 1, true) then ok = false end
  end
  if ok then good = good + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local g, b = 0, 0
  for _, t in ipairs(threads) do g = g + t:get("good"); b = b + t:get("bad") end
  io.write(string.format("CHECKED good=%d bad=%d\\n", g, b))
end
"""

BOOT = "6.12.117+deb12-amd64-default"


def _stall(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=60)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never the blank line
    return s


def test_metrics_under_wrk_load_with_stalled_clients(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    d = Daemon(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", spool)
    drop(spool, "b.tar.gz", make_capture(BOOT, 1, 1))
    wait_for("the boot", lambda: (spool / "done" / "b.tar.gz").exists(), 60)
    freed = kernel_efi_freed_bytes((BOOTS / BOOT / "root" / "dmesg.txt").read_text())
    assert freed
    want = ["memledger_store_boots 1.0",
            f'memledger_efi_boot_services_bytes{{state="reclaimed"}} {floatToGoString(freed)}']
    url = f"http://{d.address}/metrics"
    body = d.get("/metrics")[2]
    assert all(w in body for w in want), body[:2000]
    (tmp_path / "check.lua").write_text(CHECK_LUA)
    stalled = [_stall(d.address) for _ in range(20)]
    load = subprocess.Popen(["wrk", "-t2", "-c16", "-d5s", "--timeout", "10s", "-s",
                             str(tmp_path / "check.lua"), url, "--", *want],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(2)
    with urllib.request.urlopen(url, timeout=10) as r:  # answered despite load and stalls
        text = r.read().decode()
        assert r.status == 200 and [w for w in want if w not in text] == [], text
    out, _ = load.communicate(timeout=60)
    assert load.returncode == 0, out
    m = re.search(r"CHECKED good=(\d+) bad=(\d+)", out)
    assert m, out
    good, bad = int(m[1]), int(m[2])
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    print(f"\nwrk: {good} correct responses, {bad} wrong, {rate:.0f} requests/s\n{out}")
    assert bad == 0 and good > 1000, out
    assert "Non-2xx" not in out, out
    # The stalled clients are dropped after the client timeout, not kept for ever.
    deadline = time.monotonic() + CLIENT_TIMEOUT_S + 20
    for s in stalled:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        assert s.recv(4096) == b"", "a stalled client was not dropped"
        s.close()
    assert d.metric("memledger_store_boots") == 1
    assert d.stop() == 0
    assert "Traceback" not in d.text()
