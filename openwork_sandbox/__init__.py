"""openwork-sandbox: bake OpenWork into an image, push it, boot it, and smoke-test remote connect.

The Invoke tasks in ``tasks.py`` are thin; the work lives in the modules of this package:

- ``settings``   where every setting is read and validated (flags > environment > .env > defaults)
- ``errors``     the exceptions that end a task with a one-line message and an exit code
- ``console``    terminal output: tables, progress bars, masking of secrets, JSON on stdout
- ``commands``   where external commands (docker, msb, skopeo) are run
- ``doctor``     what this machine can and cannot do
"""

__version__ = "0.1.0"
