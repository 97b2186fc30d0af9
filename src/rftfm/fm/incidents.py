"""The incident store: every run, alarm, diagnosis, action, outcome and error.

Two stores behind one protocol (:class:`IncidentLog`): :class:`IncidentStore`, one SQLite file shared
by ``rftfm watch``, the closed loop and ``rftfm report``; and :class:`MemoryIncidentStore`, the same
rows in memory (evaluation runs, a callback without a file). SQLite in WAL mode, so readers (``rftfm report``,
a dashboard) never block the writer and see only committed rows. Every row carries
``run_id``, ``step``, ``time`` (Unix seconds), ``kind`` and a JSON ``payload`` (the pydantic
message of :mod:`rftfm.fm.types` dumped as JSON, or a plain dict).

API (kept deliberately small)::

    store = IncidentStore("incidents.db")
    store.record("alarm", run_id, step, alarm)        # -> row id
    store.events(run_id="r1", kind="diagnosis")       # -> list of dicts, oldest first
    store.close()

Kinds and their tables: run -> runs, alarm -> alarms, diagnosis -> diagnoses,
action -> actions, outcome -> outcomes, error -> errors.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

#: kind -> table name (the only kinds the store accepts).
KIND_TABLES: dict[str, str] = {
    "run": "runs",
    "alarm": "alarms",
    "diagnosis": "diagnoses",
    "action": "actions",
    "outcome": "outcomes",
    "error": "errors",
}
KINDS: tuple[str, ...] = tuple(KIND_TABLES)
_TABLE_KIND = {table: kind for kind, table in KIND_TABLES.items()}

_SCHEMA = "".join(
    f"""
    CREATE TABLE IF NOT EXISTS {table} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        step INTEGER,
        time REAL NOT NULL,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS {table}_run ON {table}(run_id, step);
    """
    for table in KIND_TABLES.values()
)


def _payload_json(payload: BaseModel | dict[str, Any] | None) -> str:
    if payload is None:
        return "{}"
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json")
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a pydantic model or a dict, not {type(payload).__name__}")
    # default=str: a stray non-JSON value (a Path, a numpy scalar) is stored as text, never lost.
    return json.dumps(_finite(payload), default=str)


def _checked_kind(kind: str) -> str:
    """The table of ``kind``; a kind the store does not know is refused."""
    table = KIND_TABLES.get(kind)
    if table is None:
        raise ValueError(f"unknown incident kind {kind!r}; expected one of {', '.join(KINDS)}")
    return table


@runtime_checkable
class IncidentLog(Protocol):
    """What the loop, the watcher and the report need of an incident store."""

    def record(
        self,
        kind: str,
        run_id: str,
        step: int | None,
        payload: BaseModel | dict[str, Any] | None,
        time_s: float | None = None,
    ) -> int: ...

    def events(self, run_id: str | None = None, kind: str | None = None) -> list[dict[str, Any]]: ...

    def run_ids(self) -> list[str]: ...

    def close(self) -> None: ...


def _finite(obj: Any) -> Any:
    """NaN / inf are not JSON: stored as null."""
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class IncidentStore:
    """Append-only incident log in SQLite (WAL). Thread-safe; one connection per store object."""

    def __init__(self, path: str | Path, timeout_s: float = 30.0):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), timeout=timeout_s, check_same_thread=False, isolation_level=None)
        self._conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        with self._lock:
            self._conn.executescript(_SCHEMA)

    def record(
        self,
        kind: str,
        run_id: str,
        step: int | None,
        payload: BaseModel | dict[str, Any] | None,
        time_s: float | None = None,
    ) -> int:
        """Store one event; returns its row id (unique within its kind's table)."""
        table = _checked_kind(kind)
        row = (
            str(run_id),
            None if step is None else int(step),
            time.time() if time_s is None else float(time_s),
            kind,
            _payload_json(payload),
        )
        with self._lock:
            cursor = self._conn.execute(
                f"INSERT INTO {table} (run_id, step, time, kind, payload) VALUES (?, ?, ?, ?, ?)", row
            )
            return int(cursor.lastrowid)

    def events(self, run_id: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Stored events, oldest first: dicts with id, kind, run_id, step, time, payload (parsed JSON)."""
        if kind is not None:
            _checked_kind(kind)
        tables = [KIND_TABLES[kind]] if kind else list(KIND_TABLES.values())
        where, args = ("WHERE run_id = ?", (run_id,)) if run_id is not None else ("", ())
        query = " UNION ALL ".join(
            f"SELECT id, '{table}' AS tbl, run_id, step, time, kind, payload FROM {table} {where}" for table in tables
        )
        with self._lock:
            rows = self._conn.execute(f"{query} ORDER BY time, tbl, id", args * len(tables)).fetchall()
        out = []
        for row_id, table, rid, step, t, row_kind, payload in rows:
            try:
                parsed = json.loads(payload)
            except json.JSONDecodeError:  # pragma: no cover - only if someone wrote the file by hand
                parsed = {"raw": payload}
            out.append(
                {
                    "id": row_id,
                    "kind": row_kind or _TABLE_KIND[table],
                    "run_id": rid,
                    "step": step,
                    "time": t,
                    "payload": parsed,
                }
            )
        return out

    def run_ids(self) -> list[str]:
        """Every run id that has at least one event, in first-seen order."""
        query = " UNION ALL ".join(
            f"SELECT run_id, MIN(time) AS t FROM {t} GROUP BY run_id" for t in KIND_TABLES.values()
        )
        with self._lock:
            rows = self._conn.execute(
                f"SELECT run_id, MIN(t) FROM ({query}) GROUP BY run_id ORDER BY MIN(t)"
            ).fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "IncidentStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryIncidentStore:
    """The :class:`IncidentStore` rows, kept in memory (nothing persists): payloads go through the same
    JSON encoding, so both stores give back the same events."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def record(
        self,
        kind: str,
        run_id: str,
        step: int | None,
        payload: BaseModel | dict[str, Any] | None,
        time_s: float | None = None,
    ) -> int:
        _checked_kind(kind)
        self.rows.append(
            {
                "id": len(self.rows) + 1,
                "kind": kind,
                "run_id": str(run_id),
                "step": None if step is None else int(step),
                "time": time.time() if time_s is None else float(time_s),
                "payload": json.loads(_payload_json(payload)),
            }
        )
        return len(self.rows)

    def events(self, run_id: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Stored events, in the order they were recorded."""
        if kind is not None:
            _checked_kind(kind)
        return [
            dict(r)
            for r in self.rows
            if (run_id is None or r["run_id"] == run_id) and (kind is None or r["kind"] == kind)
        ]

    def run_ids(self) -> list[str]:
        return list(dict.fromkeys(r["run_id"] for r in self.rows))

    def close(self) -> None:
        pass
