"""The sandbox flows: up, down, status, logs, reset, doctor, backup, restore, manifests, and what they share."""
