"""openwork-sandbox tasks (``invoke --list``): the package's collection, with this folder as project root.

The tasks live in :mod:`openwork_sandbox.tasks`; the ``openwork-sandbox`` console program runs the
same collection. Here ``.env`` and ``.state/`` are found next to this file, wherever you run
``invoke`` from in the checkout.
"""

from pathlib import Path

from openwork_sandbox.tasks import ns

ns.configure({"openwork_sandbox": {"project_root": str(Path(__file__).resolve().parent)}})
