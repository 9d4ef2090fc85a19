"""`permafrost check`: offline verdicts, exit codes, output formats, hostile input."""

from __future__ import annotations

import json
import pathlib
import textwrap

import pytest

from permafrost import cli
from permafrost.policies import documents

PINNED = "registry.example/shop/web@sha256:" + "a" * 64

POLICY = textwrap.dedent("""\
    apiVersion: permafrost.dev/v1alpha1
    kind: GuardrailPolicy
    metadata: {name: pinned}
    spec:
      stages: [create]
      rules:
      - name: digests
        expression: "podSpec.containers.all(c, c.image.matches('@sha256:[a-f0-9]{64}$'))"
        messageExpression: "'image ' + podSpec.containers[0].image + ' is not pinned'"
    ---
    apiVersion: permafrost.dev/v1alpha1
    kind: GuardrailPolicy
    metadata: {name: limits}
    spec:
      stages: [create]
      enforcement: Warn
      rules:
      - name: limits
        expression: "podSpec.containers.all(c, has(c.resources))"
        message: set resources
""")


def deployment(name: str, image: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: {name}}}
        spec:
          selector: {{matchLabels: {{app: {name}}}}}
          template:
            metadata: {{labels: {{app: {name}}}}}
            spec:
              containers: [{{name: app, image: "{image}"}}]
        """)


@pytest.fixture
def policy_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICY)
    return path


def check(*args: str) -> int:
    return cli.main(["check", *args])


def test_a_compliant_input_exits_zero_and_reports_the_warning(
    tmp_path: pathlib.Path, policy_file: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(deployment("web", PINNED))
    assert check("--stage", "create", "-p", str(policy_file), str(path)) == 0
    out = capsys.readouterr().out
    assert "[ok]" in out
    assert "Warn    limits/limits: set resources" in out
    assert "0 violation(s), 1 warning(s)" in out


def test_a_violation_exits_one_naming_policy_rule_and_message(
    tmp_path: pathlib.Path, policy_file: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(deployment("web", "nginx:1.27") + "---\n" + deployment("ok", PINNED))
    assert check("--stage", "create", "-p", str(policy_file), str(path)) == 1
    out = capsys.readouterr().out
    assert f"{path}#1  Deployment/web  [DENIED]" in out
    assert "pinned/digests: image nginx:1.27 is not pinned" in out
    assert f"{path}#2  Deployment/ok  [ok]" in out


def test_json_output_has_the_documented_shape(
    tmp_path: pathlib.Path, policy_file: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(
        deployment("web", "nginx:1.27") + "---\nkind: ConfigMap\napiVersion: v1\n"
        "metadata: {name: cfg}\n"
    )
    assert check("--stage", "create", "-p", str(policy_file), "-o", "json", str(path)) == 1
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {
        "stage",
        "policies",
        "inputs",
        "skipped",
        "violations",
        "warnings",
        "audits",
    }
    assert report["policies"] == ["limits", "pinned"]
    (item,) = report["inputs"]
    assert (item["kind"], item["name"], item["document"], item["allowed"]) == (
        "Deployment",
        "web",
        1,
        False,
    )
    assert {r["outcome"] for r in item["results"]} == {"Fail"}
    assert set(item["results"][0]) == {"policy", "rule", "enforcement", "outcome", "message"}
    assert report["skipped"] == [
        {
            "source": str(path),
            "document": 2,
            "kind": "ConfigMap",
            "name": "cfg",
            "reason": "runs nothing",
        }
    ]
    assert (report["violations"], report["warnings"], report["audits"]) == (1, 1, 0)


def test_a_job_beside_a_release_is_skipped_not_an_unusable_input(
    tmp_path: pathlib.Path, policy_file: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(
        deployment("web", "nginx:1.27") + "---\napiVersion: batch/v1\nkind: Job\n"
        "metadata: {name: migrate}\nspec:\n  template:\n    spec:\n      containers:\n"
        "      - {name: m, image: nginx:1.27}\n      restartPolicy: Never\n"
    )
    # The Deployment's verdict decides the exit code (1), not the Job (was 2 for the run).
    assert check("--stage", "create", "-p", str(policy_file), str(path)) == 1
    out = capsys.readouterr().out
    assert f"{path}#2  Job/migrate  [skipped: not guarded by Permafrost]" in out
    assert "Deployment/web  [DENIED]" in out


def test_the_built_in_library_is_used_without_policy_files(
    capsys: pytest.CaptureFixture[str],
) -> None:
    example = pathlib.Path(__file__).parents[2] / "examples" / "checkout.yaml"
    assert check("--stage", "create", "-o", "json", str(example)) == 0
    report = json.loads(capsys.readouterr().out)
    assert "permafrost-images-pinned" in report["policies"]
    assert report["inputs"][0]["kind"] == "GuardedRelease"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param("a: [1, 2\n", "not valid YAML", id="broken-yaml"),
        pytest.param("- just\n- a list\n", "must be a mapping", id="a-list-document"),
        pytest.param(
            "apiVersion: v1\nkind: Deploymnet\nmetadata: {name: x}\n",
            "kind 'Deploymnet' cannot be checked",
            id="an-unknown-kind",
        ),
        pytest.param(
            "".join(
                f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9 if i else ["1"] * 9) + "]\n"
                for i in range(9)
            ),
            "YAML bomb",
            id="a-billion-laughs",
        ),
        pytest.param("a: " + "[" * 200 + "]" * 200 + "\n", "nested", id="absurd-nesting"),
    ],
)
def test_unusable_input_exits_two_with_a_message_naming_the_file(
    tmp_path: pathlib.Path,
    policy_file: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    fragment: str,
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert check("--stage", "create", "-p", str(policy_file), str(path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("permafrost check: ")
    assert str(path) in err
    assert fragment in err
    assert "Traceback" not in err


def test_a_policy_that_does_not_compile_is_unusable_input(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(POLICY.replace("c.image.matches", "c.image.matches(("))
    app = tmp_path / "app.yaml"
    app.write_text(deployment("web", PINNED))
    assert check("--stage", "create", "-p", str(broken), str(app)) == 2
    err = capsys.readouterr().err
    assert "policy 'pinned', rule 'digests'" in err
    assert "does not compile" in err


def test_a_missing_file_is_unusable_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert check("--stage", "create", "/nonexistent/app.yaml") == 2
    assert "cannot be read" in capsys.readouterr().err


def test_an_oversized_input_is_refused_before_parsing() -> None:
    with pytest.raises(documents.InputError, match="larger than"):
        documents.load_all("a" * (documents.MAX_BYTES + 1), source="big.yaml")


def test_promote_rules_see_the_namespace_labels_the_stable_revision_and_now(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "promote.yaml"
    policy.write_text(
        textwrap.dedent("""\
        apiVersion: permafrost.dev/v1alpha1
        kind: GuardrailPolicy
        metadata: {name: promote}
        spec:
          stages: [promote]
          rules:
          - name: prod-after-2027
            expression: >-
              namespaceObject.metadata.labels['environment'] != 'production'
              || now >= timestamp('2027-01-01T00:00:00Z')
          - name: same-major
            expression: "stable == null || stable.version == '2'"
        """)
    )
    stable = tmp_path / "stable.yaml"
    stable.write_text("{hash: abc, name: web-abc, images: [], version: '1'}\n")
    app = tmp_path / "app.yaml"
    app.write_text(deployment("web", PINNED))
    args = [
        "--stage",
        "promote",
        "-p",
        str(policy),
        "-o",
        "json",
        "--namespace-label",
        "environment=production",
        str(app),
    ]
    assert check(*args, "--now", "2026-12-24T10:00:00Z", "--stable", str(stable)) == 1
    failed = {
        r["rule"]
        for r in json.loads(capsys.readouterr().out)["inputs"][0]["results"]
        if r["outcome"] != "Pass"
    }
    assert failed == {"prod-after-2027", "same-major"}
    assert check(*args, "--now", "2027-01-02T00:00:00Z") == 0
