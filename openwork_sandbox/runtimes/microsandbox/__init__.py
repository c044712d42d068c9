"""The microsandbox runtime: a microVM per sandbox through the microsandbox SDK."""
