"""Benchmark `smoke` (prints figures; not a test, asserts nothing).

1. warm: boot a sandbox once (`up`), then time every check of `smoke` over several rounds against
   the warm server (target: all checks under 1 s);
2. ephemeral: `smoke --ephemeral` end to end, against its floor = cold `up` + the checks.

Settings come from the environment / .env as for `invoke` (image: OPENWORK_MICROSANDBOX_IMAGE,
e.g. the test stack image); flags below override. Everything it boots it removes.

    scripts/bench-smoke [--image REF] [--runtime docker] [--rounds 5] [--samples 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import secrets
import statistics
import sys
import time

from harness.common import ROOT, back_to_caller_cwd, teller
from openwork_sandbox.config import load_settings
from openwork_sandbox.core.errors import WorkflowError
from openwork_sandbox.sandbox.reset import reset
from openwork_sandbox.sandbox.up import up
from openwork_sandbox.smoke.modes import ephemeral_settings, local_target, run_smoke
from openwork_sandbox.smoke.runner import CHECKS, SmokeRunner

say = teller("bench-smoke")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms" if seconds < 10 else f"{seconds:7.2f} s "


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench-smoke", description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="image to boot (default: OPENWORK_MICROSANDBOX_IMAGE)")
    parser.add_argument("--runtime", help="auto|microsandbox|docker (default: OPENWORK_MICROSANDBOX_RUNTIME)")
    parser.add_argument("--rounds", type=int, default=5, help="warm rounds (default 5)")
    parser.add_argument("--samples", type=int, default=3, help="paired floor / --ephemeral samples (default 3)")
    args = parser.parse_args()

    base = load_settings({"image": args.image, "runtime": args.runtime}, root=ROOT)
    print(f"image {base.image}, runtime {base.runtime}, request timeout {base.request_timeout:g}s")

    # --- 1. cold up, then warm rounds ----------------------------------------------------------
    settings = ephemeral_settings(base.with_overrides(name=f"bench-smoke-{secrets.token_hex(3)}"))
    quiet = io.StringIO()
    try:
        start = time.perf_counter()
        with contextlib.redirect_stderr(quiet):
            ep = up(settings, as_json=False)
        cold_up = time.perf_counter() - start
        target = local_target(settings, ep, "sandbox")
        rounds = []
        for _ in range(args.rounds + 1):  # the first round warms connections and opencode
            report = SmokeRunner(
                target, request_timeout=settings.request_timeout, health_timeout=settings.health_timeout
            ).run()
            if not report.ok:
                bad = [f"{c.name}: {c.message}" for c in report.checks if c.result in ("failed", "error")]
                print("a warm round failed:", "; ".join(bad))
                return 1
            rounds.append(report)
    finally:
        with contextlib.redirect_stderr(quiet), contextlib.suppress(WorkflowError):
            reset(settings, yes=True)

    first, warm = rounds[0], rounds[1:]
    print(f"\ncold up ({ep.runtime}): {ms(cold_up)}")
    print(f"\nwarm smoke, {len(warm)} rounds (the first round right after `up` is shown apart, not counted)")
    print(f"  {'check':<16}{'median':>11}{'max':>11}{'first':>11}")
    for i, name in enumerate(CHECKS[:-1]):  # persistence is not part of the default run
        values = [r.checks[i].seconds for r in warm]
        print(f"  {name:<16}{ms(statistics.median(values)):>11}{ms(max(values)):>11}{ms(first.checks[i].seconds):>11}")
    totals = [r.total_seconds for r in warm]
    median_total = statistics.median(totals)
    verdict = "under" if median_total < 1 else "OVER"
    print(
        f"  {'all checks':<16}{ms(median_total):>11}{ms(max(totals)):>11}{ms(first.total_seconds):>11}"
        f"   ({verdict} the 1 s target)"
    )

    # --- 2. smoke --ephemeral end to end, against its floor -----------------------------------
    # floor = cold `up` + one round of checks on the fresh server (no teardown). Samples are taken in
    # pairs (a floor, then an --ephemeral run) so both sides see the same machine load.
    pairs = []
    for _ in range(args.samples):
        fresh = ephemeral_settings(base.with_overrides(name=f"bench-smoke-{secrets.token_hex(3)}"))
        try:
            start = time.perf_counter()
            with contextlib.redirect_stderr(quiet):
                ep = up(fresh, as_json=False)
            up_s = time.perf_counter() - start
            checks = SmokeRunner(
                local_target(fresh, ep, "sandbox"),
                request_timeout=fresh.request_timeout,
                health_timeout=fresh.health_timeout,
            ).run()
        finally:
            with contextlib.redirect_stderr(quiet), contextlib.suppress(WorkflowError):
                reset(fresh, yes=True)
        out, err = io.StringIO(), io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run_smoke(
                base.with_overrides(name=f"bench-eph-{secrets.token_hex(3)}"), ephemeral=True, as_json=True
            )
        took = time.perf_counter() - start
        if code != 0 or not checks.ok:
            print(f"\na sample failed (smoke --ephemeral exit {code}):\n{err.getvalue()[-2000:]}")
            return 1
        pairs.append((up_s, checks.total_seconds, took, json.loads(out.getvalue())["timings"]))

    print(f"\nsmoke --ephemeral end to end vs its floor, {len(pairs)} paired samples")
    print(
        f"  {'floor: up':>12}{'+ checks':>11}{'= floor':>11}{'ephemeral':>11}{'(up':>11}{'checks':>11}"
        f"{'teardown)':>11}{'overhead':>11}"
    )
    for up_s, checks_s, took, t in pairs:
        floor = up_s + checks_s
        print(
            f"  {ms(up_s):>12}{ms(checks_s):>11}{ms(floor):>11}{ms(took):>11}{ms(t['up']):>11}"
            f"{ms(t['checks']):>11}{ms(t['teardown']):>11}{ms(took - floor):>11}"
        )
    floors = [p[0] + p[1] for p in pairs]
    ends = [p[2] for p in pairs]
    print(
        f"  median: floor {ms(statistics.median(floors)).strip()}, end to end "
        f"{ms(statistics.median(ends)).strip()}, overhead "
        f"{ms(statistics.median([e - f for e, f in zip(ends, floors, strict=True)])).strip()} "
        f"(teardown {ms(statistics.median([p[3]['teardown'] for p in pairs])).strip()}; the rest is noise "
        "in `up` on a shared machine)"
    )
    return 0


if __name__ == "__main__":
    back_to_caller_cwd()
    try:
        sys.exit(main())
    except WorkflowError as exc:
        say(exc.message)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
