"""Debian's real Prometheus server on loopback, for the exporter tests."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from daemonrun import wait_for

__all__ = ("Prometheus", "free_port")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    def __init__(self, tmp: Path, targets: dict[str, str], rules: list[Path],
                 tls: dict[str, str] | None = None) -> None:
        """``targets`` maps an instance name to its host:port; scraped every second, over
        HTTPS with ``tls`` (Prometheus's tls_config: ca_file, cert_file, key_file)."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (apt-get install prometheus; "
                               "make test installs it as root)")
        self.port = free_port()
        job: dict[str, Any] = {
            "job_name": "memledger",
            "static_configs": [{"targets": [addr], "labels": {"instance": name}}
                               for name, addr in targets.items()],
        }
        if tls is not None:
            job |= {"scheme": "https", "tls_config": tls}
        cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(r) for r in rules],
            "scrape_configs": [job],
        }
        (tmp / "prometheus.yml").write_text(json.dumps(cfg))  # JSON is YAML
        self.log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [binary, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for("prometheus to be ready", self._ready, 60)

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return json.loads(r.read()) if path.startswith("/api/") else r.read()

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}")
        try:
            self._get("/-/ready")
            return True
        except OSError:
            return False

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant query's result now, or at the Unix time ``at``."""
        params = {"query": expr} | ({} if at is None else {"time": f"{at:.3f}"})
        out = self._get("/api/v1/query?" + urllib.parse.urlencode(params))
        assert out["status"] == "success", out
        result: list[dict[str, Any]] = out["data"]["result"]
        return result

    def rule_names(self) -> set[str]:
        """The alerting and recording rules loaded from the rule files."""
        out = self._get("/api/v1/rules")
        assert out["status"] == "success", out
        return {r["name"] for g in out["data"]["groups"] for r in g["rules"]}

    def alerts(self) -> list[dict[str, Any]]:
        """The active alerts (pending and firing), each with its labels, state and value."""
        out = self._get("/api/v1/alerts")
        assert out["status"] == "success", out
        alerts: list[dict[str, Any]] = out["data"]["alerts"]
        return alerts

    def targets_up(self) -> dict[str, float]:
        return {r["metric"]["instance"]: float(r["value"][1]) for r in self.query("up")}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()
