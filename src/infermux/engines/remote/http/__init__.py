"""The HTTP layer under every remote protocol: transport, limits, server-sent events, auth."""
