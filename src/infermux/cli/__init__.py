"""Command-line interface. Subcommand implementations are imported only when chosen."""
