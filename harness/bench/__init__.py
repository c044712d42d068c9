"""The benchmarks: each prints figures and asserts nothing; everything it makes it removes.

One module per benchmark, each run by its entry point ``scripts/bench-<name>`` (``--help`` where it
takes flags): ``concurrent``, ``image``, ``lifecycle``, ``microvm``, ``platforms``, ``smoke``,
``start``, ``supervise``. What they share is in ``harness.bench.common`` and ``harness.common``.
What the figures were on the machines they ran on is in docs/design-notes/harness.md.
"""
