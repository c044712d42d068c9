"""openwork-sandbox: bake OpenWork into an image, push it, boot it, and smoke-test remote connect.

The Invoke tasks in ``openwork_sandbox.tasks`` (collection ``ns``; the console program
``openwork-sandbox`` and this repository's ``tasks.py`` run it) are thin; the work lives in the
modules of this package:

- ``settings``   where every setting is read and validated (flags > environment > .env > defaults)
- ``errors``     the exceptions that end a task with a one-line message and an exit code
- ``console``    terminal output: tables, progress bars, masking of secrets, JSON on stdout
- ``commands``   where external commands (docker, msb, skopeo) are run
- ``doctor``     what this machine can and cannot do
"""

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it from here)
