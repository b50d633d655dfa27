"""NATIVE: transformers on CPU or GPU (loading, decode loop, parameters, streaming)."""
