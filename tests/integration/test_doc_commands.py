"""The README's and docs' shell blocks listed in ``doc_blocks.RUN`` run as shown, in order,
against the local cluster: a reader's kubeconfig whose namespace is the test's, an operator
watching it, and the repository as the working directory (tests/doc_blocks.py lists the blocks
that cannot run here, with the reason)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest
import yaml

from conftest import Operator, wait_phase
from doc_blocks import RUN, all_blocks
from k8s_harness import ROOT, Cluster


@pytest.fixture
def policies_removed(crds: Cluster) -> Iterator[None]:
    """The docs install the built-in policies, which apply cluster-wide: removed afterwards."""
    yield
    crds.kubectl("delete", "guardrailpolicies", "--all", check=False)


def reader_env(crds: Cluster, namespace: str, tmp_path: pathlib.Path) -> dict[str, str]:
    """The environment of a reader: the cluster's kubeconfig with the test's namespace as the
    context's, and ``permafrost`` and the cluster's kubectl on PATH."""
    config = yaml.safe_load(crds.kubeconfig.read_text())
    current = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    current["context"]["namespace"] = namespace
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    env = crds.env
    env["KUBECONFIG"] = str(kubeconfig)
    env["PATH"] = f"{pathlib.Path(sys.executable).parent}:{env['PATH']}"
    return env


def test_the_doc_blocks_run_as_shown(
    crds: Cluster,
    namespace: str,
    operator: Operator,
    policies_removed: None,
    tmp_path: pathlib.Path,
) -> None:
    env = reader_env(crds, namespace, tmp_path)
    by_key = {b.key: b for b in all_blocks()}
    ran = []
    for key in RUN:
        block = by_key[key]
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.text],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert proc.returncode == 0, f"{key} (line {block.line}):\n{proc.stdout}\n{proc.stderr}"
        ran.append(key)
        if key == "README.md: kubectl apply -f examples/checkout.yaml":
            # The first release of the README, under the built-in policies just installed.
            wait_phase(crds, namespace, "checkout", "Stable", timeout=120)
    assert ran == list(RUN)
    assert crds.get("guardrailpolicy", "permafrost-trusted-registries") is not None
