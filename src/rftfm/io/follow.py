"""Follow a growing log file like ``tail -F``: new lines, rotation, truncation, partial lines.

No maintained library gives this as an importable, pollable object with the guarantees the
monitor needs (bounded memory, never raise on a vanished file), so it is written here by hand
on top of plain ``os.stat`` polling (portable; no inotify dependency).

* Only complete lines are returned; a partial last line is kept until its newline arrives.
* Rotation (the path now names another file, e.g. ``log`` moved to ``log.1`` and a new
  ``log`` created): the rest of the old file is read first, then the new one from its start.
* Truncation (the file shrank below the read position, e.g. ``> log``): reading restarts at 0
  and any partial line is dropped (counted).
* A missing file is waited for; it is not an error.
* Bytes are decoded as UTF-8 with replacement, so bad bytes never raise.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

#: A partial line longer than this is dropped (counted), so memory stays bounded.
MAX_PARTIAL_BYTES = 16 * 1024 * 1024
#: Bytes read per ``os.read`` call.
READ_CHUNK = 1024 * 1024


def poll_loop(
    poll: Callable[[], list],
    interval: float,
    idle_timeout: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[list]:
    """Yield ``poll()`` batches (empty ones on idle polls), sleeping ``interval`` s after an empty one.

    Stops after a batch when ``should_stop()`` is true or nothing arrived for ``idle_timeout`` s.
    """
    last_data = time.monotonic()
    while True:
        batch = poll()
        now = time.monotonic()
        if batch:
            last_data = now
        yield batch
        if should_stop is not None and should_stop():
            return
        if idle_timeout is not None and now - last_data >= idle_timeout:
            return
        if not batch:
            sleep(interval)


@dataclass
class FollowStats:
    """What the follower saw, for the CLI summary and for tests."""

    lines: int = 0
    rotations: int = 0
    truncations: int = 0
    dropped_partial: int = 0
    oversized_lines: int = 0
    problems: list[str] = field(default_factory=list)


class Follower:
    """Poll ``path`` for complete new lines.

    ``from_start=False`` skips what the file holds when it is first opened (like ``tail -f``
    without ``-n +1``); the default reads the whole file, which is what a monitor that starts
    late needs.
    """

    def __init__(self, path: str | Path, from_start: bool = True):
        self.path = Path(path)
        self.from_start = from_start
        self.stats = FollowStats()
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._pos = 0
        self._partial = b""
        self._opened_once = False

    # --- opening / closing ---------------------------------------------------------------
    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISFIFO(st.st_mode):
            os.close(fd)  # a directory (or device) at this path: not a log, keep waiting
            return False
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)
        self._pos = 0 if (self.from_start or self._opened_once) else st.st_size
        self._opened_once = True
        return True

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:  # pragma: no cover
                pass
        self._fd, self._ino = None, None

    def close(self) -> None:
        self._close_fd()

    def __enter__(self) -> "Follower":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ----------------------------------------------------------------------------
    def _read_available(self) -> list[str]:
        """Read from the open descriptor up to its current end; return complete lines."""
        assert self._fd is not None
        chunks = []
        while True:
            try:
                data = os.pread(self._fd, READ_CHUNK, self._pos)
            except OSError as exc:  # pragma: no cover - e.g. a network file system hiccup
                if len(self.stats.problems) < 50:
                    self.stats.problems.append(f"read error: {exc}")
                break
            if not data:
                break
            self._pos += len(data)
            chunks.append(data)
        if not chunks:
            return []
        buffer = self._partial + b"".join(chunks)
        *complete, self._partial = buffer.split(b"\n")
        if len(self._partial) > MAX_PARTIAL_BYTES:
            self._partial = b""
            self.stats.oversized_lines += 1
        lines = [raw.rstrip(b"\r").decode("utf-8", errors="replace") for raw in complete]
        self.stats.lines += len(lines)
        return lines

    def poll(self) -> list[str]:
        """Every complete line that appeared since the last call (possibly none)."""
        if self._fd is None and not self._open():
            return []
        lines = self._read_available()
        try:
            st = os.stat(self.path)
        except OSError:
            return lines  # file moved away and not yet recreated: keep the old descriptor
        if (st.st_dev, st.st_ino) != self._ino:
            # Rotation: drain what is left of the old file, then switch to the new one.
            lines += self._read_available()
            if self._partial:
                self.stats.dropped_partial += 1
                self._partial = b""
            self._close_fd()
            self.stats.rotations += 1
            if self._open():
                lines += self._read_available()
        elif st.st_size < self._pos:
            self.stats.truncations += 1
            if self._partial:
                self.stats.dropped_partial += 1
            self._partial, self._pos = b"", 0
            lines += self._read_available()
        return lines

    def pending_partial(self) -> str:
        """The incomplete last line held back (for diagnostics)."""
        return self._partial.decode("utf-8", errors="replace")

    def flush_partial(self) -> list[str]:
        """Give up waiting: return the held-back partial line as a line (used at end of input)."""
        if not self._partial:
            return []
        line, self._partial = self._partial.decode("utf-8", errors="replace"), b""
        self.stats.lines += 1
        return [line]

    def follow(
        self,
        interval: float = 0.5,
        idle_timeout: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[list[str]]:
        """Yield batches of new lines (an empty batch on every idle poll), polling every ``interval`` s.

        Stops when ``should_stop()`` is true or nothing new arrived for ``idle_timeout`` seconds.
        Polling is bounded: one ``stat`` and reads up to the file end per ``interval``.
        """
        return poll_loop(self.poll, interval, idle_timeout, should_stop, sleep)
