"""LLAMACPP: llama.cpp through llama-cpp-python (model resolution, multi-sequence decoder, grammars)."""
