"""``python -m openwork_sandbox ...``: the console program (where the ``openwork-sandbox`` script is not on PATH)."""

from .cli import main

main()
