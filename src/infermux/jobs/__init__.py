"""Jobs: input rows, job files, the durable run loop and the fingerprint; the layer the CLI calls."""
