#!/usr/bin/env bash
# Install llama-cpp-python from a wheel built once per build setting, not from pip's cache.
#
#   scripts/install_llamacpp.sh PIP VERSION [CMAKE_ARGS]
#
# llama-cpp-python ships only a source distribution, so pip compiles it; with its default GGML_NATIVE the
# library uses every instruction of the CPU it was built on, and pip's wheel cache then hands that build to
# any later install on any CPU (a copied cache, a Docker layer, a Ray worker image): SIGILL there. So:
# - the default build is portable: GGML_NATIVE=OFF, i.e. SSE4.2, AVX, AVX2, FMA, F16C, BMI2 (x86-64-v3,
#   Intel Core since Haswell, AMD since Zen) and no AMX kernels; measured as fast as the native build on the
#   default model (docs/install.md, "A portable llama.cpp build");
# - CMAKE_ARGS with GGML_NATIVE=ON (or any other setting) gets its own wheel; a native one is also keyed
#   by this CPU's flags, so it is reused only on a CPU that has the same;
# - the wheel is built with pip's cache off and kept under ~/.cache/infermux/wheels/<key>/.
set -euo pipefail
PIP=$1
VERSION=$2
ARGS=${3:--DGGML_NATIVE=OFF}
key=$(printf '%s|%s' "$VERSION" "$ARGS" | sha256sum | cut -c1-16)
if [[ $ARGS != *GGML_NATIVE=OFF* ]]; then  # the build depends on this CPU
    key+=-$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | sha256sum | cut -c1-16)
fi
dir=${XDG_CACHE_HOME:-$HOME/.cache}/infermux/wheels/llama-cpp-python-$key
wheel=$(ls "$dir"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [[ -z $wheel ]]; then
    echo "building llama-cpp-python $VERSION with CMAKE_ARGS='$ARGS' (about 5-10 minutes on 2 cores)"
    rm -rf "$dir.partial"
    CMAKE_ARGS="$ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        "$PIP" wheel -q --no-deps --no-cache-dir -w "$dir.partial" "llama-cpp-python==$VERSION"
    rm -rf "$dir" && mv "$dir.partial" "$dir"
    wheel=$(ls "$dir"/llama_cpp_python-"$VERSION"-*.whl | head -n1)
fi
"$PIP" install -q --force-reinstall --no-deps "$wheel"
"$PIP" install -q "$wheel[server]"  # the server extra's dependencies (llama_cpp.server in the tests)
