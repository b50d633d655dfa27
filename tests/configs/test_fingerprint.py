"""The fingerprint is computed from the sections, each declaring its own non-output fields; its value
for existing configs is unchanged (partial files written before the re-layout still resume)."""

from __future__ import annotations

import dataclasses

from infermux.configs import GenerationParams, GuidedDecodingParams, InferenceConfig, ModelParams, RemoteParams
from infermux.engines.remote.http.transport import TransportSettings


def test_values_of_existing_configs_are_unchanged() -> None:
    # Computed with the code before the re-layout (inference_config._NOT_FINGERPRINTED).
    assert InferenceConfig().fingerprint() == "7c6293d3d07d08e1"
    config = InferenceConfig(
        model=ModelParams(model_name="m"),
        engine="REMOTE",
        remote_params=RemoteParams(api_url="http://x", num_workers=4, api_key="k"),
        generation=GenerationParams(
            max_new_tokens=7, temperature=0.5, batch_size=3, guided_decoding=GuidedDecodingParams(regex="a+")
        ),
    )
    assert config.fingerprint() == "3543c5e0e010cb8a"


def test_each_section_declares_what_does_not_count() -> None:
    assert RemoteParams.not_fingerprinted >= {"api_key", "num_workers", "max_retries"}
    assert "api_url" not in RemoteParams.not_fingerprinted
    assert GenerationParams.not_fingerprinted == {"batch_size", "use_cache", "service_tier"}
    assert ModelParams.not_fingerprinted == frozenset()
    for section in (RemoteParams, GenerationParams, ModelParams):
        assert section.not_fingerprinted <= set(section.model_fields), section


def test_throughput_fields_do_not_change_it_and_output_fields_do() -> None:
    base = InferenceConfig(model=ModelParams(model_name="m"), engine="REMOTE", remote_params=RemoteParams(api_url="u"))
    for name in RemoteParams.not_fingerprinted:
        field = RemoteParams.model_fields[name]
        value = {bool: False, int: 7, float: 7.5}.get(type(field.default), "7m")  # type: ignore[call-overload]
        changed = base.model_copy(update={"remote_params": base.remote_params.model_copy(update={name: value})})  # type: ignore[union-attr]
        assert changed.fingerprint() == base.fingerprint(), name
    other_url = base.model_copy(update={"remote_params": RemoteParams(api_url="v")})
    assert other_url.fingerprint() != base.fingerprint()
    hotter = base.model_copy(update={"generation": GenerationParams(temperature=0.9)})
    assert hotter.fingerprint() != base.fingerprint()


def test_transport_reads_every_shared_remote_param() -> None:
    shared = {f.name for f in dataclasses.fields(TransportSettings)} & set(RemoteParams.model_fields)
    assert shared == {
        "num_workers", "max_retries", "connection_timeout", "politeness_policy", "use_adaptive_concurrency",
        "retry_backoff_base", "retry_backoff_max", "requests_per_minute", "input_tokens_per_minute",
        "output_tokens_per_minute", "use_provider_limits",
    }  # fmt: skip
    params = RemoteParams(
        num_workers=9, max_retries=8, connection_timeout=7.0, politeness_policy=0.5,
        use_adaptive_concurrency=False, retry_backoff_base=0.25, retry_backoff_max=3.0,
        requests_per_minute=6, input_tokens_per_minute=5, output_tokens_per_minute=4, use_provider_limits=False,
    )  # fmt: skip
    settings = TransportSettings.from_remote_params(params, max_retries=1)
    for name in shared - {"max_retries"}:
        assert getattr(settings, name) == getattr(params, name), name
    assert settings.max_retries == 1  # overrides win


def test_tool_calling_settings_count_only_when_set() -> None:
    base = InferenceConfig(model=ModelParams(model_name="m"))
    unchanged = InferenceConfig(
        model=ModelParams(model_name="m"),
        generation=GenerationParams(parallel_tool_calls=True),
        remote_params=None,
    )
    assert unchanged.fingerprint() == base.fingerprint()
    changed = [
        InferenceConfig(model=ModelParams(model_name="m"), generation=GenerationParams(tool_choice="required")),
        InferenceConfig(model=ModelParams(model_name="m"), generation=GenerationParams(parallel_tool_calls=False)),
        InferenceConfig(model=ModelParams(model_name="m", tool_call_parser="hermes")),
        InferenceConfig(model=ModelParams(model_name="m", chat_template_kwargs={"enable_thinking": False})),
        InferenceConfig(
            model=ModelParams(model_name="m"),
            generation=GenerationParams(guided_decoding=GuidedDecodingParams(json={"type": "object"}, strict=True)),
        ),
    ]
    prints = {c.fingerprint() for c in changed}
    assert len(prints) == len(changed) and base.fingerprint() not in prints
    with_user = InferenceConfig(model=ModelParams(model_name="m"), remote_params=RemoteParams(user_id="u1"))
    assert (
        with_user.fingerprint()
        == InferenceConfig(model=ModelParams(model_name="m"), remote_params=RemoteParams()).fingerprint()
    )


def test_samples_fields_count_only_when_set() -> None:
    base = InferenceConfig(model=ModelParams(model_name="m"))
    assert base.model_copy(update={"generation": GenerationParams(n=1, logprobs=False)}).fingerprint() == (
        base.fingerprint()
    )
    seen = {base.fingerprint()}
    for change in ({"n": 2}, {"logprobs": True}, {"logprobs": True, "top_logprobs": 3}):
        seen.add(base.model_copy(update={"generation": GenerationParams(**change)}).fingerprint())
    assert len(seen) == 4
