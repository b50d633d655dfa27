import importlib
import importlib.util

import pytest

from infermux.configs import InferenceEngineType
from infermux.engines.base import InferenceEngine
from infermux.engines.registry import ENGINES, engine_class, engine_specs, is_available
from infermux.errors import ConfigError, EngineUnavailableError


def test_every_engine_type_has_a_registry_entry():
    assert set(ENGINES) == {t.value for t in InferenceEngineType}
    assert len(ENGINES) == 20  # 16 + FIREWORKS, OPENROUTER, CEREBRAS, HUGGING_FACE_ROUTER (issue 11)


def test_gemini_is_oumis_name_for_google_gemini():
    from infermux.configs import InferenceConfig, ModelParams

    assert InferenceEngineType("GEMINI") is InferenceEngineType.GOOGLE_GEMINI
    assert InferenceEngineType("gemini") is InferenceEngineType.GOOGLE_GEMINI
    config = InferenceConfig(model=ModelParams(model_name="gemini-2.0-flash"), engine="Gemini")
    assert config.engine is InferenceEngineType.GOOGLE_GEMINI
    assert engine_class("GEMINI") is engine_class("GOOGLE_GEMINI")
    assert "GEMINI" not in ENGINES  # an alias, not a second engine (docs and `infermux engines` list it once)


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_the_class_and_the_registry_agree_on_the_name(name):
    if is_available(name):
        assert str(engine_class(name).engine_type) == name


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_the_row_is_the_only_place_a_built_in_engine_is_named(name):
    """No class (nor the registry, when it loads one) writes ``engine_type``: it is read from the row."""
    if not is_available(name):
        pytest.skip(f"{name} is not installed")
    cls = engine_class(name)
    assert all("engine_type" not in vars(k) for k in cls.__mro__ if k is not InferenceEngine)
    assert cls.engine_type == name and str(cls.engine_type) == name


def test_a_subclass_goes_by_its_nearest_registered_base_and_an_unregistered_class_by_none():
    from infermux.engines.remote.openai.engine import RemoteInferenceEngine

    class Mine(RemoteInferenceEngine):
        pass

    class Bare(InferenceEngine):
        pass

    assert Mine.engine_type is InferenceEngineType.REMOTE and Bare.engine_type is None


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_entry_resolves_to_an_engine_class(name):
    spec = ENGINES[name]
    module_name, class_name = spec.target.split(":")
    if not is_available(name):
        with pytest.raises(EngineUnavailableError, match=r"pip install 'infermux\["):
            engine_class(name)
        return
    assert importlib.util.find_spec(module_name) is not None, f"{module_name} missing"
    cls = engine_class(name)
    assert cls.__name__ == class_name and issubclass(cls, InferenceEngine)
    assert cls.get_supported_params() >= {"max_new_tokens"}


def test_plugins_come_from_entry_points():
    assert engine_specs()["ECHO"].target == "infermux_echo:EchoEngine"
    assert engine_class("echo").__name__ == "EchoEngine"


def test_unknown_engine_lists_known_ones():
    with pytest.raises(ConfigError, match="Known engines: NATIVE"):
        engine_class("NOPE")


def test_missing_extra_names_the_pip_command(monkeypatch):
    import infermux.engines.registry as registry

    monkeypatch.setattr(registry, "_module_present", lambda m: m != "boto3")
    with pytest.raises(EngineUnavailableError, match=r"pip install 'infermux\[bedrock\]'"):
        engine_class("BEDROCK")


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_the_row_says_local_or_remote_and_its_batch_client_as_the_class_does(name):
    """The identity row is the one place kind and batch client are written; the classes must agree."""
    from infermux.engines.registry import BATCH_OPERATIONS

    spec = ENGINES[name]
    assert spec.kind in ("local", "remote") and spec.remote == (spec.kind == "remote")
    assert spec.batch is None or spec.batch in BATCH_OPERATIONS
    if not is_available(name):
        return
    cls = engine_class(name)
    local = cls.__module__.startswith(("infermux.engines.native", "infermux.engines.llamacpp", "infermux.engines.vllm"))
    assert spec.kind == ("local" if local else "remote")
    assert (spec.batch is not None) == cls.capabilities.batch_api
    assert not any("extra" in vars(c) for c in cls.__mro__), "the pip extra is written in the row only"


def test_batch_operations_come_from_the_batch_client_and_equal_the_row():
    from infermux.configs import ModelParams, RemoteParams
    from infermux.engines.registry import BATCH_OPERATIONS, batch_operations, engine_spec
    from infermux.engines.registry import batch_engines as registry_batch_engines

    model, params = ModelParams(model_name="m"), RemoteParams(api_key="k")
    anthropic = engine_class("ANTHROPIC")(model, remote_params=params)
    openai = engine_class("OPENAI")(model, remote_params=params)
    gemini = engine_class("GOOGLE_GEMINI")(model, remote_params=params)
    cerebras = engine_class("CEREBRAS")(model, remote_params=params)  # no batch API
    fireworks = engine_class("FIREWORKS")(model, remote_params=params)  # its account id is needed only to run
    assert batch_operations(anthropic) == {"submit", "status", "fetch", "cancel", "list"}
    assert batch_operations(openai) == {"submit", "status", "fetch", "cancel", "list"}
    assert batch_operations(gemini) == {"submit", "status", "fetch", "cancel", "list"}
    assert batch_operations(cerebras) == frozenset()
    assert batch_operations(fireworks) == {"submit", "status", "fetch", "list"}
    for engine in (anthropic, openai, gemini, fireworks):
        spec = engine_spec(engine.engine_type)
        assert spec.batch is not None and BATCH_OPERATIONS[spec.batch] == batch_operations(engine)

    class Plugin(type(cerebras)):  # type: ignore[misc]
        engine_type = "MY_PLUGIN"

    assert batch_operations(Plugin(model, remote_params=params)) == frozenset()
    assert "GOOGLE_GEMINI" in registry_batch_engines()


def test_vertex_and_bedrock_batch_operations_equal_their_rows(monkeypatch):
    pytest.importorskip("boto3")
    pytest.importorskip("google.auth")
    from infermux.configs import ModelParams
    from infermux.engines.registry import BATCH_OPERATIONS, batch_operations, engine_spec

    monkeypatch.setenv("AWS_REGION", "us-east-1")

    class Credentials:
        token, expiry = "t", None

    model = ModelParams(model_name="m", model_kwargs={"project_id": "p", "region": "r"})
    vertex = engine_class("GOOGLE_VERTEX")(model, credentials=Credentials())
    bedrock = engine_class("BEDROCK")(model)
    for engine in (vertex, bedrock):
        assert batch_operations(engine) == {"submit", "status", "fetch", "cancel", "list"}
        assert BATCH_OPERATIONS[engine_spec(engine.engine_type).batch or ""] == batch_operations(engine)


def test_batch_engines_message_is_made_from_the_rows(monkeypatch):
    from infermux.engines import registry

    names = [name for name, spec in registry.ENGINES.items() if spec.batch]
    assert registry.batch_engines() == ", ".join(names[:-1]) + " or " + names[-1]
    assert {"OPENAI", "ANTHROPIC", "TOGETHER", "FIREWORKS", "GOOGLE_GEMINI"} <= set(names)
    monkeypatch.setitem(registry.ENGINES, "NEWPROV", registry.EngineSpec("NEWPROV", "x:Y", remote=True, batch="openai"))
    assert registry.batch_engines().endswith(f", {names[-1]} or NEWPROV")
    monkeypatch.setattr(registry, "BATCH_OPERATIONS", {**registry.BATCH_OPERATIONS, "openai": frozenset({"submit"})})
    assert "OPENAI" not in registry.batch_engines("cancel")


def test_configs_know_plugin_names_without_the_registry():
    from infermux.configs.engine_type import engine_name, plugin_targets

    assert plugin_targets()["ECHO"] == engine_specs()["ECHO"].target
    assert engine_name(InferenceEngineType.GEMINI) == "GOOGLE_GEMINI" and engine_name("ECHO") == "ECHO"


@pytest.mark.parametrize(
    "old_target",
    [
        "infermux.engines.vllm:VLLMInferenceEngine",
        "infermux.engines.remote.anthropic:AnthropicInferenceEngine",
        "infermux.engines.remote.gemini:GoogleGeminiInferenceEngine",
        "infermux.engines.remote.bedrock:BedrockInferenceEngine",
    ],
)
def test_the_targets_from_before_the_packages_still_import(old_target):
    module_name, class_name = old_target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    assert f"{cls.__module__}:{cls.__name__}" in {spec.target for spec in ENGINES.values()}
    with pytest.raises(AttributeError):
        _ = importlib.import_module(module_name).NoSuchClass
