"""``memledger daemon``: the service's options, checked, then the service itself
(:class:`memledger.exporters.daemon.Daemon`) on the store they name."""

from __future__ import annotations

import errno
import logging
import os

import click
from memledger.cli.dboption import DB_OPTION
from memledger.cli.errors import fail
from memledger.cli.units import parse_duration, parse_size
from memledger.exporters.daemon import DEFAULT_LISTEN, FLEET_PARSERS, Daemon, DaemonConfig
from memledger.exporters.forward import Forwarder, check_url
from memledger.exporters.httpclient import ClientConfigError, ClientSource
from memledger.exporters.logs import setup_logging
from memledger.exporters.web import parse_listen_address
from memledger.exporters.webconfig import WebConfigError, load_web_config
from memledger.spool.outbox import Outbox
from memledger.spool.reader import UnsafeSpool
from memledger.store.db import StoreError, default_db_path, make_engine, resolve_url, sqlite_path

__all__ = ("daemon",)


DAEMON_EXAMPLES = f"""
\b
examples:
    memledger daemon                                  # SQLite in the default state directory
    memledger daemon --web.listen-address 127.0.0.1:9031 --spool /var/lib/memledger/spool
    memledger daemon --db postgresql+psycopg://memledger@fleetdb/memledger
    memledger daemon --web.config.file /etc/memledger/web.yml   # TLS, client certificates
    kill -HUP $(pidof -x memledger)                   # rescan the spool, forward now
    memledger daemon --forward.url https://fleet.example:9031 \\
        --forward.config.file /etc/memledger/forward.yml  # send every file stored to the fleet
\b
producers drop capture files into the spool atomically:
    memledger capture -o /var/lib/memledger/spool/

The default listen address, {DEFAULT_LISTEN}, is outside the 9100-9999 block of exporter ports.
"""


@click.command(epilog=DAEMON_EXAMPLES)
@DB_OPTION
@click.option("--spool", envvar="MEMLEDGER_SPOOL", show_envvar=True, metavar="DIR",
              help="Directory of capture files to ingest (default: spool/ beside the database).")
@click.option("--root", envvar="MEMLEDGER_ROOT", show_envvar=True, default="/", show_default=True,
              help="Root to capture the running boot from at start.")
@click.option("--capture-self/--no-capture-self", envvar="MEMLEDGER_CAPTURE_SELF",
              show_envvar=True, default=True, show_default=True,
              help="Capture and ingest the running boot at start.")
@click.option("--web.listen-address", "listen", envvar="MEMLEDGER_WEB_LISTEN_ADDRESS",
              show_envvar=True, default=DEFAULT_LISTEN, show_default=True,
              help="[HOST]:PORT to serve metrics on.")
@click.option("--web.telemetry-path", "telemetry_path", envvar="MEMLEDGER_WEB_TELEMETRY_PATH",
              show_envvar=True, default="/metrics", show_default=True,
              help="Path of the metrics.")
@click.option("--web.config.file", "web_config_file", envvar="MEMLEDGER_WEB_CONFIG_FILE",
              show_envvar=True, metavar="FILE",
              help="TLS, client certificates and basic auth, in the Prometheus "
                   "exporter-toolkit's web configuration format (docs/metrics.md); read again "
                   "when it changes.")
@click.option("--spool.max-size", "max_size", envvar="MEMLEDGER_SPOOL_MAX_SIZE", show_envvar=True,
              default="16MiB", show_default=True,
              help="Refuse larger spool files (a real capture is tens of KiB).")
@click.option("--spool.retention", "retention", envvar="MEMLEDGER_SPOOL_RETENTION",
              show_envvar=True, default="7d", show_default=True,
              help="Keep files in spool/done/ this long (0: delete once stored).")
@click.option("--spool.rescan-interval", "rescan", envvar="MEMLEDGER_SPOOL_RESCAN_INTERVAL",
              show_envvar=True, default="60s", show_default=True,
              help="List the spool this often, besides watching it, so that no file waits "
                   "for an event that was lost.")
@click.option("--parse.timeout", "parse_timeout", envvar="MEMLEDGER_PARSE_TIMEOUT",
              show_envvar=True, default="60s", show_default=True,
              help="Refuse a file whose parsing takes longer (a real capture takes well "
                   "under a second).")
@click.option("--parse.memory-limit", "parse_memory", envvar="MEMLEDGER_PARSE_MEMORY_LIMIT",
              show_envvar=True, default="1GiB", show_default=True,
              help="Refuse a file whose parsing needs more memory (the largest capture "
                   "needs about 200 MiB).")
@click.option("--fleet", envvar="MEMLEDGER_FLEET", show_envvar=True, is_flag=True,
              help="Export aggregates per kernel release and firmware version (for a central "
                   "store) instead of this host's current boot.")
@click.option("--fleet.refresh", "fleet_refresh", envvar="MEMLEDGER_FLEET_REFRESH",
              show_envvar=True, default="60s", show_default=True,
              help="With --fleet: read the aggregates again this often (and after the boots "
                   "this daemon stores, at most every 5s); scrapes serve the last reading.")
@click.option("--fleet.window", "fleet_window", envvar="MEMLEDGER_FLEET_WINDOW",
              show_envvar=True, default="0", show_default=True,
              help="With --fleet: only boots captured this recently count in the aggregates "
                   "(30d: the fleet as it is now; 0: every stored boot).")
@click.option("--forward.url", "forward_urls", envvar="MEMLEDGER_FORWARD_URL", show_envvar=True,
              multiple=True, metavar="URL",
              help="Send every capture and event batch stored to this fleet daemon's "
                   "/api/v1/captures (repeat for failover: each in turn; the variable "
                   "takes URLs separated by spaces).")
@click.option("--forward.config.file", "forward_config", envvar="MEMLEDGER_FORWARD_CONFIG_FILE",
              show_envvar=True, metavar="FILE",
              help="HTTP client settings for --forward.url in Prometheus's form (tls_config, "
                   "basic_auth); not readable by others.")
@click.option("--forward.outbox", "forward_outbox", envvar="MEMLEDGER_FORWARD_OUTBOX",
              show_envvar=True, metavar="DIR",
              help="Where files wait to be forwarded (default: outbox/ beside the spool).")
@click.option("--forward.max-backlog", "forward_max_backlog", envvar="MEMLEDGER_FORWARD_MAX_BACKLOG",
              show_envvar=True, default="1GiB", show_default=True,
              help="At most this much waits in the outbox; newer files are then not "
                   "forwarded (counted in memledger_forward_dropped_total).")
@click.option("--log.level", "log_level", envvar="MEMLEDGER_LOG_LEVEL", show_envvar=True,
              type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def daemon(db: str | None, spool: str | None, root: str, capture_self: bool, listen: str,
           telemetry_path: str, web_config_file: str | None, max_size: str, retention: str,
           rescan: str, parse_timeout: str, parse_memory: str, fleet: bool, fleet_refresh: str,
           fleet_window: str, forward_urls: tuple[str, ...], forward_config: str | None,
           forward_outbox: str | None, forward_max_backlog: str, log_level: str) -> None:
    """Run the memledger service: store this boot and every capture dropped into the
    spool, and serve Prometheus metrics."""
    setup_logging(log_level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        parse_listen_address(listen)
        max_bytes = parse_size(max_size)
        retention_s = parse_duration(retention)
        fleet_refresh_s = parse_duration(fleet_refresh)
        fleet_window_s = parse_duration(fleet_window)
        rescan_s = parse_duration(rescan)
        parse_timeout_s = parse_duration(parse_timeout)
        memory = parse_size(parse_memory)
        for option, text, value in (("--fleet.refresh", fleet_refresh, fleet_refresh_s),
                                    ("--spool.rescan-interval", rescan, rescan_s),
                                    ("--parse.timeout", parse_timeout, parse_timeout_s)):
            if value <= 0:
                raise ValueError(f"{option} {text!r}: must be more than 0")
        if web_config_file is not None:
            load_web_config(web_config_file)
    except ValueError as exc:  # WebConfigError too
        fail(str(exc))
    try:
        url = resolve_url(db)
    except StoreError as exc:
        fail(str(exc))
    db_file = sqlite_path(url)
    spool = spool or str((db_file or default_db_path()).parent / "spool")
    cfg = DaemonConfig(url, spool, root, capture_self, listen, telemetry_path, max_bytes,
                       retention_s, fleet, fleet_refresh_s, rescan_s, parse_timeout_s, memory,
                       web_config_file, fleet_window_s,
                       parsers=min(FLEET_PARSERS, os.cpu_count() or 1) if fleet else 1)
    forwarder = _forwarder(forward_urls, forward_config, forward_outbox, forward_max_backlog,
                           spool)
    # The store is not opened here: a daemon whose store is down, or of another schema,
    # stays up, serves /metrics with memledger_store_up 0 and tries again (the Daemon).
    try:
        engine = make_engine(url, create=True)
    except StoreError as exc:
        fail(str(exc))
    try:
        code = Daemon(cfg, engine, forwarder=forwarder).run()
    except (UnsafeSpool, WebConfigError) as exc:
        fail(str(exc))
    except OSError as exc:  # the listen address is taken, or the spool cannot be watched
        where = listen if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL) else spool
        fail(f"{where}: {os.strerror(exc.errno or 0) or exc}", 1)
    finally:
        engine.dispose()
    raise SystemExit(code)


def _forwarder(urls: tuple[str, ...], config: str | None, outbox: str | None, max_backlog: str,
               spool: str) -> Forwarder | None:
    """The forwarder the --forward.* options describe (None without a URL); exits 2 with
    one line when they are wrong. With --fleet too, this daemon is a tier: what its own
    spool brings is sent on to the next one."""
    if not urls:
        if config is not None:
            fail(f"--forward.config.file {config}: no --forward.url to use it for")
        return None
    try:
        for u in urls:
            check_url(u)
        max_bytes = parse_size(max_backlog)
        if max_bytes <= 0:
            raise ValueError(f"--forward.max-backlog {max_backlog!r}: must be more than 0")
    except ValueError as exc:
        fail(str(exc))
    try:
        client = ClientSource(config)
    except ClientConfigError as exc:
        fail(str(exc))
    box = Outbox(outbox or os.path.join(os.path.dirname(os.path.abspath(spool)), "outbox"),
                 max_bytes)
    try:
        box.open()
    except UnsafeSpool as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{box.path}: cannot use it as the outbox: {os.strerror(exc.errno or 0) or exc}")
    return Forwarder(urls, box, client)
