"""Image recipes: pinned bases, a non-root user, the operator as entrypoint, a tight context;
the kind cluster of the quickstart on a pinned node image."""

from __future__ import annotations

import json
import pathlib
import re

import yaml

from permafrost import cli

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PINNED = re.compile(r"^[a-z0-9./_-]+(:[\w.-]+)?@sha256:[0-9a-f]{64}$")


def _instructions(name: str) -> list[str]:
    """The arguments of every ``name`` instruction (continuation lines joined)."""
    text = DOCKERFILE.replace("\\\n", " ")
    return [
        line.split(None, 1)[1].strip()
        for line in text.splitlines()
        if line.split(None, 1)[:1] == [name]
    ]


def test_every_base_image_is_the_pinned_base_argument_whose_default_is_pinned() -> None:
    """``docker build .`` uses the pinned python image; a builder that cannot pull it names an
    equivalent of its own through the one build argument (``make image`` does), nothing else."""
    preamble = DOCKERFILE[: DOCKERFILE.index("\nFROM ")]
    args = [line.split(None, 1)[1] for line in preamble.splitlines() if line.startswith("ARG ")]
    assert len(args) == 1, args
    name, _, default = args[0].partition("=")
    assert name == "BASE_IMAGE"
    assert PINNED.match(default), f"the default base {default} is not pinned by digest"
    assert default.startswith("python:3.13-slim-trixie@")
    bases = [args.split()[0] for args in _instructions("FROM")]
    assert len(bases) >= 2, "a build stage and a runtime stage"
    assert set(bases) == {"${BASE_IMAGE}"}
    assert len(_instructions("ARG")) == 1, "no other build argument may choose what is built"


def test_the_local_base_is_made_from_a_root_filesystem_and_runs_python() -> None:
    """hack/base-image/Dockerfile: the local equivalent of the base, from scratch and the root
    filesystem mmdebstrap made, with Python as its command."""
    base = (ROOT / "hack" / "base-image" / "Dockerfile").read_text()
    lines = [line for line in base.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "FROM scratch"
    assert lines[1] == "ADD rootfs.tar /"
    assert json.loads(lines[-1].split(None, 1)[1]) == ["python3"]


def test_the_image_runs_as_a_numeric_non_root_user_the_deployment_matches() -> None:
    users = _instructions("USER")
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit()
    assert int(uid) > 0
    assert gid.isdigit()
    assert int(gid) > 0
    last_from = DOCKERFILE.rindex("\nFROM ")
    assert DOCKERFILE.rindex("\nUSER ") > last_from, "USER must be set in the runtime stage"
    deployment = next(
        d
        for d in yaml.safe_load_all((ROOT / "deploy" / "operator.yaml").read_text())
        if d["kind"] == "Deployment"
    )
    context = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid))
    # Named in /etc/passwd with its group: runtimes take a pod's group from there when the pod
    # sets none (Kubernetes passes them the image's uid only).
    runtime = DOCKERFILE[last_from:]
    assert f"nonroot:x:{uid}:{gid}:" in runtime
    assert f"nonroot:x:{gid}:" in runtime


def test_the_entrypoint_is_permafrost_and_the_default_command_runs_the_operator() -> None:
    (entrypoint,) = _instructions("ENTRYPOINT")
    assert json.loads(entrypoint) == ["permafrost"]
    (command,) = _instructions("CMD")
    args = cli._build_parser().parse_args(json.loads(command))
    assert args.command == "run"


def test_the_runtime_stage_installs_only_built_wheels() -> None:
    runtime = DOCKERFILE[DOCKERFILE.rindex("\nFROM ") :]
    assert "--no-index" in runtime
    assert "COPY . " not in DOCKERFILE


def test_the_build_context_leaves_out_local_state() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line for line in ignore if line and not line.startswith("#")]
    assert rules[0] == "*", "everything is excluded first"
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "operator/", "deploy/policies/"}
    copied = {
        source
        for args in _instructions("COPY")
        if not args.startswith("--")
        for source in args.split()[:-1]
    }
    assert copied == allowed


def test_the_kind_cluster_pins_its_node_image_at_the_tested_kubernetes_minor() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    versions = dict(
        line.split("=", 1)
        for line in (ROOT / "hack" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    tested = ".".join(versions["K8S_VERSION"].removeprefix("v").split(".")[:2])
    images = {node["image"] for node in config["nodes"]}
    assert len(images) == 1, "every node runs the same Kubernetes"
    (image,) = images
    assert PINNED.match(image), f"{image} is not pinned by digest"
    assert image.startswith(f"kindest/node:v{tested}.")
    assert sum(node["role"] == "worker" for node in config["nodes"]) >= 2  # replicas spread
