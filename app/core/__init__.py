"""Cross-cutting pieces used by every layer: settings, security, errors, database, logging."""
