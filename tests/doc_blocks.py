"""The shell blocks of the README and docs/, and which of them the tests run as shown.

Every block of commands (a code block marked ``sh``/``bash``/``shell``/``console``, or any block
of a transcript whose lines start with ``$ ``) is named by its file and its first command. Each
one is either in :data:`RUN` (tests/integration/test_doc_commands.py runs it, unchanged, against
the local cluster) or in :data:`NOT_RUN` with the reason it cannot run there;
tests/unit/test_doc_blocks_listed.py fails on a block in neither list, and on an entry that names no
block any more.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
SHELL = frozenset({"sh", "bash", "shell", "console"})


@dataclasses.dataclass(frozen=True)
class Block:
    path: pathlib.Path
    line: int  # of the opening fence
    text: str  # the block as written
    commands: tuple[str, ...]  # continuation lines joined, comments dropped
    occurrence: int = 1  # the how-many-th block of this file that starts with this command

    @property
    def key(self) -> str:
        """``FILE: FIRST COMMAND``, and `` (2)`` for the second block starting the same way."""
        suffix = f" ({self.occurrence})" if self.occurrence > 1 else ""
        return f"{self.path.relative_to(ROOT)}: {self.commands[0]}{suffix}"


def _commands(body: str) -> tuple[str, ...]:
    joined = re.sub(r"\\\n\s*", " ", body)
    lines = [line.rstrip() for line in joined.splitlines()]
    if any(line.startswith("$ ") for line in lines):
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    lines = [" ".join(re.sub(r"(^|\s)#\s.*$", "", line).split()) for line in lines]
    return tuple(line for line in lines if line and not line.startswith("#"))


def blocks(path: pathlib.Path) -> list[Block]:
    """The command blocks of one Markdown file, in order."""
    found: list[Block] = []
    start, language, body = 0, "", list[str]()
    inside = False
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith("```"):
            if not inside:
                inside, start, language, body = True, number, line[3:].strip(), []
                continue
            inside = False
            text = "\n".join(body) + "\n"
            prompted = any(b.startswith("$ ") for b in body)
            if language in SHELL or prompted:
                commands = _commands(text)
                if commands:
                    seen = sum(1 for b in found if b.commands[0] == commands[0])
                    found.append(Block(path, start, text, commands, seen + 1))
        elif inside:
            body.append(line)
    return found


def all_blocks() -> list[Block]:
    return [b for path in DOCS for b in blocks(path)]


# --- the checked lists ---------------------------------------------------------------------------

INSTALL = "kubectl apply --server-side -k crds/"

# Run as shown, in this order, against the local cluster (in a namespace of the test's own, with
# an operator watching it): the install order, the first release, the policies' commands.
RUN: tuple[str, ...] = (
    f"README.md: {INSTALL}",
    "README.md: kubectl apply -f examples/checkout.yaml",
    "README.md: permafrost check --stage create examples/checkout.yaml",
    f"docs/install.md: {INSTALL}",
    f"docs/policies.md: {INSTALL}",
    "docs/policies.md: permafrost check --stage create examples/checkout.yaml",
)

KIND = "needs Docker and kind (a kind cluster, its nodes and a registry container)"
FOREGROUND = "starts the operator in the foreground (the test starts its own operator)"
DEMO = "transcript of `make demo`; its commands run in tests/integration/test_cli_for_people.py"

NOT_RUN: dict[str, str] = {
    (
        "docs/cli.md: permafrost sign 127.0.0.1:5000/shop/app:v1@sha256:"
        "484902027fd85c5e0d665549f6cd68e2808b692fafdc2b151e8bf18d687b872b --key ci.pem"
    ): (
        "a registry and a key of the reader's; tests/integration/test_signatures.py signs "
        "against a real registry"
    ),
    "docs/cli.md: permafrost pin deploy.yaml --platform linux/amd64 > pinned.yaml": (
        "a registry of the reader's; tests/integration/test_pin.py runs pin against a real registry"
    ),
    "README.md: make demo": (
        "the whole demo and the whole suite (tests/integration/test_demo.py, CI)"
    ),
    "README.md: permafrost run": FOREGROUND,
    "README.md: permafrost status -A": (
        "placeholders (<rev>) and a release of the reader's; each command runs in "
        "tests/integration/test_cli_for_people.py"
    ),
    "README.md: permafrost run --admission --webhook-url https://127.0.0.1:9443": FOREGROUND,
    f"README.md: {INSTALL} (2)": (
        "ends by installing the operator's Deployment, RBAC and fail-safe policy cluster-wide "
        "(deploy/); its first lines run as the README's first block, and "
        "tests/integration/test_install.py applies deploy/ as a server-side dry run"
    ),
    "README.md: make cluster-up": (
        "starts and stops the local cluster itself: the test runs inside it"
    ),
    "README.md: make cluster-up REAL_NODE=1": (
        "starts and stops the local cluster itself: the test runs inside it"
    ),
    "docs/admission.md: kubectl patch deploy web --type merge -p "
    '\'{"metadata":{"annotations":{"permafrost.dev/break-glass":"INC-1234 hotfix"}},'
    '"spec":{"template":{"spec":{"containers":[{"name":"web",'
    '"image":"reg/web@sha256:..."}]}}}}\'': (
        "a placeholder image and a reader's Deployment; break-glass runs in "
        "tests/integration/test_admission_vectors.py"
    ),
    "docs/admission.md: permafrost break-glass web-5c8d7f9b4a-6d9f-x2x7q -n shop --for 15m "
    '--reason "INC-1234 read the live config"': (
        "a reader's pod; sessions run for real in tests/integration/test_exec_sessions.py"
    ),
    "docs/cli.md: permafrost break-glass web-5c8d7f9b4a-6d9f-x2x7q -n shop --for 15m "
    '--reason "INC-1234 read the live config"': (
        "a reader's pod and a transcript; sessions run for real in "
        "tests/integration/test_exec_sessions.py"
    ),
    "docs/cli.md: permafrost status -A": DEMO,
    "docs/cli.md: permafrost status checkout -n permafrost-demo": DEMO,
    "docs/cli.md: kubectl -n permafrost-demo patch configmap checkout-config -p "
    '\'{"data":{"PAYMENT_MODE":"live"}}\'': DEMO,
    "docs/cli.md: permafrost history checkout -n permafrost-demo": DEMO,
    "docs/cli.md: permafrost rollback checkout -n permafrost-demo --to 33e77fd848 --watch": DEMO,
    "docs/cli.md: permafrost status chekout -n permafrost-demo": (
        "transcript of the errors; each runs in tests/integration/test_cli_for_people.py"
    ),
    "docs/cli.md: PERMAFROST_ADMISSION=true PERMAFROST_WEBHOOK_URL=https://127.0.0.1:9443 "
    "PERMAFROST_NAMESPACE=shop,web PERMAFROST_METRICS_PORT=9090 permafrost run": FOREGROUND,
    "docs/gitops.md: kubectl -n argocd patch configmap argocd-cm --type merge "
    "--patch-file deploy/argocd/argocd-cm-health.yaml": (
        "needs Argo CD's argocd-cm; the health check runs in tests/integration/test_gitops.py"
    ),
    "docs/install.md: kubectl apply --server-side -k deploy/": (
        "installs the operator's Deployment, RBAC and fail-safe policy cluster-wide; "
        "tests/integration/test_install.py applies it as a server-side dry run"
    ),
    "docs/install.md: kubectl delete -k deploy/": "uninstalls what the line above installs",
    "docs/install.md: kubectl -n permafrost-system create role permafrost-tls-secret --verb=get "
    "--resource=secrets --resource-name=NAME": (
        "NAME is the reader's Secret; tests/integration/test_in_cluster.py makes this grant "
        "for its cert-manager-layout Secret"
    ),
    "docs/install.md: make image": (
        "builds and pushes the operator image; tests/integration/test_in_cluster.py runs "
        "hack/operator-image.sh build, which it calls (its release form needs ghcr.io)"
    ),
    "docs/install.md: hack/operator-image.sh pin sha256:<digest>": (
        "a placeholder digest of a published image; the pin is unit-tested "
        "(tests/unit/test_operator_image.py)"
    ),
    "docs/install.md: kubectl create rolebinding permafrost-secrets -n shop "
    "--clusterrole=permafrost-secrets --serviceaccount=permafrost-system:permafrost": (
        "a namespace of the reader's; tests/integration/test_least_privilege.py makes this "
        "binding in each namespace whose release references a Secret"
    ),
    "docs/install.md: kubectl create clusterrolebinding permafrost-registry-check "
    "--clusterrole=permafrost-registry-check --serviceaccount=permafrost-system:permafrost": (
        "only with --registry-check; tests/integration/test_least_privilege.py makes this "
        "binding and runs the operator with the check on"
    ),
    "docs/policies.md: kubectl apply -f permafrost-trusted-registries.yaml": (
        "the reader's edited copy of the policy; hack/demo.sh edits the list and runs this wait "
        "(tests/integration/test_demo.py)"
    ),
    "docs/policies.md: permafrost check --stage create -p policies/ -p extra.yaml app/*.yaml": (
        "example file names of the reader's (the block says so)"
    ),
    "docs/quickstart-kind.md: kind create cluster --config kind-config.yaml": KIND,
    "docs/quickstart-kind.md: docker build -t ghcr.io/permafrost-dev/permafrost:0.1.0 .": KIND,
    f"docs/quickstart-kind.md: {INSTALL}": KIND,
    "docs/quickstart-kind.md: kubectl -n permafrost-system get pods -o wide": KIND,
    "docs/quickstart-kind.md: kubectl create namespace shop": KIND,
    "docs/quickstart-kind.md: kubectl -n shop describe grel checkout": KIND,
    "docs/quickstart-kind.md: docker run -d --restart=always -p 127.0.0.1:5001:5000 --network "
    "bridge --name kind-registry registry:2": KIND,
    "docs/quickstart-kind.md: IMAGE=$(hack/image.sh build examples/app "
    "localhost:5001/shop/checkout:v1)": KIND,
    "docs/quickstart-kind.md: kubectl -n shop set image deployment -l "
    "permafrost.dev/release=checkout web=nginx:latest": KIND,
    "docs/quickstart-kind.md: kubectl label namespace shop permafrost.dev/enforce=true": KIND,
    "docs/quickstart-kind.md: kind delete cluster --name permafrost": KIND,
    "docs/real-node.md: make shell": "an interactive shell",
}
