"""Host integration: the entry point, configuration, authentication, persistent definitions,
systemd and logging setup."""
