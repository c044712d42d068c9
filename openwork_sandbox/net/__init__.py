"""Talking HTTP: the one session factory, the OpenWork API, its health, and local ports."""
