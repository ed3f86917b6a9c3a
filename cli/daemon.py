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
from memledger.exporters.daemon import DEFAULT_LISTEN, Daemon, DaemonConfig
from memledger.exporters.logs import setup_logging
from memledger.exporters.web import parse_listen_address
from memledger.exporters.webconfig import WebConfigError, load_web_config
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
    kill -HUP $(pidof -x memledger)                   # rescan the spool now
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
              help="With --fleet: read the aggregates again this often (and after every boot "
                   "this daemon stores); scrapes serve the last reading.")
@click.option("--log.level", "log_level", envvar="MEMLEDGER_LOG_LEVEL", show_envvar=True,
              type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def daemon(db: str | None, spool: str | None, root: str, capture_self: bool, listen: str,
           telemetry_path: str, web_config_file: str | None, max_size: str, retention: str,
           rescan: str, parse_timeout: str, parse_memory: str, fleet: bool, fleet_refresh: str,
           log_level: str) -> None:
    """Run the memledger service: store this boot and every capture dropped into the
    spool, and serve Prometheus metrics."""
    setup_logging(log_level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        parse_listen_address(listen)
        max_bytes = parse_size(max_size)
        retention_s = parse_duration(retention)
        fleet_refresh_s = parse_duration(fleet_refresh)
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
                       web_config_file)
    # The store is not opened here: a daemon whose store is down, or of another schema,
    # stays up, serves /metrics with memledger_store_up 0 and tries again (the Daemon).
    try:
        engine = make_engine(url, create=True)
    except StoreError as exc:
        fail(str(exc))
    try:
        code = Daemon(cfg, engine).run()
    except (UnsafeSpool, WebConfigError) as exc:
        fail(str(exc))
    except OSError as exc:  # the listen address is taken, or the spool cannot be watched
        where = listen if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL) else spool
        fail(f"{where}: {os.strerror(exc.errno or 0) or exc}", 1)
    finally:
        engine.dispose()
    raise SystemExit(code)
