"""The tiny Idefics3 of :mod:`tests.vision_model` as a vision GGUF: a text model file and its projector.

llama.cpp's converter (``convert_hf_to_gguf.py``, with the ``gguf`` package it vendors) ships in the source
distribution of llama-cpp-python only, so :func:`tiny_vision_gguf` takes the sdist of the installed version
(from the cache the ``llama-server`` benchmark fills, else ``pip download --no-binary :all:``), unpacks the
converter, and runs it twice on the tiny model: ``model.gguf`` (the Llama text model, f32) and, with
``--mmproj``, ``mmproj.gguf`` (the vision tower and connector, f32). The converter picks the text model's
class from ``text_config.architectures``, which the Hugging Face folder does not name: it converts a copy of
the folder whose ``config.json`` names ``LlamaForCausalLM`` there (the weights are linked, not copied).

Built once per (model folder, llama-cpp-python version) under infermux's cache folder, next to the model;
a file lock makes concurrent sessions wait for one build. :class:`ConverterUnavailable` says why it could
not be built (tests skip with that reason). ``python -m tests.vision_gguf`` builds it and prints the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

__all__ = ["ConverterUnavailable", "tiny_vision_gguf"]

_BUILDER_VERSION = 1
_FILES = ("model.gguf", "mmproj.gguf")


class ConverterUnavailable(RuntimeError):
    """llama.cpp's converter for the installed llama-cpp-python could not be found or downloaded."""


def tiny_vision_gguf(model: Path) -> Path:
    """A folder with ``model.gguf`` and ``mmproj.gguf`` converted from the tiny vision ``model`` folder."""
    from infermux.models.default import cache_dir

    version = metadata.version("llama-cpp-python")
    target = cache_dir() / f"{model.name}-gguf-{version}-v{_BUILDER_VERSION}"
    if all((target / name).is_file() for name in _FILES):
        return target
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):
        if all((target / name).is_file() for name in _FILES):
            return target
        shutil.rmtree(target, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            converter = _converter(version, scratch / "src")
            source = _with_text_architecture(model, scratch / "hf")
            for name, extra in (("model.gguf", []), ("mmproj.gguf", ["--mmproj"])):
                _run(
                    [
                        sys.executable,
                        str(converter),
                        str(source),
                        "--outtype",
                        "f32",
                        "--outfile",
                        str(scratch / name),
                        *extra,
                    ]
                )
            out = scratch / "out"
            out.mkdir()
            for name in _FILES:
                os.replace(scratch / name, out / name)
                os.chmod(out / name, 0o644)
            os.chmod(out, 0o755)
            os.replace(out, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def _converter(version: str, into: Path) -> Path:
    """``convert_hf_to_gguf.py`` of llama-cpp-python ``version``, unpacked (with its ``conversion`` package and
    ``gguf-py``) under ``into``."""
    sdist = _sdist(version)
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    wanted = (prefix + "convert_hf_to_gguf.py", prefix + "conversion/", prefix + "gguf-py/")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(wanted)]
        if not members:
            raise ConverterUnavailable(f"{sdist} holds no vendor/llama.cpp/convert_hf_to_gguf.py")
        tar.extractall(into, members=members, filter="data")
    return into / prefix / "convert_hf_to_gguf.py"


def _sdist(version: str) -> Path:
    from infermux.models.default import cache_dir

    name = f"llama_cpp_python-{version}.tar.gz"
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "infermux"
    for folder in (cache_dir() / "llama-server" / "src", xdg / "llama-server" / "src"):  # the benchmark's cache
        if (folder / name).is_file():
            return folder / name
    folder = cache_dir() / "llama-server" / "src"
    folder.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(folder)]
    try:
        subprocess.run([*pip, f"llama-cpp-python=={version}"], check=True, capture_output=True, text=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        tail = (getattr(exc, "stderr", None) or "").strip().splitlines()[-1:] or [str(exc)]
        raise ConverterUnavailable(
            f"llama.cpp's converter comes with the llama-cpp-python {version} source distribution, which pip could "
            f"not download ({tail[0]}); put {name} in {folder} to build the vision GGUF offline"
        ) from None
    if not (folder / name).is_file():
        raise ConverterUnavailable(f"pip downloaded no {name} into {folder}")
    return folder / name


def _with_text_architecture(model: Path, into: Path) -> Path:
    """A copy of ``model`` (files linked) whose config names the text model's class for the converter."""
    into.mkdir(parents=True)
    for entry in model.iterdir():
        if entry.name != "config.json":
            (into / entry.name).symlink_to(entry.resolve())
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    config["text_config"]["architectures"] = ["LlamaForCausalLM"]
    (into / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return into


def _run(command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # the converter's own gguf-py
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:3])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


if __name__ == "__main__":
    from tests.vision_model import tiny_vision_model

    print(tiny_vision_gguf(tiny_vision_model()))
