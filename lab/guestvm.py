"""Run the lab's Debian guest (lab/guest.py) under QEMU + OVMF, and drive it.

Commands run in the guest through the QEMU guest agent (qemu-guest-agent in the
guest, a virtio-serial port here): ``guest-exec`` and ``guest-exec-status`` over a
unix socket, JSON in both directions. The client is a few lines written here, because
the protocol is small and the ``qemu.qmp`` package speaks QMP, whose greeting and
capability negotiation the guest agent does not have. After a reboot (kexec) the agent
comes back on the same socket; ``guest-sync-delimited`` drops stale replies.

The guest's port 9031 (memledger's /metrics) is forwarded to a host loopback port.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from memledger.lab.boot import LabError
from memledger.lab.firmware import Ovmf
from memledger.lab.qemu import QEMU

__all__ = ("ExecResult", "GuestVM", "free_port")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class ExecResult:
    rc: int
    out: str
    err: str

    def check(self, what: str) -> str:
        if self.rc != 0:
            raise LabError(f"{what}: exit {self.rc}: {(self.err or self.out).strip()[-400:]}")
        return self.out


class GuestVM:
    def __init__(self, image: Path, workdir: Path, ovmf: Ovmf, memory: str = "2G",
                 smp: int = 2, metrics_port: int | None = None, qemu: str = QEMU) -> None:
        self.image, self.workdir, self.ovmf = image, workdir, ovmf
        self.memory, self.smp, self.qemu = memory, smp, qemu
        self.metrics_port = metrics_port or free_port()
        self.sock_path = workdir / "qga.sock"
        self.console = workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._buf = b""

    def command(self) -> list[str]:
        vars_copy = self.workdir / "OVMF_VARS.fd"
        if not vars_copy.exists():
            shutil.copyfile(self.ovmf.vars_template, vars_copy)
        return [
            self.qemu, "-machine", "q35", "-accel", "tcg,thread=single", "-cpu", "max,la57=off",
            "-m", self.memory, "-smp", str(self.smp), "-display", "none", "-no-reboot",
            "-monitor", "none", "-serial", f"file:{self.console}",
            "-drive", f"if=pflash,format=raw,readonly=on,file={self.ovmf.code}",
            "-drive", f"if=pflash,format=raw,file={vars_copy}",
            "-drive", f"file={self.image},format=raw,if=virtio,cache=unsafe",
            "-nic", f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{self.metrics_port}-:9031",
            "-chardev", f"socket,path={self.sock_path},server=on,wait=off,id=qga0",
            "-device", "virtio-serial",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ]

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sock_path.unlink(missing_ok=True)
        with open(self.workdir / "qemu.log", "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float) -> int:
        if self.proc is None:
            raise LabError("the guest was never started")
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"the guest did not power off within {timeout:.0f}s; "
                           f"console: {self.console_tail()}") from None

    def stop(self) -> None:
        self._close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def console_tail(self, n: int = 6) -> str:
        try:
            lines = self.console.read_text(errors="replace").splitlines()
        except OSError:
            return "(no console log)"
        return " | ".join(line.strip() for line in lines[-n:])

    # -- guest agent --------------------------------------------------------------------

    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        self._buf = b""

    def _send(self, obj: dict[str, object], prefix: bytes = b"") -> None:
        assert self._sock is not None
        self._sock.sendall(prefix + json.dumps(obj).encode() + b"\n")

    def _recv(self, deadline: float) -> dict[str, object]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from the guest agent")
            self._sock.settimeout(left)
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("the guest agent closed the connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        line = line.split(b"\xff")[-1].strip()
        if not line:
            return {}
        reply: dict[str, object] = json.loads(line)
        return reply

    def _sync(self, timeout: float) -> None:
        token = random.randrange(1, 1 << 31)
        # 0xFF makes the agent drop any partial input; its reply starts with 0xFF too.
        self._send({"execute": "guest-sync-delimited", "arguments": {"id": token}}, b"\xff")
        deadline = time.monotonic() + timeout
        while True:
            if self._recv(deadline).get("return") == token:
                return

    def connect(self, timeout: float) -> None:
        """Wait until the guest agent answers (the guest has booted far enough)."""
        deadline = time.monotonic() + timeout
        last = "never connected"
        while time.monotonic() < deadline:
            if not self.running():
                raise LabError(f"QEMU exited; console: {self.console_tail()}")
            self._close()
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(os.fspath(self.sock_path))
                self._sock = s
                self._sync(min(10.0, max(1.0, deadline - time.monotonic())))
                return
            except (OSError, TimeoutError, ValueError) as exc:
                last = str(exc)
                self._close()
                time.sleep(2)
        raise LabError(f"the guest agent did not answer within {timeout:.0f}s ({last}); "
                       f"console: {self.console_tail()}")

    def call(self, command: str, timeout: float = 60.0, **arguments: object) -> object:
        if self._sock is None:
            self.connect(timeout)
        self._send({"execute": command, "arguments": arguments})
        deadline = time.monotonic() + timeout
        reply = self._recv(deadline)
        if "error" in reply:
            raise LabError(f"guest agent {command}: {reply['error']}")
        return reply.get("return")

    def sh(self, script: str, timeout: float = 120.0) -> ExecResult:
        """Run ``/bin/sh -c script`` in the guest as root; wait for it."""
        ret = self.call("guest-exec", path="/bin/sh", arg=["-c", script],
                        **{"capture-output": True})
        assert isinstance(ret, dict)
        pid = ret["pid"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.call("guest-exec-status", pid=pid)
            assert isinstance(status, dict)
            if status.get("exited"):
                out = base64.b64decode(str(status.get("out-data", ""))).decode(errors="replace")
                err = base64.b64decode(str(status.get("err-data", ""))).decode(errors="replace")
                return ExecResult(int(status.get("exitcode", -1)), out, err)
            time.sleep(0.5)
        raise LabError(f"guest command did not finish within {timeout:.0f}s: {script[:80]}")

    def sh_detached(self, script: str) -> None:
        """Start a command without waiting (e.g. a reboot that takes the agent away)."""
        self.call("guest-exec", path="/bin/sh", arg=["-c", script])
