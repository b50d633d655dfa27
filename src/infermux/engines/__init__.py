"""Engines: the base contract, the registry and the durable batch loop."""
