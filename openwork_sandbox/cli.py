"""The ``openwork-sandbox`` console program: the same tasks and flags as ``invoke`` in this repository.

``openwork-sandbox build-image push-image up`` runs from any folder; ``.env`` and ``.state/`` are
found in the folder you run it in (the current directory), not where the package is installed.
"""

from __future__ import annotations

from invoke import Program

from openwork_sandbox import __version__
from openwork_sandbox.tasks import ns

program = Program(namespace=ns, version=__version__, name="openwork-sandbox", binary="openwork-sandbox")


def main() -> None:
    program.run()


if __name__ == "__main__":  # python -m openwork_sandbox.cli
    main()
