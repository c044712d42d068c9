"""``python -m harness.microvm_host``: the emulated host's command line (what scripts/microvm-host runs)."""

from harness.microvm_host.cli import script

if __name__ == "__main__":
    script()
