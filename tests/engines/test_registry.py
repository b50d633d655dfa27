import importlib
import importlib.util

import pytest

from infermux.configs import InferenceEngineType
from infermux.engines.base import InferenceEngine
from infermux.engines.registry import ENGINES, engine_class, engine_specs, is_available
from infermux.errors import ConfigError, EngineUnavailableError


def test_every_engine_type_has_a_registry_entry():
    assert set(ENGINES) == {t.value for t in InferenceEngineType}
    assert len(ENGINES) == 16


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
