"""Run the benchmarks, keep each one's results as JSON, then write the report.

Results go to ``bench/results/`` (or ``--out``): ``<benchmark>.json`` plus ``machine.json``;
the report generator (:mod:`bench.report`) reads them. ``--smoke`` uses tiny sizes and writes
no report unless asked.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from bench import (
    admission,
    common,
    policy_engine,
    report,
    rollback,
    rollout,
    scale,
    verification,
    zero_downtime,
)

BENCHMARKS: dict[str, Callable[..., dict[str, Any]]] = {
    "policy_engine": policy_engine.run,
    "admission": admission.run,
    "rollout": rollout.run,
    "rollback": rollback.run,
    "scale": scale.run,
    "zero_downtime": zero_downtime.run,
    "verification": verification.run,
}
# NB: these need no cluster (the policy engine in process; the registry on loopback): run alone,
# they run without one.
NO_CLUSTER = frozenset({"policy_engine", "verification"})
RESULTS = common.ROOT / "bench" / "results"
CRDS = ("guardedrelease.yaml", "guardrailpolicy.yaml", "kopf-peering.yaml")


def install_crds() -> None:
    """The Permafrost CRDs, applied and Established (the cluster may be fresh)."""
    for crd in CRDS:
        subprocess.run(
            ["kubectl", "apply", "--server-side", "--force-conflicts", "-f", f"crds/{crd}"],
            cwd=common.ROOT,
            check=True,
            capture_output=True,
        )
    # NB: first until the apiserver has written their status, then until Established, as
    # docs/install.md waits: --for=condition=Established alone fails at once on a CRD whose
    # .status.conditions is still null.
    for condition in ("--for=jsonpath={.status.conditions[0]}", "--for=condition=Established"):
        subprocess.run(
            [
                "kubectl",
                "wait",
                condition,
                "--timeout=60s",
                "crd/guardedreleases.permafrost.dev",
                "crd/guardrailpolicies.permafrost.dev",
            ],
            check=True,
            capture_output=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: does it still work?")
    parser.add_argument(
        "--only", action="append", choices=sorted(BENCHMARKS), help="run only these (repeatable)"
    )
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/benchmarks.md and its plots (default: yes, except with --smoke)",
    )
    parser.add_argument(
        "--doc",
        type=pathlib.Path,
        default=report.DOC,
        help="the report to write; its plots go to a folder of the same name",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="only regenerate the report from --out"
    )
    args = parser.parse_args(argv)
    out: pathlib.Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    if not args.report_only:
        names = args.only or list(BENCHMARKS)
        api = None
        if not NO_CLUSTER.issuperset(names):
            install_crds()
            api = common.Api.connect()
        common.dump(out / "machine.json", {**common.machine(), "smoke": args.smoke})
        for name in names:
            started = time.monotonic()
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            try:
                result = BENCHMARKS[name](api, out, smoke=args.smoke)
            except Exception:
                traceback.print_exc()
                failed.append(name)
                continue
            result["wall_seconds"] = time.monotonic() - started
            result["smoke"] = args.smoke
            common.dump(out / f"{name}.json", result)
            print(f"[bench] {name}: {result['wall_seconds']:.0f}s", file=sys.stderr, flush=True)
    if args.report if args.report is not None else not args.smoke:
        written = report.write(out, doc=args.doc)
        print(f"[bench] wrote {written}", file=sys.stderr)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
