"""Memory and start-up in a cluster full of objects that no release uses.

Real clusters hold thousands of large Secrets (Helm keeps every release's manifests in one) and
many ConfigMaps that have nothing to do with Permafrost. This benchmark fills two unrelated
namespaces with 2,000 Secrets of 100 KiB and 5,000 small ConfigMaps, and runs
``permafrost run`` (all namespaces, admission on, under its own ServiceAccount, as deployed)
for each version of the operator's code it is given, side by side in one run: the working tree
("this tree") and git revisions (``--baseline``, repeatable, default ``main``), each taken with
``git archive`` and put first on the operator's ``PYTHONPATH``. Each version runs in the cluster
as it is before the unrelated objects are created (unless ``--skip-empty``), then with them;
``--repeat N`` runs each N times, interleaved.

For each run it measures, from the outside:

- peak RSS of the operator's process tree (sampled every 100 ms, from its start until it has
  been idle for a few seconds after its first reconcile);
- start-up: seconds from the process's start until its webhook answers, and until its first
  reconcile of a release that existed before it started (the release's status gets a phase).

Not part of ``make bench`` or of the test suite (it writes 200 MB into etcd and takes minutes)::

    .venv/bin/python -m bench.memory                      # results in bench/results/memory.json
    .venv/bin/python -m bench.memory --baseline HEAD~3     # another baseline
    .venv/bin/python -m bench.memory --keep-objects        # leave the objects for the next run
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from bench import common, run, scale

NAMESPACES = ("bench-memory-unrelated-a", "bench-memory-unrelated-b")
SECRETS, SECRET_BYTES, CONFIGMAPS = 2000, 100 * 1024, 5000
TARGET_RSS_MB, TARGET_START_SECONDS = 300, 30


def _existing(api: common.Api, kind: str, namespace: str) -> set[str]:
    """Names of the ConfigMaps or Secrets in ``namespace``, listed in pages of 500."""
    list_ = (
        api.core.list_namespaced_secret if kind == "Secret" else api.core.list_namespaced_config_map
    )
    names: set[str] = set()
    token = None
    while True:
        page = list_(namespace, limit=500, _continue=token)
        names |= {item.metadata.name for item in page.items}
        token = page.metadata._continue
        if not token:
            return names


def populate(api: common.Api, *, secrets: int, configmaps: int) -> float:
    """The unrelated objects, half in each namespace (those already there are kept); seconds."""
    started = time.monotonic()
    for namespace in NAMESPACES:
        with common.ignore_status(409):
            common.create_namespace(api, namespace)
    payload = base64.b64encode(os.urandom(SECRET_BYTES)).decode()  # NB: incompressible

    def secret(namespace: str, name: str) -> None:
        with common.ignore_status(409):
            api.core.create_namespaced_secret(
                namespace,
                {"metadata": {"name": name}, "type": "Opaque", "data": {"release": payload}},
            )

    def configmap(namespace: str, name: str) -> None:
        with common.ignore_status(409):
            api.core.create_namespaced_config_map(
                namespace, {"metadata": {"name": name}, "data": {"key": name}}
            )

    jobs = []
    for i, namespace in enumerate(NAMESPACES):
        have = _existing(api, "Secret", namespace)
        jobs += [
            (secret, namespace, f"sh.helm.release.v1.app-{n}")
            for n in range(i, secrets, len(NAMESPACES))
            if f"sh.helm.release.v1.app-{n}" not in have
        ]
        have = _existing(api, "ConfigMap", namespace)
        jobs += [
            (configmap, namespace, f"settings-{n}")
            for n in range(i, configmaps, len(NAMESPACES))
            if f"settings-{n}" not in have
        ]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(fn, ns, name) for fn, ns, name in jobs]:
            future.result()
    return time.monotonic() - started


def _source(ref: str, directory: pathlib.Path) -> pathlib.Path:
    """The operator's package at git revision ``ref``, as a directory for ``PYTHONPATH``."""
    archive = subprocess.run(
        ["git", "archive", ref, "operator"], cwd=common.ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
    return directory / "operator"


def measure(
    api: common.Api,
    directory: pathlib.Path,
    *,
    label: str,
    pythonpath: pathlib.Path | None,
    logs: pathlib.Path,
) -> dict[str, Any]:
    """One operator run: its peak RSS and how long it took to serve and to reconcile."""
    namespace = common.create_namespace(api, common.unique("bench-memory"))
    name = "app"
    template = common.pod_template(name)
    api.custom.create_namespaced_custom_object(
        "permafrost.dev",
        "v1alpha1",
        namespace,
        "guardedreleases",
        common.release(name, replicas=1, template=template),
    )
    reconciled: list[float] = []
    stop = threading.Event()

    def follow(started: float) -> None:
        while not stop.is_set():
            try:
                if common.release_status(api, namespace, name).get("phase"):
                    reconciled.append(time.monotonic() - started)
                    return
            except Exception as exc:  # NB: the apiserver may be busy; try again
                print(f"[bench] memory: status not read ({exc})", file=sys.stderr)
            stop.wait(0.2)

    env = {"PYTHONPATH": str(pythonpath)} if pythonpath is not None else {}
    # NB: a start-up slower than the target is measured, not cut short.
    operator = common.Operator(api, directory, admission=True, env=env, start_timeout=600)
    started = time.monotonic()
    follower = threading.Thread(target=follow, args=(started,), daemon=True)
    follower.start()
    try:
        operator.start()  # NB: returns once the webhook answers
        webhook = time.monotonic() - started
        follower.join(timeout=300)
        scale._settle(operator, timeout=120)
        return {
            "label": label,
            "peak_rss_bytes": operator.peak_rss,
            "end_rss_bytes": operator.rss(),
            "webhook_ready_seconds": webhook,
            "first_reconcile_seconds": reconciled[0] if reconciled else None,
            "log": str(logs / operator.log.name),
        }
    finally:
        stop.set()
        operator.stop()
        shutil.copy(operator.log, logs / operator.log.name)  # NB: the directory is temporary
        common.delete_namespaces(api, [namespace])


def _mb(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


def table(results: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| operator | unrelated objects | peak RSS | RSS when idle | webhook ready | "
        "first reconcile |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        first = r["first_reconcile_seconds"]
        lines.append(
            f"| {r['label']} | {r['objects']} | {_mb(r['peak_rss_bytes'])} | "
            f"{_mb(r['end_rss_bytes'])} | {r['webhook_ready_seconds']:.1f} s | "
            + (f"{first:.1f} s |" if first is not None else "none |")
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument(
        "--baseline",
        action="append",
        help="git revision to compare with (repeatable; default: main)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each version, interleaved")
    parser.add_argument("--out", type=pathlib.Path, default=common.ROOT / "bench" / "results")
    parser.add_argument("--secrets", type=int, default=SECRETS)
    parser.add_argument("--configmaps", type=int, default=CONFIGMAPS)
    parser.add_argument(
        "--keep-objects", action="store_true", help="leave the unrelated namespaces in place"
    )
    parser.add_argument(
        "--skip-empty", action="store_true", help="measure only with the unrelated objects"
    )
    args = parser.parse_args(argv)
    run.install_crds()
    api = common.Api.connect()
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        directory = pathlib.Path(tmp)
        versions: list[tuple[str, pathlib.Path | None]] = []
        for i, ref in enumerate(args.baseline or ["main"]):
            (directory / str(i)).mkdir()
            versions.append((f"{ref} (before)", _source(ref, directory / str(i))))
        versions.append(("this tree (after)", None))
        try:
            loaded = f"{args.secrets} Secrets, {args.configmaps} ConfigMaps"
            for objects in [loaded] if args.skip_empty else ["none", loaded]:
                if objects != "none":
                    seconds = populate(api, secrets=args.secrets, configmaps=args.configmaps)
                    print(f"[bench] memory: objects in place in {seconds:.0f}s", file=sys.stderr)
                for label, source in [v for _ in range(args.repeat) for v in versions]:
                    result = measure(api, directory, label=label, pythonpath=source, logs=args.out)
                    result["objects"] = objects
                    results.append(result)
                    print(f"[bench] memory: {result}", file=sys.stderr, flush=True)
        finally:
            if not args.keep_objects:
                common.delete_namespaces(api, NAMESPACES)
    common.dump(
        args.out / "memory.json",
        {
            **common.machine(),
            "targets": {"peak_rss_mb": TARGET_RSS_MB, "start_seconds": TARGET_START_SECONDS},
            "results": results,
        },
    )
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
