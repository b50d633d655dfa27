"""Engines keep per-settings objects in bounded caches: a long-running server sees a new seed per client."""

from __future__ import annotations

from infermux.configs import GenerationParams, ModelParams, RemoteParams
from infermux.engines.base import SETTINGS_CACHE_SIZE, remember
from infermux.engines.remote.openai.engine import RemoteInferenceEngine


def test_remember_drops_the_oldest_past_the_limit() -> None:
    cache: dict[int, int] = {}
    for i in range(10):
        remember(cache, i, i * i, limit=4)
    assert cache == {6: 36, 7: 49, 8: 64, 9: 81}
    remember(cache, 9, 0, limit=4)  # an existing key is replaced, nothing dropped
    assert list(cache) == [6, 7, 8, 9] and cache[9] == 0


def test_checked_settings_stay_bounded() -> None:
    engine = RemoteInferenceEngine(
        ModelParams(model_name="m"), remote_params=RemoteParams(api_url="http://127.0.0.1:9")
    )
    for seed in range(SETTINGS_CACHE_SIZE + 50):
        engine._check(GenerationParams(seed=seed))
    assert len(engine._checked) == SETTINGS_CACHE_SIZE
