"""Image registries: the v2 API, Docker's logins and CAs, and access for a runtime's own pull."""
