"""openwork-sandbox: build an OpenWork image, push it, boot it (microVM or container), smoke-test it.

The Invoke collection is ``openwork_sandbox.tasks.ns``; the ``openwork-sandbox`` program
(``openwork_sandbox.cli``) and this repository's ``tasks.py`` run it. Packages, from the top (each
imports only those below it; ``docs/architecture.md``): ``smoke``; ``sandbox`` and ``image``;
``runtimes``; ``state`` and ``registry``; ``net``; ``config``; ``core``.
"""

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it from here)
