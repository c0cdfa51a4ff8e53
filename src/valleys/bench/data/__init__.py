"""Real datasets that load offline, one module per source."""
