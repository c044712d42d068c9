"""The microsandbox runtime: a microVM per sandbox through the microsandbox SDK.

``runtime.MicrosandboxRuntime`` is the :class:`~openwork_sandbox.runtimes.base.Runtime`; the other
modules hold what it delegates (each says what it owns). None of them imports the SDK when imported.
"""
