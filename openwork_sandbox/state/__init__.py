"""What is kept on the host for a sandbox: .state/<name>/ and what the programs keep under /data."""
