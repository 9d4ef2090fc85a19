"""The ``permafrost`` command line: the operator itself and tools for people.

Each subcommand is a thin shell: it parses arguments, calls into the package, and turns the
outcome into an exit code. Exit codes: 0 success, 1 the action failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import pathlib
import random
import socket
import sys
from collections.abc import Sequence

import kopf

import permafrost
from permafrost import checking, documents, kube, models


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="permafrost",
        description=(
            "Permafrost makes workload rollouts immutable and guarded: every change is a new "
            "revision that takes traffic only once it is proven healthy."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"permafrost {permafrost.__version__}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable); default: all namespaces",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)"
    )
    run.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate with other replicas through this KopfPeering object; default: standalone",
    )
    run.add_argument(
        "--priority",
        type=int,
        metavar="N",
        help="this replica's peering priority: the highest live one acts (default: random, "
        "as replicas of equal priority all pause)",
    )
    run.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        metavar="SECONDS",
        help="how long a silent replica counts as alive: the takeover time (default: %(default)s)",
    )
    run.add_argument(
        "--liveness", metavar="URL", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz"
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (/metrics)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log more")
    guard = run.add_argument_group("admission guardrails")
    guard.add_argument(
        "--admission",
        action="store_true",
        help="serve the admission webhooks and install the fail-safe policy",
    )
    guard.add_argument(
        "--webhook-listen",
        default="0.0.0.0:9443",
        metavar="HOST:PORT",
        help="where the webhook server listens (default: %(default)s)",
    )
    where = guard.add_mutually_exclusive_group()
    where.add_argument(
        "--webhook-url",
        metavar="URL",
        help="how the apiserver reaches the webhooks, e.g. https://127.0.0.1:9443",
    )
    where.add_argument(
        "--webhook-service",
        metavar="NAMESPACE/NAME[:PORT]",
        help="the Service in front of the webhooks (in-cluster)",
    )
    guard.add_argument(
        "--operator-namespace",
        default="permafrost-system",
        metavar="NS",
        help="the operator's namespace: holds the TLS Secret, never frozen",
    )
    guard.add_argument(
        "--tls-secret",
        metavar="NAME",
        help="use this Secret (tls.crt, tls.key, ca.crt; e.g. from cert-manager) "
        "instead of Permafrost's own CA",
    )
    guard.add_argument(
        "--break-glass-group",
        action="append",
        metavar="GROUP",
        help="members may use break-glass (repeatable; default permafrost:break-glass)",
    )
    guard.add_argument(
        "--exempt-user",
        action="append",
        metavar="USER",
        help="never denied (repeatable; default: the operator's service account "
        "system:serviceaccount:NS:permafrost)",
    )

    rollback = commands.add_parser(
        "rollback", help="promote a retained revision again (it is verified first)"
    )
    rollback.add_argument("name", help="the GuardedRelease")
    rollback.add_argument(
        "--to",
        required=True,
        metavar="REVISION",
        help="a retained revision: its hash or its Deployment name",
    )
    rollback.add_argument("-n", "--namespace", default="default")

    check = commands.add_parser(
        "check",
        help="evaluate GuardrailPolicies offline (CI): exit 0 ok, 1 violation, 2 unusable input",
        description="Evaluate GuardrailPolicies on manifests without a cluster. Inputs are "
        "YAML/JSON files (multi-document) of GuardedReleases, Deployments, StatefulSets, "
        "DaemonSets, Pods or, at build, Artifacts. Exit 0 when nothing enforced is violated, "
        "1 when something is, 2 on unusable input.",
    )
    check.add_argument("--stage", required=True, choices=["build", "promote", "create"])
    check.add_argument(
        "-p",
        "--policy",
        action="append",
        default=[],
        metavar="FILE_OR_DIR",
        help="policy files or directories (repeatable); default: the built-in library",
    )
    check.add_argument("-o", "--output", choices=["table", "json"], default="table")
    check.add_argument("--namespace", metavar="NAME", help="the target namespace's name")
    check.add_argument(
        "--namespace-label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label of the target namespace (repeatable)",
    )
    check.add_argument(
        "--stable",
        metavar="FILE",
        help="at promote: YAML of the serving revision {hash, name, images, version}",
    )
    check.add_argument("--now", metavar="RFC3339", help="the time rules see (default: now)")
    check.add_argument("inputs", nargs="+", metavar="INPUT")

    retry = commands.add_parser("retry", help="try a failed revision again")
    retry.add_argument("name", help="the GuardedRelease")
    retry.add_argument("-n", "--namespace", default="default")
    return parser


def _not_an_admission_denial(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith("Webhook ") and "failed permanently" in message)


def _run(args: argparse.Namespace) -> int:
    kopf.configure(verbose=args.verbose)
    logging.getLogger("permafrost").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    # NB: Kopf logs every successful event handler; ours only enqueue, so that is noise. It also
    # logs every admission denial as a handler failure at ERROR; Permafrost logs decisions itself.
    kopf_objects = logging.getLogger("kopf.objects")
    kopf_objects.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    kopf_objects.addFilter(_not_an_admission_denial)
    from permafrost import (
        handlers,
        webhooks,
    )

    if args.metrics_port:
        from permafrost import metrics

        metrics.serve(port=args.metrics_port)
    memo = kopf.Memo()
    if args.admission:
        webhooks.register_handlers()
        host, _, port = args.webhook_listen.rpartition(":")
        memo["admission"] = webhooks.Options(
            listen_host=host or "0.0.0.0",
            listen_port=int(port),
            url=args.webhook_url,
            service=args.webhook_service,
            namespace=args.operator_namespace,
            tls_secret=args.tls_secret,
            settings=webhooks.settings_from(
                exempt_users=args.exempt_user
                or [f"system:serviceaccount:{args.operator_namespace}:permafrost"],
                break_glass_groups=args.break_glass_group or ["permafrost:break-glass"],
                namespace=args.operator_namespace,
            ),
        )
    identity = os.environ.get("POD_ID") or f"{socket.gethostname()}/{os.getpid()}"
    priority = args.priority if args.priority is not None else random.randint(1, 2**31)
    if args.peering is not None:
        memo["peering"] = handlers.Peering(
            name=args.peering,
            identity=identity,
            priority=priority,
            namespaces=tuple(args.namespace),
        )
        memo["peering_lifetime"] = args.peering_lifetime
    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=args.peering is None,
            peering_name=args.peering,
            priority=priority,
            identity=identity,  # type: ignore[arg-type]  # NB: Kopf's Identity is a str NewType
            liveness_endpoint=args.liveness,
            memo=memo,
        )
    )
    return 0


async def _rollback(namespace: str, name: str, to: str) -> str:
    body = await kube.read_release(namespace, name)
    if body is None:
        raise LookupError(f"GuardedRelease {namespace}/{name} not found")
    status = models.GuardedReleaseStatus.model_validate(body.get("status") or {})
    record = next((r for r in status.revisions if to in (r.hash, r.name)), None)
    if record is None:
        known = ", ".join(f"{r.hash} ({r.outcome})" for r in status.revisions) or "none"
        raise LookupError(f"revision {to!r} is not retained by {name}; retained: {known}")
    annotations = body["metadata"].get("annotations") or {}
    # NB: rollback-from pins the rollback to the spec's current revision: when the spec changes,
    # the rollback ends by itself and the new spec rolls out. While a rollback is in effect the
    # status shows its target, so the pinned spec revision is the one already recorded.
    active = models.ANNOTATION_ROLLBACK_TO in annotations and (
        status.desired_revision == annotations.get(models.ANNOTATION_ROLLBACK_TO)
    )
    origin = (
        annotations.get(models.ANNOTATION_ROLLBACK_FROM) if active else (status.desired_revision)
    )
    if origin is None:
        raise LookupError(f"{name} has no desired revision yet; wait for its first reconcile")
    await kube.patch_release_annotations(
        namespace,
        name,
        {
            models.ANNOTATION_ROLLBACK_TO: record.hash,
            models.ANNOTATION_ROLLBACK_FROM: origin,
        },
    )
    return record.hash


async def _retry(namespace: str, name: str) -> None:
    if await kube.read_release(namespace, name) is None:
        raise LookupError(f"GuardedRelease {namespace}/{name} not found")
    token = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    await kube.patch_release_annotations(namespace, name, {models.ANNOTATION_RETRY: token})


LIBRARY = pathlib.Path(__file__).parent / "library"


def _policy_files(paths: Sequence[str]) -> list[pathlib.Path]:
    found: list[pathlib.Path] = []
    for raw in paths or [str(LIBRARY)]:
        path = pathlib.Path(raw)
        if path.is_dir():
            found += sorted(
                p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json") and p.is_file()
            )
        elif path.is_file():
            found.append(path)
        else:
            raise documents.InputError(f"{raw}: no such policy file or directory")
    return found


def _read(path: pathlib.Path) -> tuple[str, str]:
    try:
        data = path.read_bytes()
        if len(data) > documents.MAX_BYTES:
            raise documents.InputError(
                f"{path}: larger than {documents.MAX_BYTES // (1024 * 1024)} MiB"
            )
        return str(path), data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise documents.InputError(f"{path}: cannot be read: {exc}") from None


def _check(args: argparse.Namespace) -> int:
    policies = checking.load_policies([_read(p) for p in _policy_files(args.policy)])
    labels = {}
    for item in args.namespace_label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise documents.InputError(f"--namespace-label {item!r}: expected KEY=VALUE")
        labels[key] = value
    namespace = (
        {"name": args.namespace or "", "labels": labels} if args.namespace or labels else None
    )
    stable = None
    if args.stable:
        docs = documents.load_all(_read(pathlib.Path(args.stable))[1], source=args.stable)
        stable = dict(docs[0].body) if docs else None
    try:
        now = (
            datetime.datetime.fromisoformat(args.now.replace("Z", "+00:00"))
            if args.now
            else datetime.datetime.now(datetime.UTC)
        )
    except ValueError:
        raise documents.InputError(f"--now {args.now!r}: not an RFC 3339 time") from None
    if now.tzinfo is None:
        now = now.replace(tzinfo=datetime.UTC)
    report = checking.check(
        inputs=[_read(pathlib.Path(p)) for p in args.inputs],
        policies=policies,
        stage=args.stage,
        now=now,
        namespace=namespace,
        stable=stable,
    )
    print(checking.render_json(report) if args.output == "json" else checking.render_table(report))
    return report.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "rollback":
            revision = asyncio.run(_rollback(args.namespace, args.name, args.to))
            print(
                f"{args.namespace}/{args.name}: rolling back to revision {revision}; it is "
                f"verified before it takes traffic (kubectl get grel {args.name} -w)"
            )
            return 0
        if args.command == "check":
            try:
                return _check(args)
            except documents.InputError as exc:
                print(f"permafrost check: {exc}", file=sys.stderr)
                return checking.EXIT_UNUSABLE
        if args.command == "retry":
            asyncio.run(_retry(args.namespace, args.name))
            print(f"{args.namespace}/{args.name}: a new attempt starts")
            return 0
    except LookupError as exc:
        print(f"permafrost: {exc}", file=sys.stderr)
        return 1
    parser.print_help(sys.stderr)
    return 2
