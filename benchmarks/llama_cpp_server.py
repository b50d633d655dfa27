"""``python -m llama_cpp.server`` with the model loaded as infermux's LLAMACPP engine loads it.

llama-cpp-python's server takes no flag for llama.cpp's extra buffer types, whose AMX path crashes on
CPUs with AMX (``infermux.engines.llamacpp.cpu``); this runs the same server module with
``use_extra_bufts`` chosen for this machine, so the tests and the serve benchmark start a server that
answers, and compare it with the engine on the same kernels. Arguments are the server's own.

    python benchmarks/llama_cpp_server.py --model MODEL.gguf --port 8000 ...
"""

from __future__ import annotations

import runpy
import sys


def main() -> None:
    from infermux.engines.llamacpp.cpu import model_defaults

    with model_defaults():
        sys.argv[0] = "llama_cpp.server"
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
