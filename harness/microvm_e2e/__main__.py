"""``python -m harness.microvm_e2e``: the scenario's command line (what scripts/microvm-e2e runs)."""

from harness.microvm_e2e.cli import script

if __name__ == "__main__":
    script()
