"""tail -F semantics of rftfm.io.follow.Follower: new lines, partial lines, rotation, truncation."""

from __future__ import annotations

import os
import threading
import time

from rftfm.io.follow import Follower


def append(path, text: str | bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(text.encode() if isinstance(text, str) else text)


def test_new_lines_and_partial_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    append(path, "a\nb\n")
    f = Follower(path)
    assert f.poll() == ["a", "b"]
    assert f.poll() == []
    append(path, '{"step": 3, "kl"')
    assert f.poll() == []  # partial line held back
    assert f.pending_partial() == '{"step": 3, "kl"'
    append(path, ": 0.5}\nc")
    assert f.poll() == ['{"step": 3, "kl": 0.5}']
    assert f.flush_partial() == ["c"]
    assert f.stats.lines == 4
    f.close()


def test_missing_file_is_waited_for(tmp_path):
    path = tmp_path / "later.jsonl"
    f = Follower(path)
    assert f.poll() == []
    append(path, "x\n")
    assert f.poll() == ["x"]


def test_rotation_reads_rest_of_old_file_then_new_file(tmp_path):
    path = tmp_path / "log"
    append(path, "1\n2\n")
    f = Follower(path)
    assert f.poll() == ["1", "2"]
    append(path, "3\n")  # written before rotation, not yet read
    os.rename(path, tmp_path / "log.1")
    assert f.poll() == ["3"]  # moved away, new file not there yet: old descriptor drained
    append(path, "new-1\nnew-2\n")
    assert f.poll() == ["new-1", "new-2"]
    assert f.stats.rotations == 1
    append(tmp_path / "log.1", "late write to old\n")
    append(path, "new-3\n")
    assert f.poll() == ["new-3"]


def test_rotation_with_unread_tail_in_same_poll(tmp_path):
    path = tmp_path / "log"
    append(path, "1\n")
    f = Follower(path)
    assert f.poll() == ["1"]
    append(path, "2\n")
    os.rename(path, tmp_path / "log.1")
    append(path, "n1\n")
    assert f.poll() == ["2", "n1"]


def test_truncation_restarts_from_the_beginning(tmp_path):
    path = tmp_path / "log"
    append(path, "aaaa\nbbbb\n")
    f = Follower(path)
    assert f.poll() == ["aaaa", "bbbb"]
    append(path, "part")
    assert f.poll() == []
    with open(path, "wb"):
        pass  # truncate (like `> log`)
    append(path, "c\n")
    assert f.poll() == ["c"]
    assert f.stats.truncations == 1
    assert f.stats.dropped_partial == 1


def test_from_end_skips_existing_content(tmp_path):
    path = tmp_path / "log"
    append(path, "old\n")
    f = Follower(path, from_start=False)
    assert f.poll() == []
    append(path, "new\n")
    assert f.poll() == ["new"]


def test_bad_bytes_and_crlf_never_raise(tmp_path):
    path = tmp_path / "log"
    append(path, b"ok\r\n\xff\xfebad\n")
    lines = Follower(path).poll()
    assert lines[0] == "ok"
    assert "bad" in lines[1] and "\ufffd" in lines[1]


def test_follow_stops_after_idle_timeout_and_sees_a_concurrent_writer(tmp_path):
    path = tmp_path / "log"
    expected = [f'{{"step": {i}, "reward": {i / 10}}}' for i in range(1, 61)]

    def writer() -> None:
        blob = "".join(line + "\n" for line in expected).encode()
        for i in range(0, len(blob), 37):  # chunks that cut lines in the middle
            append(path, blob[i : i + 37])
            time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    got: list[str] = []
    start = time.monotonic()
    for batch in Follower(path).follow(interval=0.01, idle_timeout=0.5):
        got += batch
    thread.join()
    assert got == expected
    assert time.monotonic() - start < 10


def test_follow_should_stop(tmp_path):
    path = tmp_path / "log"
    append(path, "a\n")
    batches = list(Follower(path).follow(interval=0.01, should_stop=lambda: True))
    assert batches == [["a"]]


def test_a_directory_at_the_path_is_not_read(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    f = Follower(path)
    assert f.poll() == [] and f.poll() == []
    assert f.stats.problems == []
