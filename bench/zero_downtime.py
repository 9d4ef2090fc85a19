"""Zero downtime under real traffic, on the real node: Permafrost's switches against a native
rolling update of the same app.

Steady requests (:mod:`bench.traffic`, a new connection each, through the Service's ClusterIP
and kube-proxy) run through every scenario, from a second before the change until the revision
that stopped serving has no pod left and a second after. One GuardedRelease of the demo app
(``examples/app``, 2 replicas, ``minReadySeconds: 4``) goes through them in turn:

- ``promote``: v1 -> v2;
- ``crash``: v3, whose process exits as it starts (rolled back);
- ``unready``: v4, Ready at first, then its readiness probe fails (rolled back);
- ``errors``: v5, which answers 20% of its requests with 500 but passes its readiness probe:
  promoted (nothing in the release looks at answers);
- ``config``: a change of the ConfigMap the release references (a new revision);
- ``operator-killed``: the operator SIGKILLed as soon as the new revision's pods exist (in
  verification), started again 2 s later;
- ``rollback``: ``permafrost rollback`` to the revision of ``config``;
- ``no-delay``: a promotion with ``scaleDownDelaySeconds: 0``.

Then two plain Deployments of the same pod template are updated v1 -> v2: the default strategy
(maxSurge and maxUnavailable 25%) and ``maxUnavailable: 0``. An answer counts as *unverified*
when the revision that gave it was not the stable one when the window began and had not been
promoted (``status.revisions[].promotedAt``, whole seconds) when the request was sent; a native
Deployment verifies nothing, so there it is not counted.
"""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from bench import common, traffic

RELEASE = "web"
CONFIG = "web-config"
REGISTRY = "127.0.0.1:5000"
LABEL_REVISION = "permafrost.dev/revision"
PROBE = {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1, "failureThreshold": 1}
SCENARIOS = (
    "promote",
    "crash",
    "unready",
    "errors",
    "config",
    "operator-killed",
    "rollback",
    "no-delay",
)
NATIVE = ("native-default", "native-max-unavailable-0")


def kubectl(*args: str, namespace: str | None = None, stdin: str | None = None) -> str:
    full = ["kubectl", *(["-n", namespace] if namespace else []), *args]
    proc = subprocess.run(full, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {proc.stderr.strip()}")
    return proc.stdout


def get(kind: str, name: str | None, namespace: str, selector: str | None = None) -> Any:
    args = ["get", kind, *([name] if name else []), "-o", "json"]
    if selector:
        args += ["-l", selector]
    return json.loads(kubectl(*args, namespace=namespace))


def apply(body: Mapping[str, Any], namespace: str) -> None:
    kubectl("apply", "-f", "-", namespace=namespace, stdin=json.dumps(body))


def real_node() -> str | None:
    """None if the cluster has the real node, else why not."""
    proc = subprocess.run(
        [str(common.ROOT / "hack" / "cluster.sh"), "real-node"],
        capture_output=True,
        text=True,
        check=False,
    )
    answer = proc.stdout.strip() or proc.stderr.strip()
    return None if answer == "1" else answer or "hack/cluster.sh real-node failed"


def build(version: str) -> str:
    """The demo app as an image in the node's registry; its pinned reference."""
    return subprocess.run(
        [
            str(common.ROOT / "hack" / "image.sh"),
            "build",
            str(common.ROOT / "examples" / "app"),
            f"{REGISTRY}/demo:{version}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.strip()


def pod_spec(image: str, env: Mapping[str, str], *, config: bool) -> dict[str, Any]:
    app: dict[str, Any] = {
        "name": "app",
        "image": image,
        "readinessProbe": PROBE,
        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
        "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}},
    }
    if config:
        app["envFrom"] = [{"configMapRef": {"name": CONFIG}}]
    if env:
        app["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return {
        "nodeSelector": {"permafrost.dev/real-node": "true"},
        "tolerations": [
            {"key": "permafrost.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}
        ],
        "securityContext": {"runAsNonRoot": True},
        "containers": [app],
    }


def release(image: str, *, delay: int = 2, **env: str) -> dict[str, Any]:
    return {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "GuardedRelease",
        "metadata": {"name": RELEASE},
        "spec": {
            "replicas": 2,
            "template": {
                "metadata": {"labels": {"app": RELEASE}},
                "spec": pod_spec(image, env, config=True),
            },
            "configRefs": [{"kind": "ConfigMap", "name": CONFIG}],
            "service": {"name": RELEASE},
            "rollout": {
                "progressDeadlineSeconds": 40,
                "minReadySeconds": 4,
                "scaleDownDelaySeconds": delay,
            },
            "revisionHistoryLimit": 8,
        },
    }


def status(namespace: str) -> dict[str, Any]:
    return dict(get("guardedrelease", RELEASE, namespace).get("status") or {})


def wait(probe: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    return common.wait_for(probe, timeout=timeout, interval=0.3, what=what)


def pods(namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get("pods", None, namespace, selector)["items"]
    return items


def settled(namespace: str, *gone: str) -> dict[str, Any]:
    """The release is not Progressing, and the ``gone`` revisions have no pod left."""

    def probe() -> dict[str, Any] | None:
        st = status(namespace)
        if st.get("phase") in (None, "Progressing"):
            return None
        if any(pods(namespace, f"{LABEL_REVISION}={r}") for r in gone):
            return None
        return st

    return dict(wait(probe, "the release to settle"))


def promoted(namespace: str) -> dict[str, float]:
    from permafrost.releases.conditions import parse_timestamp

    return {
        r["hash"]: parse_timestamp(r["promotedAt"]).timestamp()
        for r in status(namespace).get("revisions", [])
        if r.get("promotedAt")
    }


@contextmanager
def window(url: str, namespace: str, service: str, *, rate: float) -> Iterator[dict[str, Any]]:
    """Load and the Service's selector changes for the block; yields a dict filled at the end
    with ``load`` and ``selector``."""
    found: dict[str, Any] = {}
    with (
        traffic.SelectorLog(namespace, service) as selector,
        traffic.Load(url, rate=rate, seconds=300) as load,
    ):
        time.sleep(1)
        found["started"] = load.started
        yield found
        time.sleep(1)
    found["load"], found["selector"] = load, selector


def result(
    name: str,
    found: Mapping[str, Any],
    *,
    release: str,
    before: str | None,
    after: str | None,
    verified: traffic.Verified | None,
    switch: float | None,
    notes: str,
) -> dict[str, Any]:
    load: traffic.Load = found["load"]
    samples = sorted(load.samples, key=lambda s: s.sent)
    origin = found["started"] - 1
    revision = {s.pod: traffic.revision_of(s.pod, release) for s in samples}

    def label(s: traffic.Sample) -> str:
        return f"{s.version} ({(revision[s.pod] or '?')[:5]})"

    summary = traffic.summarize(
        samples,
        verified=verified,
        switch=switch,
        new=(lambda s: revision[s.pod] == after) if after else None,
    )
    if verified is None:
        summary["unverified"] = None
    return {
        "scenario": name,
        "notes": notes,
        **summary,
        "before": before,
        "after": after,
        "switch_at_s": (switch - origin) if switch else None,
        "series": traffic.per_second(samples, origin=origin, label=label),
        "failures_at_s": [s.sent - origin for s in samples if not s.ok],
    }


class Scenarios:
    """The scenarios of one GuardedRelease, in order (each starts where the last one ended)."""

    def __init__(
        self,
        namespace: str,
        images: Mapping[str, str],
        operator: common.Operator,
        *,
        rate: float,
    ) -> None:
        self.namespace, self.images, self.operator, self.rate = namespace, images, operator, rate
        self.url = ""
        self.revisions: dict[str, str] = {}

    def setup(self) -> None:
        apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": CONFIG},
                "data": {"N": "1"},
            },
            self.namespace,
        )
        apply(release(self.images["v1"]), self.namespace)
        self.revisions["v1"] = settled(self.namespace)["stableRevision"]
        ip = get("service", RELEASE, self.namespace)["spec"]["clusterIP"]
        self.url = f"http://{ip}/"

    def run(
        self,
        name: str,
        change: Callable[[], None],
        notes: str,
        *,
        prepare: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        if prepare is not None:
            prepare()
            settled(self.namespace, *self.running_but_stable())
        before = status(self.namespace).get("stableRevision")
        with window(self.url, self.namespace, RELEASE, rate=self.rate) as found:
            change()
            st = settled(self.namespace)
            after = st.get("stableRevision")
            gone = [r["hash"] for r in st.get("revisions", []) if r["hash"] != after]
            settled(self.namespace, *gone)
        verified = traffic.verified_since(
            promoted(self.namespace), release=RELEASE, before=[before or ""]
        )
        selector: traffic.SelectorLog = found["selector"]
        switch = selector.switched_to(after) if after and after != before else None
        return result(
            name,
            found,
            release=RELEASE,
            before=before,
            after=after if after != before else None,
            verified=verified,
            switch=switch,
            notes=notes,
        )

    def running_but_stable(self) -> list[str]:
        st = status(self.namespace)
        return [r["hash"] for r in st.get("revisions", []) if r["hash"] != st["stableRevision"]]

    def until(self, what: str, probe: Callable[[Mapping[str, Any]], bool]) -> None:
        wait(lambda: probe(status(self.namespace)), what)

    def change(self, image: str, *, delay: int = 2, **env: str) -> None:
        apply(release(self.images[image], delay=delay, **env), self.namespace)

    def promoted_other(self, before: str) -> Callable[[], None]:
        return lambda: self.until(
            "a new revision promoted",
            lambda st: st.get("stableRevision") != before and st.get("phase") == "Stable",
        )

    def all(self, *, smoke: bool) -> list[dict[str, Any]]:
        ns, rows = self.namespace, []

        def promote() -> None:
            self.change("v2")
            self.promoted_other(self.revisions["v1"])()

        rows.append(self.run("promote", promote, "v1 -> v2"))
        self.revisions["v2"] = status(ns)["stableRevision"]
        if smoke:
            return rows

        def crash() -> None:
            self.change("v2", APP_VERSION="v3", CRASH_ON_START="1")
            self.until("v3 rolled back", lambda st: st.get("phase") == "RolledBack")

        rows.append(self.run("crash", crash, "v3 exits as it starts: rolled back"))
        crashed = status(ns)["desiredRevision"]

        def unready() -> None:
            self.change("v2", APP_VERSION="v4", NOT_READY_AFTER_SECONDS="2.5")
            self.until(
                "v4 rolled back",
                lambda st: st.get("phase") == "RolledBack" and st["desiredRevision"] != crashed,
            )

        rows.append(self.run("unready", unready, "v4 Ready, then its probe fails: rolled back"))

        def errors() -> None:
            self.change("v2", APP_VERSION="v5", ERROR_RATE="0.2")
            self.promoted_other(self.revisions["v2"])()

        rows.append(
            self.run("errors", errors, "v5 answers 20% with 500, passes readiness: promoted")
        )
        self.revisions["v5"] = status(ns)["stableRevision"]

        def back_to_v2() -> None:  # not measured: v2 is retained, v5 answered with 500s
            self.change("v2")
            self.until("v2 again", lambda st: st.get("stableRevision") == self.revisions["v2"])

        def config() -> None:
            kubectl("patch", "configmap", CONFIG, "-p", '{"data":{"N":"2"}}', namespace=ns)
            self.promoted_other(self.revisions["v2"])()

        rows.append(self.run("config", config, "the ConfigMap of v2 changes", prepare=back_to_v2))
        self.revisions["config"] = status(ns)["stableRevision"]

        def killed() -> None:
            self.change("v2", APP_VERSION="v6")

            def verifying() -> bool:
                st = status(ns)
                if st.get("desiredRevision") in (None, self.revisions["config"]):
                    return False
                return st.get("phase") == "Progressing" and bool(
                    pods(ns, f"{LABEL_REVISION}={st['desiredRevision']}")
                )

            wait(verifying, "v6 in verification")
            assert self.operator.proc is not None
            self.operator.proc.send_signal(signal.SIGKILL)
            self.operator.proc.wait(timeout=10)
            time.sleep(2)
            self.operator.start()
            self.promoted_other(self.revisions["config"])()

        rows.append(
            self.run("operator-killed", killed, "SIGKILL while v6 is verified, restarted 2 s later")
        )

        def rollback() -> None:
            subprocess.run(
                [
                    *(sys.executable, "-m", "permafrost", "rollback", RELEASE),
                    *("-n", ns, "--to", self.revisions["config"]),
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.until(
                "the rollback", lambda st: st.get("stableRevision") == self.revisions["config"]
            )

        rows.append(self.run("rollback", rollback, "permafrost rollback to the config revision"))

        def no_delay() -> None:
            self.change("v2", delay=0, APP_VERSION="v7")
            self.promoted_other(self.revisions["config"])()

        rows.append(self.run("no-delay", no_delay, "v7 with scaleDownDelaySeconds: 0"))
        return rows


def native(
    namespace: str,
    images: Mapping[str, str],
    *,
    name: str,
    strategy: Mapping[str, Any],
    notes: str,
    rate: float,
) -> dict[str, Any]:
    """A plain Deployment and its Service, updated v1 -> v2 under load."""
    labels = {"app": name}

    def deployment(image: str) -> dict[str, Any]:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "strategy": dict(strategy),
                "template": {
                    "metadata": {"labels": labels},
                    "spec": pod_spec(image, {}, config=False),
                },
            },
        }

    apply(deployment(images["v1"]), namespace)
    apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        },
        namespace,
    )
    kubectl("rollout", "status", f"deployment/{name}", "--timeout=120s", namespace=namespace)
    url = f"http://{get('service', name, namespace)['spec']['clusterIP']}/"
    with window(url, namespace, name, rate=rate) as found:
        begun = time.time()
        apply(deployment(images["v2"]), namespace)
        kubectl("rollout", "status", f"deployment/{name}", "--timeout=120s", namespace=namespace)
        wait(
            lambda: all(
                p["spec"]["containers"][0]["image"] == images["v2"]
                for p in pods(namespace, f"app={name}")
            ),
            "the old pods gone",
        )
    load: traffic.Load = found["load"]
    new_version = {s.pod for s in load.samples if s.version == "v2"}
    row = result(
        name,
        found,
        release=name,
        before=None,
        after=None,
        verified=None,
        switch=None,
        notes=notes,
    )
    # NB: a rolling update has no single switch: from the template change to the last v1 answer.
    last_v1 = max((s.sent for s in load.samples if s.version == "v1"), default=begun)
    row["switch_to_all_new_s"] = max(0.0, last_v1 - begun)
    row["switch_at_s"] = begun - found["started"] + 1
    row["new_pods"] = len(new_version)
    return row


def run(api: common.Api, out: pathlib.Path, *, smoke: bool) -> dict[str, Any]:
    reason = real_node()
    if reason is not None:
        return {"skipped": f"needs the real node: {reason}", "rows": []}
    rate = 50.0 if smoke else 200.0
    images = {v: build(v) for v in ("v1", "v2")}
    namespace = common.create_namespace(api, common.unique("bench-zero-downtime"))
    rows: list[dict[str, Any]] = []
    try:
        with common.Operator(api, out, namespaces=[namespace]) as operator:
            scenarios = Scenarios(namespace, images, operator, rate=rate)
            scenarios.setup()
            rows += scenarios.all(smoke=smoke)
        natives = (
            (
                "native-default",
                {"type": "RollingUpdate"},
                "Deployment v1 -> v2, default strategy (maxSurge, maxUnavailable 25%)",
            ),
            (
                "native-max-unavailable-0",
                {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
                "Deployment v1 -> v2, maxUnavailable: 0",
            ),
        )
        for name, strategy, notes in natives[1:] if smoke else natives:
            rows.append(
                native(namespace, images, name=name, strategy=strategy, notes=notes, rate=rate)
            )
    finally:
        common.delete_namespaces(api, [namespace])
    return {"rate": rate, "replicas": 2, "rows": rows}
