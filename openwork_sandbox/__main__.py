"""``python -m openwork_sandbox ...``: the console program (where the ``openwork-sandbox`` script is not on PATH)."""

from openwork_sandbox.cli import main

main()
