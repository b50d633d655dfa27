"""The answer cache: round trip, keys, size cap, and several processes writing at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from infermux.jobs.cache import AnswerCache, cache_key


def test_round_trip_and_counters(tmp_path: Path) -> None:
    with AnswerCache(tmp_path / "c.sqlite") as cache:
        key = cache_key("fp", {"messages": [{"role": "user", "content": "Hi"}]})
        assert cache.get(key) is None
        cache.put(key, {"message": {"role": "assistant", "content": "Hello \ufffd"}, "metadata": {"x": 1}})
        assert cache.get(key) == {"message": {"role": "assistant", "content": "Hello \ufffd"}, "metadata": {"x": 1}}
        assert (cache.hits, cache.misses) == (1, 1)
    with AnswerCache(tmp_path / "c.sqlite") as again:  # persisted
        assert again.get(key) is not None


def test_key_depends_on_fingerprint_and_content_only() -> None:
    request = {"messages": [{"role": "user", "content": "Hi"}], "tools": None}
    same = {"tools": None, "messages": [{"content": "Hi", "role": "user"}]}  # key order does not matter
    assert cache_key("a", request) == cache_key("a", same)
    assert cache_key("a", request) != cache_key("b", request)
    assert cache_key("a", request) != cache_key("a", {"messages": [{"role": "user", "content": "Hi!"}]})


def test_size_cap_drops_least_recently_used(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path / "c.sqlite", max_bytes=64 * 1024)
    payload = {"text": "x" * 1000}
    keys = [cache_key("fp", {"i": i}) for i in range(200)]
    for key in keys[:10]:
        cache.put(key, payload)
    cache.get(keys[0])  # recently used: survives
    for key in keys[10:]:
        cache.put(key, payload)
    cache.close()
    reopened = AnswerCache(tmp_path / "c.sqlite", max_bytes=64 * 1024)
    stored = sum(reopened.get(k) is not None for k in keys)
    assert stored < 200
    assert reopened.get(keys[-1]) is not None
    assert reopened.get(keys[1]) is None


def _writer(path: str, start: int) -> None:
    cache = AnswerCache(path)
    for i in range(start, start + 150):
        cache.put(cache_key("fp", {"i": i}), {"i": i})
        cache.get(cache_key("fp", {"i": i - 1}))
    cache.close()


def test_concurrent_processes_share_one_store(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    AnswerCache(path).close()
    procs = [multiprocessing.get_context("spawn").Process(target=_writer, args=(path, n * 1000)) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cache = AnswerCache(path)
    assert all(
        cache.get(cache_key("fp", {"i": n * 1000 + i})) == {"i": n * 1000 + i} for n in range(3) for i in range(150)
    )
