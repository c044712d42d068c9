"""Settings: the one table of settings, their parsing and precedence (flag > environment > .env > default)."""
