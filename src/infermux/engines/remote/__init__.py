"""Remote engines: one shared HTTP transport (:mod:`.transport`), one engine base (:mod:`.base`), and a
small module per protocol or provider. Nothing here is imported until an engine is built."""
