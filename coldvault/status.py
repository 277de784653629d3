"""What needs attention: pending documents, drives not seen for too long, waiting documents."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from coldvault.catalog.db import Catalog


@dataclass
class DriveStatus:
    name: str
    drive_id: str
    last_seen: str | None
    last_sync: str | None
    items: int
    bytes: int
    lacking: int
    overdue: bool


@dataclass
class Status:
    patients: int
    documents: int
    unsorted: int
    spool_items: int
    spool_bytes: int
    pending_by_source: list[tuple[str, int, int]]
    drives: list[DriveStatus]
    warnings: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    """The warnings that need someone to act (plug a drive in): the daemon journals them and
    shows a desktop notification."""

    def to_dict(self) -> dict[str, object]:
        return {
            "patients": self.patients,
            "documents": self.documents,
            "unsorted": self.unsorted,
            "spool": {"objects": self.spool_items, "bytes": self.spool_bytes},
            "pending": [
                {"source": s, "documents": n, "bytes": b} for s, n, b in self.pending_by_source
            ],
            "drives": [d.__dict__ for d in self.drives],
            "warnings": self.warnings,
            "alerts": self.alerts,
        }


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    dt = datetime.fromisoformat(ts)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def compute_status(
    catalog: Catalog, *, overdue_days: int, copies: int, now: datetime | None = None
) -> Status:
    now = now or datetime.now(UTC)
    limit = timedelta(days=overdue_days)
    counts = catalog.counts()
    drives: list[DriveStatus] = []
    warnings: list[str] = []
    alerts: list[str] = []
    for row in catalog.drives():
        items, size = catalog.drive_holdings(row.drive_id)
        seen = _parse(row.last_seen) or _parse(row.enrolled)
        overdue = seen is not None and now - seen > limit
        elsewhere = len(catalog.lacking_elsewhere(row.drive_id))
        drives.append(
            DriveStatus(
                row.name,
                row.drive_id,
                row.last_seen,
                row.last_sync,
                items,
                size,
                len(catalog.lacking(row.drive_id)) + elsewhere,
                overdue,
            )
        )
        if elsewhere:
            alerts.append(
                f"drive {row.name!r} lacks {elsewhere} file(s) that are no longer in the spool "
                "(a copy found damaged or missing): plug it in together with another drive "
                "that holds them, and sync"
            )
        if overdue and seen is not None:
            alerts.append(
                f"drive {row.name!r} has not been plugged in for {(now - seen).days} days"
            )
    if len(drives) < copies:
        warnings.append(
            f"{len(drives)} drive(s) enrolled but {copies} copies are required: "
            "documents stay in the spool until enough drives are enrolled"
        )
    oldest = _parse(catalog.oldest_pending())
    if oldest is not None and now - oldest > limit:
        alerts.append(f"documents have been waiting for a drive for {(now - oldest).days} days")
    warnings = alerts + warnings
    if counts["unsorted"]:
        warnings.append(
            f"{counts['unsorted']} document(s) in the unsorted inbox: file them with "
            "'coldvault assign'"
        )
    return Status(
        counts["patients"],
        counts["documents"],
        counts["unsorted"],
        counts["spool_items"],
        counts["spool_bytes"],
        catalog.pending_sources(),
        drives,
        warnings,
        alerts,
    )
