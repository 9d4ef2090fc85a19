"""The ``permafrost`` command line: the operator itself and tools for people.

Each subcommand is a thin shell: it parses arguments, calls into the package, and turns the
outcome into an exit code. Presentation is computed by :mod:`permafrost.presenting` (pure);
every API call goes through :mod:`permafrost.kube`.

Exit codes (also in ``docs/cli.md``):

- 0: success;
- 1: the action failed or was refused: no such release or revision, a watched rollout that
  settled other than Stable, a policy violation (``check``), an API error;
- 2: usage error (and, for ``check``, unusable input);
- 3: the cluster cannot be used: no usable kubeconfig, API server unreachable, access refused;
- 4: Permafrost's CRDs are not installed in the cluster;
- 5: ``--watch`` gave up after ``--timeout``;
- 130: interrupted (Ctrl-C);
- 141: the output was closed early (e.g. ``| head``), as for a command killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import difflib
import logging
import os
import pathlib
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import kopf

import permafrost
from permafrost import kube, models, presenting
from permafrost.artifacts import attestations, images, registry, signatures
from permafrost.guards import sessions
from permafrost.policies import checking, documents

if TYPE_CHECKING:
    from permafrost.guards import webhooks

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_NO_CLUSTER, EXIT_NOT_INSTALLED, EXIT_TIMEOUT, EXIT_INTERRUPTED = 3, 4, 5, 130
EXIT_BROKEN_PIPE = 141
ENV_PREFIX = "PERMAFROST_"
# The field manager of what the command line writes (``permafrost history`` shows it).
MANAGER = "permafrost-cli"
# NB: a person at a terminal gets an answer or an error quickly, never a hang.
REQUEST_TIMEOUT_SECONDS = 15.0
WATCH_INTERVAL_SECONDS = 1.0
NAMESPACE_HELP = "default: the kubeconfig context's namespace, else default (as kubectl)"
T = TypeVar("T")


def _registry_options(parser: argparse.ArgumentParser, *, what: str) -> None:
    """The registry options of the commands that talk to registries (as ``pin``'s)."""
    group = parser.add_argument_group(f"registry ({what})")
    group.add_argument(
        "--docker-config",
        metavar="FILE",
        help="registry credentials (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json)",
    )
    group.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="talk plain HTTP to this registry (repeatable; loopback ones always are)",
    )
    group.add_argument(
        "--registry-timeout", type=float, default=registry.DEFAULT_TIMEOUT, metavar="SECONDS",
        help="per registry request (default %(default)s)",
    )  # fmt: skip


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
        "--request-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up on an API request that sends nothing for this long, and retry it: a "
        "half-open connection never hangs a reconcile (default: %(default)s)",
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
    run.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="text lines, or one JSON object per line with the fields of each decision "
        "(release, revision, reason, ...) (default: %(default)s)",
    )
    images = run.add_argument_group("registry check (before a revision is created)")
    images.add_argument(
        "--registry-check",
        choices=["off", "closed", "open"],
        default="off",
        help="look up every image of a revision in its registry before creating it, with the "
        "pods' pull secrets, and check that an index holds a node's platform: missing images "
        "hold the release (ImageNotFound, ImagePlatformMissing, PullSecretMissing...); an "
        "unreachable registry or refused credentials hold it too (closed) or are reported and "
        "let through (open) (default: %(default)s)",
    )
    images.add_argument(
        "--registry-config",
        metavar="FILE",
        help="registry credentials: a Docker config.json (auths entries); a release's pull "
        "secrets win over it for the registries they name",
    )
    images.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="talk plain HTTP to this registry (repeatable; loopback ones always are)",
    )
    images.add_argument(
        "--registry-timeout",
        type=float,
        default=registry.DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="per registry request (default %(default)s)",
    )
    guard = run.add_argument_group("admission guardrails")
    guard.add_argument(
        "--admission",
        action="store_true",
        help="serve the admission webhooks and install the fail-safe policy",
    )
    guard.add_argument(
        "--webhook-thread",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve the webhooks on an event loop and thread of their own, apart from "
        "reconciles (default: %(default)s)",
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
        help="how the apiserver reaches the webhooks, e.g. https://127.0.0.1:9443 "
        "(default: https://localhost:PORT, the port of --webhook-listen)",
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
        help="the operator's namespace, which must exist: holds the TLS Secret, never frozen "
        "(default: %(default)s)",
    )
    guard.add_argument(
        "--webhook-takeover",
        action="store_true",
        help="re-point webhooks registered for another operator that still answers at this one "
        "(without it, run refuses to start)",
    )
    tls = guard.add_mutually_exclusive_group()
    tls.add_argument(
        "--tls-dir",
        metavar="DIR",
        help="serve with the files tls.crt, tls.key and ca.crt in DIR (a Secret mounted as a "
        "volume, e.g. from cert-manager; needs no Secret access) instead of Permafrost's own CA",
    )
    tls.add_argument(
        "--tls-secret",
        metavar="NAME",
        help="serve with this Secret in the operator's namespace (tls.crt, tls.key, ca.crt; "
        "e.g. from cert-manager; needs a get grant on it) instead of Permafrost's own CA",
    )
    guard.add_argument(
        "--compile-policies",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile every create-stage GuardrailPolicy the apiserver's CEL can run into a "
        "ValidatingAdmissionPolicy, judged without the webhook and with the operator down "
        "(default: on; docs/policies.md)",
    )
    guard.add_argument(
        "--allow-port-forward",
        action="store_true",
        help="let everyone port-forward into frozen pods (read-only debugging); exec and attach "
        "still need a break-glass session",
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
    guard.add_argument(
        "--controller-user",
        action="append",
        metavar="USER",
        help="a user kube-controller-manager's controllers act as: the only creators of the "
        "pods and ReplicaSets that carry a revision's labels, and the only writers of "
        "EndpointSlices where Permafrost guards them (repeatable; default: "
        "system:kube-controller-manager and the replicaset-, deployment-, endpointslice- and "
        "endpointslicemirroring-controller ServiceAccounts of kube-system)",
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
    rollback.add_argument("-n", "--namespace", help=NAMESPACE_HELP)
    _watch_options(rollback, what="until the rollback settles")

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
    check.add_argument(
        "--attest",
        action="store_true",
        help="at build, when nothing enforced is violated: sign and push a guardrails "
        "attestation (cosign's .att layout) for every pinned image approved; exit 1 if one "
        "cannot be (not pinned, not pushed)",
    )
    check.add_argument(
        "--key",
        metavar="KEY.pem",
        help="with --attest: an unencrypted PEM private key (PKCS #8 or SEC 1): ECDSA P-256 "
        "or Ed25519",
    )
    _registry_options(
        check, what="to verify image signatures (policies' verifyImages), to push attestations"
    )
    check.add_argument("inputs", nargs="+", metavar="INPUT")

    pin = commands.add_parser(
        "pin",
        help="resolve image tags to digests in manifests (CI): exit 0 ok, 1 not resolved, "
        "2 unusable input",
        description="Resolve every container image tag in manifests to the digest its "
        "registry serves now, and write it as name:tag@sha256:... (the tag stays for people). "
        "Images already pinned are checked to exist. Only the files change, never objects in "
        "a cluster. Without --write, one INPUT (a file, or - for stdin) is printed pinned.",
    )
    pin.add_argument("inputs", nargs="+", metavar="INPUT")
    pin.add_argument(
        "-w", "--write", action="store_true", help="rewrite the files in place (all or none)"
    )
    pin.add_argument(
        "--docker-config",
        metavar="FILE",
        help="registry credentials (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json)",
    )
    pin.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="talk plain HTTP to this registry (repeatable; loopback ones always are)",
    )
    pin.add_argument(
        "--platform",
        action="append",
        default=[],
        metavar="OS/ARCH[/VARIANT]",
        help="a multi-platform image must include it (repeatable), e.g. linux/amd64",
    )
    pin.add_argument(
        "--timeout", type=float, default=registry.DEFAULT_TIMEOUT, metavar="SECONDS",
        help="per registry request (default %(default)s)",
    )  # fmt: skip

    sign = commands.add_parser(
        "sign",
        help="sign an image digest with a key, as cosign does (CI): exit 0 signed, 1 not, "
        "2 unusable input",
        description="Sign IMAGE@DIGEST with a private key and push the signature to the "
        "image's repository in cosign's layout (the tag sha256-<hex>.sig), next to the "
        "signatures already there. cosign verify --key and GuardrailPolicies' verifyImages "
        "accept it. Offline: no transparency log, no certificate.",
    )
    sign.add_argument("image", metavar="IMAGE@DIGEST")
    sign.add_argument(
        "--key",
        required=True,
        metavar="KEY.pem",
        help="an unencrypted PEM private key (PKCS #8 or SEC 1): ECDSA P-256 or Ed25519",
    )
    _registry_options(sign, what="to push the signature")

    retry = commands.add_parser("retry", help="try a failed revision again")
    retry.add_argument("name", help="the GuardedRelease")
    retry.add_argument("-n", "--namespace", help=NAMESPACE_HELP)
    _watch_options(retry, what="until the new attempt settles")

    status = commands.add_parser(
        "status",
        help="GuardedReleases as a table, or one in detail",
        description="Show GuardedReleases: a table (with why each one that is not Stable is "
        "not), or one release in detail with its conditions and revisions. --watch prints "
        "progress while a rollout runs and exits when it settles: 0 if Stable, 1 otherwise.",
    )
    status.add_argument("name", nargs="?", help="one GuardedRelease (default: all)")
    _scope_options(status)
    status.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    _watch_options(status, what="until every release shown settles")

    history = commands.add_parser(
        "history",
        help="a release's revisions, who changed it, and the timeline of its guardrails",
        description="Show the revisions of a GuardedRelease (images, times, outcome), who last "
        "changed its spec (managedFields) and the timeline of its Events and status records: "
        "revisions, policy verdicts, denials, promotions, rollbacks, drift.",
    )
    history.add_argument("name", help="the GuardedRelease")
    history.add_argument("-n", "--namespace", help=NAMESPACE_HELP)
    history.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")

    glass = commands.add_parser(
        "break-glass",
        help="open a time-boxed break-glass session on a frozen pod (exec, attach, port-forward)",
        description="Open a break-glass session on a frozen pod for yourself: until it ends, "
        "your kubectl exec, attach, cp and port-forward into that pod are let through and "
        "recorded (Events, a metric, permafrost history), and the pod is marked "
        "permafrost.dev/tainted. Once it ends, the operator replaces the pod by a fresh one of "
        "the same revision. Only members of a break-glass group may open one.",
    )
    glass.add_argument("pod", metavar="POD", help="the pod (NAME or pod/NAME)")
    glass.add_argument("-n", "--namespace", help=NAMESPACE_HELP)
    glass.add_argument(
        "--for",
        dest="duration",
        required=True,
        metavar="DURATION",
        help="how long: e.g. 90s, 15m, 1h (at most 4h)",
    )
    glass.add_argument("--reason", required=True, help="why (recorded)")

    _settable_from_environment(run)
    return parser


def parse_duration(text: str) -> datetime.timedelta:
    """``90s``, ``15m``, ``1h``, ``1h30m`` as a timedelta; ValueError otherwise."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 1h)")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return datetime.timedelta(hours=hours, minutes=minutes, seconds=seconds)


async def _break_glass(args: argparse.Namespace) -> str:
    name = args.pod.removeprefix("pod/").removeprefix("pods/")
    user = await kube.whoami()
    if not user:
        raise NotFound("the Kubernetes API does not say who you are; no session opened")
    try:
        session = sessions.open_session(
            user=user,
            reason=args.reason,
            duration=parse_duration(args.duration),
            now=datetime.datetime.now(datetime.UTC),
        )
    except ValueError as exc:
        raise NotFound(str(exc), hint="e.g. --for 15m --reason 'why' (at most 4h)") from None
    await kube.patch_pod_metadata(
        namespace=args.namespace, name=name, annotations=session.annotations()
    )
    until = session.until.strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"{args.namespace}/{name}: break-glass session for {user} until {until}: exec, attach "
        "and port-forward are let through and recorded; the pod is marked "
        f"{sessions.LABEL_TAINTED} and replaced by a fresh one after the session"
    )


def _scope_options(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help=NAMESPACE_HELP)
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="every namespace (without NAME)"
    )


def _watch_options(parser: argparse.ArgumentParser, *, what: str) -> None:
    parser.add_argument(
        "-w", "--watch", action="store_true", help=f"print progress {what} (Ctrl-C stops)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="with --watch: give up after this long, exit 5 (default: %(default)s)",
    )


# --- options from the environment ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Environment:
    """The options of one parser that environment variables may set: ``--metrics-port`` from
    ``PERMAFROST_METRICS_PORT``. The command line wins over the environment."""

    parser: argparse.ArgumentParser
    variables: tuple[tuple[argparse.Action, str], ...]

    def apply(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        """Set, in ``args``, every option not given on the command line that the environment
        sets; a usage error (exit 2) if a value is unusable or two exclude each other."""
        given = {a.dest for a, _ in self.variables if getattr(args, a.dest) != a.default}
        from_env: dict[str, str] = {}
        for action, variable in self.variables:
            raw = environ.get(variable)
            if raw is None or raw == "" or action.dest in given:
                continue
            if any(action.dest != o.dest and o.dest in given for o in self._exclusive(action)):
                continue  # the command line chose another option of its group
            rival = next(
                (from_env[o.dest] for o in self._exclusive(action) if o.dest in from_env), None
            )
            if rival is not None:
                self.parser.error(f"{variable} and {rival} cannot both be set")
            setattr(args, action.dest, self._value(action, variable, raw))
            from_env[action.dest] = variable

    def _exclusive(self, action: argparse.Action) -> list[argparse.Action]:
        return [
            other
            for group in self.parser._mutually_exclusive_groups
            if action in group._group_actions
            for other in group._group_actions
        ]

    def _value(self, action: argparse.Action, variable: str, raw: str) -> Any:
        if action.nargs == 0:  # a switch (store_true)
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            self.parser.error(f"{variable}={raw!r}: expected true or false")
        items = (
            [i.strip() for i in raw.split(",")]
            if isinstance(action, argparse._AppendAction)
            else [raw]
        )
        values = []
        for item in items:
            try:
                value = action.type(item) if callable(action.type) else item
            except (TypeError, ValueError):
                self.parser.error(
                    f"{variable}={raw!r}: not a valid {action.metavar or action.dest}"
                )
            if action.choices is not None and value not in action.choices:
                self.parser.error(
                    f"{variable}={raw!r}: choose from {', '.join(map(str, action.choices))}"
                )
            values.append(value)
        return values if isinstance(action, argparse._AppendAction) else values[0]


def _settable_from_environment(parser: argparse.ArgumentParser) -> None:
    """Make every long option of ``parser`` settable by ``PERMAFROST_<OPTION>`` (named after
    the option, ``-`` as ``_``) and say so in its help.

    NB: it runs last in :func:`_build_parser`, so an option added to ``run`` anywhere above gets
    its variable without further code.
    """
    variables = []
    for action in parser._actions:
        long = next((o for o in action.option_strings if o.startswith("--")), None)
        if long is None or isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        variable = ENV_PREFIX + long[2:].upper().replace("-", "_")
        if action.help != argparse.SUPPRESS:
            action.help = f"{action.help or ''} [env {variable}]".strip()
        variables.append((action, variable))
    parser.epilog = (
        f"Every option can also be set by an environment variable: {ENV_PREFIX} and the "
        "option's long name in upper case, - as _ (e.g. PERMAFROST_METRICS_PORT=9090). "
        "Repeatable options take a comma-separated list, switches true or false. The command "
        "line wins over the environment."
    )
    parser.set_defaults(environment=_Environment(parser, tuple(variables)))


def _not_an_admission_denial(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith("Webhook ") and "failed permanently" in message)


def _preflight(namespaces: Sequence[str], *, request_timeout: float) -> None:
    """Fail fast, in one line, when the operator could not work: no usable kubeconfig, no API
    server, no CRDs (Kopf would log a traceback and retry every minute)."""
    _against_the_api(kube.list_releases(namespaces[0] if namespaces else None))
    kube.bound_requests(seconds=request_timeout)


def _configure_logging(*, verbose: bool, log_format: str = "text") -> None:
    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL,
    )
    logging.getLogger("permafrost").setLevel(logging.DEBUG if verbose else logging.INFO)
    # NB: Kopf logs every successful event handler; ours only enqueue, so that is noise. It also
    # logs every admission denial as a handler failure at ERROR; Permafrost logs decisions itself.
    kopf_objects = logging.getLogger("kopf.objects")
    kopf_objects.setLevel(logging.DEBUG if verbose else logging.WARNING)
    kopf_objects.addFilter(_not_an_admission_denial)
    # NB: aiohttp logs every admission review it serves at INFO: a line formatted and written on
    # the admission path for every request (docs/benchmarks.md: a fifth of the operator's CPU per
    # review). The level is read when a connection opens, so it is set before the server starts.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if verbose else logging.WARNING)


def _admission_preflight(options: webhooks.Options, *, takeover: bool) -> None:
    """Fail fast, in one line, when admission could not be served as asked: the operator's
    namespace is missing (Kopf would log a traceback every minute and reconcile nothing), or the
    webhooks are registered for another operator that still answers (re-pointing them would
    break its TLS and let the release webhook fail open)."""
    try:
        _check_admission(options, takeover=takeover)
    finally:
        kube.bound_requests(seconds=None)  # NB: the operator waits as long as a request takes


def _check_admission(options: webhooks.Options, *, takeover: bool) -> None:
    from permafrost.guards import webhooks

    namespace = options.namespace
    if not _against_the_api(kube.namespace_exists(namespace)):
        raise NotFound(
            f"the operator's namespace {namespace} does not exist",
            hint=f"Create it (kubectl create namespace {namespace}, or kubectl apply -f "
            "deploy/namespace.yaml), or name another one: --operator-namespace NS",
        )
    # NB: checked here, before Kopf starts: a start-up handler's failure is logged by Kopf with
    # two tracebacks, for what one line says.
    if problem := _against_the_api(webhooks.user_tls_problem(options)):
        raise NotFound(
            problem,
            hint="See docs/install.md, on the webhook's certificate from cert-manager, for the "
            "layout and the grant",
        )
    existing = _against_the_api(kube.read_webhook_configuration(webhooks.WEBHOOK_CONFIGURATION))
    registered, ours = webhooks.registered_target(existing), options.target()
    if registered is None or registered == ours:
        return
    if takeover or not _answers(registered):
        logging.getLogger(__name__).warning(
            "the webhooks pointed at %s (%s); re-pointing them at %s",
            registered,
            "--webhook-takeover" if takeover else "it does not answer",
            ours,
        )
        return
    raise NotFound(
        f"the webhooks are registered for another operator at {registered}, which answers; "
        f"this one would re-point them at {ours}",
        hint="Stop the other operator, or give the same --webhook-url/--webhook-service, or "
        "pass --webhook-takeover to re-point them",
    )


def _answers(target: str) -> bool:
    """Whether something accepts a TCP connection at a URL target (a Service: assumed so)."""
    url = urllib.parse.urlsplit(target)
    if not url.hostname:
        return True
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=2):
            return True
    except OSError:
        return False


def _run(args: argparse.Namespace) -> int:
    _preflight(args.namespace, request_timeout=args.request_timeout)
    _configure_logging(verbose=args.verbose, log_format=args.log_format)
    from permafrost import handlers
    from permafrost.guards import webhooks

    if args.metrics_port:
        from permafrost import metrics

        metrics.serve(port=args.metrics_port)
    memo = kopf.Memo()
    memo["request_timeout"] = args.request_timeout
    try:
        credentials = (
            registry.docker_credentials(pathlib.Path(args.registry_config))
            if args.registry_config
            else {}
        )
    except ValueError as exc:
        print(f"permafrost run: --registry-config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    client = registry.Client(
        credentials=credentials,
        insecure=frozenset(args.insecure_registry),
        timeout=args.registry_timeout,
    )
    if args.registry_check != "off":
        memo["images"] = registry.Checker(client=client, fail_open=args.registry_check == "open")
    # NB: always there: a GuardrailPolicy's verifyImages is reason enough to ask a registry.
    memo["signed"] = registry.SignatureChecker(client=client)
    if args.admission:
        host, _, port = args.webhook_listen.rpartition(":")
        memo["admission"] = webhooks.Options(
            listen_host=host or "0.0.0.0",
            listen_port=int(port),
            url=args.webhook_url,
            service=args.webhook_service,
            namespace=args.operator_namespace,
            tls_secret=args.tls_secret,
            tls_dir=args.tls_dir,
            threaded=args.webhook_thread,
            compile_policies=args.compile_policies,
            settings=webhooks.settings_from(
                exempt_users=args.exempt_user
                or [f"system:serviceaccount:{args.operator_namespace}:permafrost"],
                break_glass_groups=args.break_glass_group or ["permafrost:break-glass"],
                namespace=args.operator_namespace,
                allow_port_forward=args.allow_port_forward,
                controller_users=args.controller_user or (),
            ),
        )
        _admission_preflight(memo["admission"], takeover=args.webhook_takeover)
    identity = os.environ.get("POD_ID") or f"{socket.gethostname()}/{os.getpid()}"
    if args.peering is not None:
        memo["peering"] = handlers.Peering(
            name=args.peering,
            identity=identity,
            priority=args.priority or 0,  # NB: the start-up handler puts in the actual one
            namespaces=tuple(args.namespace),
        )
        memo["peering_lifetime"] = args.peering_lifetime
    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=args.peering is None,
            peering_name=args.peering,
            priority=args.priority,
            identity=identity,  # type: ignore[arg-type]  # NB: Kopf's Identity is a str NewType
            liveness_endpoint=args.liveness,
            memo=memo,
        )
    )
    return 0


# --- talking to the cluster ----------------------------------------------------------------------


class NotFound(LookupError):
    """What was asked for does not exist (exit 1); ``hint`` says what to try instead."""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _interrupted(signum: int, frame: Any) -> None:
    """Ctrl-C while the command line waits on the API: stop at once, exit 130.

    NB: not asyncio's own handling (cancel the task, then wait): ``asyncio.run`` waits for the
    worker thread of a request in flight before it returns, up to that request's timeout and
    longer on a loaded apiserver, and a ``--watch`` seemed to ignore Ctrl-C (seen in CI: alive
    30 s after SIGINT). Nothing is lost: these commands' writes are single requests, which the
    apiserver completes or not whether this process waits for the answer or not.
    """
    del signum, frame
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    with contextlib.suppress(OSError):
        os.write(2, b"permafrost: interrupted\n")
    os._exit(EXIT_INTERRUPTED)


def _against_the_api(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` with bounded requests; API failures become :class:`kube.ApiProblem`.
    Ctrl-C exits at once (:func:`_interrupted`)."""
    kube.bound_requests(seconds=REQUEST_TIMEOUT_SECONDS)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, _interrupted)
    try:
        return asyncio.run(work)
    except (KeyboardInterrupt, NotFound):
        raise
    except Exception as exc:
        problem = kube.problem_of(exc)
        if problem is None:
            raise
        raise problem from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


async def _release(namespace: str, name: str) -> dict[str, Any]:
    body = await kube.find_release(namespace=namespace, name=name)
    if body is None:
        elsewhere = sorted(
            r["metadata"]["namespace"]
            for r in await _releases_everywhere()
            if r["metadata"]["name"] == name
        )
        if elsewhere:
            raise NotFound(
                f"GuardedRelease {namespace}/{name} not found; there is one named {name} in "
                f"namespace {', '.join(elsewhere)}",
                hint=f"Name the namespace: permafrost status {name} -n {elsewhere[0]}",
            )
        names = [r["metadata"]["name"] for r in await kube.list_releases(namespace)]
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise NotFound(
            f"GuardedRelease {namespace}/{name} not found",
            hint=f"{hint}List every release: permafrost status -A",
        )
    return body


async def _releases_everywhere() -> list[dict[str, Any]]:
    """Every release the caller may list cluster-wide; none if that is forbidden."""
    try:
        return await kube.list_releases(None)
    except Exception as exc:
        problem = kube.problem_of(exc)
        if problem is not None and problem.kind == kube.ApiProblem.FORBIDDEN:
            return []
        raise


async def _rollback(namespace: str, name: str, to: str) -> str:
    body = await _release(namespace, name)
    status = models.GuardedReleaseStatus.model_validate(body.get("status") or {})
    record = next((r for r in status.revisions if to in (r.hash, r.name)), None)
    if record is None:
        known = ", ".join(f"{r.hash} ({r.outcome})" for r in status.revisions) or "none"
        raise NotFound(
            f"revision {to!r} is not retained by {name}; retained: {known}",
            hint=f"See them all: permafrost history {name} -n {namespace}",
        )
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
        raise NotFound(
            f"{name} has no desired revision yet; wait for its first reconcile",
            hint="Is the operator running? (permafrost run)",
        )
    await kube.patch_release_annotations(
        namespace,
        name,
        {
            models.ANNOTATION_ROLLBACK_TO: record.hash,
            models.ANNOTATION_ROLLBACK_FROM: origin,
        },
        manager=MANAGER,
    )
    return record.hash


async def _retry(namespace: str, name: str) -> None:
    body = await _release(namespace, name)
    status = models.GuardedReleaseStatus.model_validate(body.get("status") or {})
    desired = next((r for r in status.revisions if r.hash == status.desired_revision), None)
    if desired is None or desired.outcome != models.Outcome.FAILED:
        what = f"revision {desired.hash} is {desired.outcome}" if desired else "no revision yet"
        phase = status.phase or "not reconciled yet"
        raise NotFound(
            f"{namespace}/{name} has no failed revision to retry ({phase}: {what})",
            hint="retry starts a new attempt of a failed revision; to roll out again, "
            "change the spec",
        )
    token = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    await kube.patch_release_annotations(
        namespace, name, {models.ANNOTATION_RETRY: token}, manager=MANAGER
    )


async def _status(args: argparse.Namespace) -> str:
    now = datetime.datetime.now(datetime.UTC)
    if args.name:
        body = await _release(args.namespace, args.name)
        if args.output == "table":
            return presenting.status_detail(body, now=now)
        return presenting.render(presenting.status_document(body, now=now), output=args.output)
    releases = await kube.list_releases(None if args.all_namespaces else args.namespace)
    if args.output != "table":
        items = [presenting.status_document(r, now=now) for r in releases]
        return presenting.render({"items": items}, output=args.output)
    if not releases:
        where = "any namespace" if args.all_namespaces else f"namespace {args.namespace}"
        return f"No GuardedReleases in {where}."
    return presenting.status_table(releases, now=now, all_namespaces=args.all_namespaces)


async def _events(release: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Events of a release and of its retained revision Deployments."""
    meta = release["metadata"]
    status = models.GuardedReleaseStatus.model_validate(release.get("status") or {})
    own = await kube.list_events(meta["namespace"], kind=models.KIND, names=[meta["name"]])
    revisions = await kube.list_events(
        meta["namespace"], kind="Deployment", names=[r.name for r in status.revisions]
    )
    return own + revisions


async def _history(args: argparse.Namespace) -> str:
    body = await _release(args.namespace, args.name)
    events = await _events(body)
    if args.output == "table":
        now = datetime.datetime.now(datetime.UTC)
        return presenting.history_text(body, events, now=now)
    return presenting.render(presenting.history_document(body, events), output=args.output)


async def _watch(namespace: str | None, name: str | None, *, give_up_after: float) -> int:
    """Print progress until every release watched settles (0 if all Stable, else 1) or
    ``give_up_after`` seconds pass (5)."""
    started = datetime.datetime.now(datetime.UTC)
    deadline = time.monotonic() + give_up_after
    shown: dict[str, str] = {}
    seen_events: set[str] = set()
    while True:
        if name is not None and namespace is not None:
            releases = [await _release(namespace, name)]
        else:
            releases = await kube.list_releases(namespace)
        for release in releases:
            key = f"{release['metadata']['namespace']}/{release['metadata']['name']}"
            line = presenting.progress_line(release)
            if shown.get(key) != line:
                shown[key] = line
                print(presenting.stamped(datetime.datetime.now(), line), flush=True)
        if name is not None:
            for event in await _events(releases[0]):
                if not presenting.worth_watching(event, release=name):
                    continue
                entry = presenting.event_entry(event)
                uid = f"{event['metadata'].get('uid')}:{entry.count}"
                moment = presenting.parse_time(entry.time)
                if uid in seen_events or moment is None or moment < started.replace(microsecond=0):
                    continue
                seen_events.add(uid)
                text = f"{name}  {entry.type} {entry.reason}: {entry.message}"
                print(presenting.stamped(datetime.datetime.now(), text), flush=True)
        if all(presenting.settled(r) for r in releases):
            phases = {(r.get("status") or {}).get("phase") for r in releases}
            print(
                presenting.stamped(
                    datetime.datetime.now(),
                    "settled: " + ", ".join(sorted(p or "<none>" for p in phases)),
                ),
                flush=True,
            )
            return EXIT_OK if phases <= {"Stable"} else EXIT_FAILED
        if time.monotonic() >= deadline:
            print(
                f"permafrost: still not settled after {give_up_after:g}s (--timeout); "
                "the rollout goes on without this watch",
                file=sys.stderr,
            )
            return EXIT_TIMEOUT
        await asyncio.sleep(WATCH_INTERVAL_SECONDS)


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
    signer = _attestation_key(args)
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
    inputs = [_read(pathlib.Path(p)) for p in args.inputs]
    required = checking.image_requirements(
        inputs=inputs, policies=policies, stage=args.stage, namespace=namespace, stable=stable
    )
    verifications = {}
    client = None
    if required or signer is not None:
        client = registry.Client(
            credentials=_docker_config(args.docker_config),
            insecure=frozenset(args.insecure_registry),
            timeout=args.registry_timeout,
        )
    if required and client is not None:
        checker = registry.SignatureChecker(client=client)
        for req in required:
            if req.key not in verifications:
                verifications[req.key] = checker.verify_now(req.image, req.keys, req.attestations)
    report = checking.check(
        inputs=inputs,
        policies=policies,
        stage=args.stage,
        now=now,
        namespace=namespace,
        stable=stable,
        verifications=verifications,
    )
    print(checking.render_json(report) if args.output == "json" else checking.render_table(report))
    if signer is None or client is None:
        return report.exit_code
    if report.exit_code != EXIT_OK:
        print("permafrost check: nothing attested: the verdict does not allow", file=sys.stderr)
        return report.exit_code
    approved = checking.approved_images(report, policies=policies)
    if not approved:
        print("permafrost check: nothing attested: no policy judged an image", file=sys.stderr)
    failed = sum(
        not _attest(client, signer, image=image, records=records)
        for image, records in approved.items()
    )
    return EXIT_FAILED if failed else report.exit_code


def _attestation_key(args: argparse.Namespace) -> signatures.PrivateKey | None:
    """The key ``check --attest`` signs with (None without --attest); refused before
    anything is evaluated, so that a key that does not load never looks like a verdict."""
    if not args.attest:
        if args.key:
            raise documents.InputError("--key is for --attest: give both, or neither")
        return None
    if args.stage != "build":
        raise documents.InputError(
            "--attest records what the build stage approved: use it with --stage build"
        )
    if not args.key:
        raise documents.InputError("--attest needs --key KEY.pem (the key that signs)")
    try:
        return signatures.load_private_key(pathlib.Path(args.key).read_bytes())
    except OSError as exc:
        raise documents.InputError(f"--key {args.key}: cannot be read: {exc}") from None
    except signatures.InvalidKey as exc:
        raise documents.InputError(f"--key {args.key}: {exc}") from None


def _attest(
    client: registry.Client,
    key: signatures.PrivateKey,
    *,
    image: str,
    records: Sequence[attestations.PolicyRecord],
) -> bool:
    """Sign and push the guardrails attestation of one approved image (replacing this key's
    earlier one); say what was done, or why not, on stderr. Whether it was pushed."""
    try:
        ref = images.parse(image)
    except images.InvalidReference as exc:
        print(f"permafrost check: not attested: {exc}", file=sys.stderr)
        return False
    if not ref.digest or not ref.digest.startswith("sha256:"):
        print(
            f"permafrost check: not attested: {image} is not pinned by a sha256 digest (an "
            "attestation is about a digest, never a tag: permafrost pin resolves tags)",
            file=sys.stderr,
        )
        return False
    public = signatures.public_key_of(key)
    statement = attestations.statement(
        ref=ref,
        digest=ref.digest,
        # NB: when the check ran, not --now (the time the rules were shown).
        predicate=attestations.predicate(
            policies=records,
            checked_at=datetime.datetime.now(datetime.UTC),
            version=permafrost.__version__,
        ),
    )
    data = attestations.envelope(key=key, payload=statement)
    try:
        client.manifest(ref)  # NB: what is attested must exist: a typo attests nothing
        earlier = attestations.replaced(client.attestation_layers(ref), key=public)
        tag = client.push_attestation(ref, data=data, replacing=earlier)
    except registry.RegistryError as exc:
        print(f"permafrost check: not attested: {exc}", file=sys.stderr)
        return False
    # NB: with their spec digests: what a policy's attestations[].policyDigest may pin.
    passed = ", ".join(f"{r.name} {r.digest}" for r in records if r.passed) or "none"
    print(
        f"{image}: attested by key {public.id} (policies passed: {passed}; "
        f"{ref.registry}/{ref.repository}:{tag})",
        file=sys.stderr,
    )
    return True


def _docker_config(flag: str | None) -> dict[str, tuple[str, str]]:
    if flag:
        path = pathlib.Path(flag)
    else:
        home = os.environ.get("DOCKER_CONFIG")
        path = (pathlib.Path(home) if home else pathlib.Path.home() / ".docker") / "config.json"
        if not path.exists():
            return {}
    try:
        return registry.docker_credentials(path)
    except ValueError as exc:
        raise documents.InputError(str(exc)) from None


def _pin(args: argparse.Namespace) -> int:
    """``permafrost pin``: read every input, resolve every distinct image once, then write
    all or nothing (a half-pinned set of manifests would deploy a mix)."""
    if not args.write and len(args.inputs) != 1:
        raise documents.InputError("without --write, give one INPUT (printed pinned)")
    if args.write and "-" in args.inputs:
        raise documents.InputError("--write rewrites files: stdin (-) cannot be written")
    for platform in args.platform:
        if not 2 <= len(platform.split("/")) <= 3 or "" in platform.split("/"):
            raise documents.InputError(f"--platform {platform!r}: expected OS/ARCH[/VARIANT]")
    texts: list[tuple[str, str]] = []
    for name in args.inputs:
        if name == "-":
            data = sys.stdin.read()
            if len(data) > documents.MAX_BYTES:
                raise documents.InputError("stdin: larger than 10 MiB")
            texts.append(("stdin", data))
        else:
            texts.append(_read(pathlib.Path(name)))
    located = [(source, text, images.locate(text, source=source)) for source, text in texts]
    references: dict[str, images.Reference] = {}
    for _, _, fields in located:
        for field in fields:
            if field.value not in references:
                try:
                    references[field.value] = images.parse(field.value)
                except images.InvalidReference as exc:
                    raise documents.InputError(f"{field.source}:{field.line}: {exc}") from None
    client = registry.Client(
        credentials=_docker_config(args.docker_config),
        insecure=frozenset(args.insecure_registry),
        timeout=args.timeout,
    )
    pinned: dict[str, str] = {}
    failed = 0
    for value, ref in references.items():
        try:
            manifest = client.manifest(ref)
        except registry.RegistryError as exc:
            print(f"permafrost pin: {exc}", file=sys.stderr)
            failed += 1
            continue
        missing = [p for p in args.platform if not registry.has_platform(manifest, p)]
        if missing:
            have = ", ".join(manifest.platforms) or "none"
            print(
                f"permafrost pin: {value}: no image for {', '.join(missing)} in its index "
                f"(it has {have})",
                file=sys.stderr,
            )
            failed += 1
            continue
        if ref.pinned:
            print(f"  {value}: pinned, exists", file=sys.stderr)
            continue
        pinned[value] = ref.with_digest(manifest.digest)
        print(f"  {value} -> {manifest.digest}", file=sys.stderr)
    if failed:
        print(
            f"permafrost pin: {failed} of {len(references)} images not resolved; nothing written",
            file=sys.stderr,
        )
        return EXIT_FAILED
    for (_, text, fields), name in zip(located, args.inputs, strict=True):
        new = images.rewrite(text, fields, pinned)
        if not args.write:
            sys.stdout.write(new)
            sys.stdout.flush()
        elif new != text:
            pathlib.Path(name).write_text(new)
    changed = sum(1 for v in pinned if not references[v].pinned)
    print(
        f"permafrost pin: {changed} pinned, {len(references) - changed} already pinned",
        file=sys.stderr,
    )
    return EXIT_OK


def _sign(args: argparse.Namespace) -> int:
    """``permafrost sign``: a cosign-compatible signature of one digest, pushed to its
    repository (nothing is pushed when this key has signed it already)."""
    try:
        ref = images.parse(args.image)
    except images.InvalidReference as exc:
        raise documents.InputError(str(exc)) from None
    if not ref.digest or not ref.digest.startswith("sha256:"):
        raise documents.InputError(
            f"{args.image}: a signature is on a sha256 digest, not a tag: give IMAGE@DIGEST "
            "(permafrost pin resolves tags)"
        )
    try:
        key = signatures.load_private_key(pathlib.Path(args.key).read_bytes())
    except OSError as exc:
        raise documents.InputError(f"--key {args.key}: cannot be read: {exc}") from None
    except signatures.InvalidKey as exc:
        raise documents.InputError(f"--key {args.key}: {exc}") from None
    public = signatures.public_key_of(key)
    client = registry.Client(
        credentials=_docker_config(args.docker_config),
        insecure=frozenset(args.insecure_registry),
        timeout=args.registry_timeout,
    )
    try:
        client.manifest(ref)  # NB: what is signed must exist: a typo signs nothing
        there = client.signature_layers(ref)
        if signatures.verify(image=args.image, ref=ref, layers=there, keys=[public]).verified:
            print(f"{args.image}: already signed by key {public.id}")
            return EXIT_OK
        data = signatures.payload(ref, ref.digest)
        tag = client.push_signature(ref, data=data, signature=signatures.sign(key, data))
    except registry.RegistryError as exc:
        print(f"permafrost sign: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.image}: signed by key {public.id} ({ref.registry}/{ref.repository}:{tag})")
    return EXIT_OK


def _explain(problem: kube.ApiProblem) -> tuple[str, str, int]:
    """A message for people, a hint and the exit code of an API problem."""
    detail = problem.detail.rstrip(".")
    if problem.kind == kube.ApiProblem.KUBECONFIG:
        where = os.environ.get("KUBECONFIG") or "~/.kube/config"
        hint = (
            "Point KUBECONFIG at your cluster's kubeconfig (the one kubectl uses); "
            "in a Permafrost checkout, its local cluster: make cluster-up && "
            "export KUBECONFIG=$PWD/.cluster/kubeconfig"
        )
        paths = [pathlib.Path(p).expanduser() for p in where.split(os.pathsep) if p]
        if not any(p.exists() for p in paths):
            # NB: the client says "Invalid kube-config file" for a file that is not there.
            missing = "does not exist" if len(paths) == 1 else "do not exist"
            return f"no kubeconfig: {where} {missing}", hint, EXIT_NO_CLUSTER
        return f"no usable kubeconfig ({where}): {detail}", hint, EXIT_NO_CLUSTER
    if problem.kind == kube.ApiProblem.UNREACHABLE:
        return (
            f"cannot reach the Kubernetes API at {kube.server_address()}: {detail}",
            "Is the cluster running, and is this the kubeconfig you meant? (kubectl cluster-info)",
            EXIT_NO_CLUSTER,
        )
    if problem.kind == kube.ApiProblem.FORBIDDEN:
        return (
            f"the Kubernetes API refused access: {detail}",
            "Check your credentials and RBAC (kubectl auth can-i list guardedreleases)",
            EXIT_NO_CLUSTER,
        )
    if problem.kind == kube.ApiProblem.NOT_INSTALLED:
        return (
            f"Permafrost's CRDs are not installed in this cluster ({detail} is unknown)",
            "Install them: kubectl apply --server-side -k crds/, wait until they are "
            "Established, then the policies and the operator (docs/install.md shows how)",
            EXIT_NOT_INSTALLED,
        )
    return f"the Kubernetes API refused the request: {detail}", "", EXIT_FAILED


def _for_people(args: argparse.Namespace) -> int:
    """Run a command that talks to the cluster: status, history, rollback, retry."""
    args.namespace = args.namespace or kube.default_namespace()
    if args.command == "status":
        if args.watch:
            scope = None if args.all_namespaces else args.namespace
            return _against_the_api(_watch(scope, args.name, give_up_after=args.timeout))
        print(_against_the_api(_status(args)), flush=True)
        return EXIT_OK
    if args.command == "history":
        print(_against_the_api(_history(args)), flush=True)
        return EXIT_OK
    if args.command == "break-glass":
        try:
            parse_duration(args.duration)
        except ValueError as exc:
            raise NotFound(str(exc), hint="e.g. --for 15m (at most 4h)") from None
        print(_against_the_api(_break_glass(args)), flush=True)
        return EXIT_OK
    if args.command == "rollback":
        revision = _against_the_api(_rollback(args.namespace, args.name, args.to))
        print(
            f"{args.namespace}/{args.name}: rolling back to revision {revision}; it is "
            "verified before it takes traffic"
            + ("" if args.watch else f" (permafrost status {args.name} -n {args.namespace} -w)")
        )
    else:
        _against_the_api(_retry(args.namespace, args.name))
        print(f"{args.namespace}/{args.name}: a new attempt starts")
    if args.watch:
        return _against_the_api(_watch(args.namespace, args.name, give_up_after=args.timeout))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    Errors are reported in one line (and a hint), never as a traceback; see the module's
    docstring for the exit codes.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "status" and args.name and args.all_namespaces:
        parser.error("status: a NAME is one release in one namespace; drop -A or the NAME")
    if args.command == "status" and args.watch and args.output != "table":
        parser.error("status: --watch prints progress for people; drop -o")
    try:
        if args.command == "run":
            args.environment.apply(args, os.environ)
            return _run(args)
        if args.command == "check":
            try:
                return _check(args)
            except documents.InputError as exc:
                print(f"permafrost check: {exc}", file=sys.stderr)
                return checking.EXIT_UNUSABLE
        if args.command == "sign":
            try:
                return _sign(args)
            except documents.InputError as exc:
                print(f"permafrost sign: {exc}", file=sys.stderr)
                return EXIT_USAGE
        if args.command == "pin":
            try:
                return _pin(args)
            except documents.InputError as exc:
                print(f"permafrost pin: {exc}", file=sys.stderr)
                return EXIT_USAGE
        if args.command in ("status", "history", "rollback", "retry", "break-glass"):
            return _for_people(args)
    except NotFound as exc:
        print(f"permafrost: {exc}", file=sys.stderr)
        if exc.hint:
            print(f"  {exc.hint}", file=sys.stderr)
        return EXIT_FAILED
    except kube.ApiProblem as problem:
        message, hint, code = _explain(problem)
        print(f"permafrost: {message}", file=sys.stderr)
        if hint:
            print(f"  {hint}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("permafrost: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # NB: the reader went away (`| head`): stop quietly, as tools killed by SIGPIPE do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        # NB: people get one line, not a traceback; PERMAFROST_DEBUG=1 shows where it came from.
        # The operator itself (`run`) dies with its traceback: its log is read after the fact.
        if args.command == "run" or os.environ.get("PERMAFROST_DEBUG") == "1":
            raise
        print(f"permafrost: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("  PERMAFROST_DEBUG=1 shows the traceback", file=sys.stderr)
        return EXIT_FAILED
    parser.print_help(sys.stderr)
    return EXIT_USAGE
