"""The sandbox flows: up, down, status, logs, reset, doctor, backup, restore, and what they share."""
