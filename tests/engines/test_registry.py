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
