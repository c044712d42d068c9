"""smoke: each check declared once, and the runner for its three modes."""
