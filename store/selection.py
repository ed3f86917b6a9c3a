"""Which boots a side of ``compare`` holds: the releases a selector matches, narrowed by
firmware and product (``where``), by when the boots were captured (``since`` inclusive,
``until`` exclusive) and by host (globs of host names or machine ids)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from memledger.ledger.vendors import vendor_name
from memledger.store.db import as_utc
from memledger.store.schema import boots, hosts
from sqlalchemy import ColumnElement, Connection, select

__all__ = ("WHERE_KEYS", "Selection")

WHERE_KEYS = ("firmware_version", "firmware_vendor", "product")


@dataclass(frozen=True, slots=True)
class Selection:
    where: dict[str, str] = field(default_factory=dict)
    since: datetime | None = None
    until: datetime | None = None
    host_globs: tuple[str, ...] = ()

    def releases(self, conn: Connection, selector: str) -> list[str]:
        """The stored kernel releases ``selector`` (a release or a glob) matches, sorted."""
        return sorted({r for (r,) in conn.execute(select(boots.c.kernel_release).distinct())
                       if r is not None and fnmatch.fnmatchcase(r, selector)})

    def conditions(self, conn: Connection, releases: list[str]) -> list[ColumnElement[bool]]:
        """The boots table's conditions for a side of ``releases``."""
        return [boots.c.kernel_release.in_(releases), *self.filters(conn)]

    def filters(self, conn: Connection) -> list[ColumnElement[bool]]:
        """The boots table's conditions besides the release."""
        out: list[ColumnElement[bool]] = []
        for key, value in self.where.items():
            out.append(boots.c[key] == (vendor_name(value) if key == "firmware_vendor" else value))
        if self.since is not None:
            out.append(boots.c.captured_at >= as_utc(self.since))
        if self.until is not None:
            out.append(boots.c.captured_at < as_utc(self.until))
        if self.host_globs:
            out.append(boots.c.host_id.in_(self._host_pks(conn)))
        return out

    def _host_pks(self, conn: Connection) -> list[int]:
        """The hosts whose name or machine id matches one of the globs."""
        rows: Any = conn.execute(select(hosts.c.id, hosts.c.hostname, hosts.c.machine_id))
        return [pk for pk, name, mid in rows
                if any(fnmatch.fnmatchcase(name or "", g) or fnmatch.fnmatchcase(mid, g)
                       for g in self.host_globs)]
