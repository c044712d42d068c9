"""The harnesses around openwork-sandbox: the emulated host where microVMs boot, the microVM scenario,
the image it boots, and the benchmarks. Not part of the wheel; it runs from a checkout.

- ``harness.microvm_host``  an emulated KVM host in QEMU that runs a command in a copy of the checkout
- ``harness.microvm_e2e``   every task on the real microsandbox runtime, end to end, one line per step
- ``harness.microvm_image`` the image that scenario boots (stand-in server and orchestrator)
- ``harness.bench``         the benchmarks: each prints figures and asserts nothing
- ``harness.common``        what they share: the checkout, the stand-ins, their lines, tasks, registries

Each is run as ``python -m harness.<module>`` by its entry point ``scripts/<name>``. The harness
imports ``openwork_sandbox``; the package never imports the harness (an import-linter contract).
"""
