"""What a node would pull with (permafrost.artifacts.pulls): image pull Secrets read as the
kubelet reads them, merged over the operator-wide config; the nodes' platforms; and the
registry check's cache, which never lets one set of credentials answer for another."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from permafrost.artifacts import images, pulls, registry
from permafrost.releases import conditions

HOST = "reg.example:5000"


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _secret(type_: str, key: str, config: Any, *, name: str = "regcred") -> dict[str, Any]:
    raw = config if isinstance(config, str) else json.dumps(config)
    return {
        "metadata": {"name": name, "namespace": "shop"},
        "type": type_,
        "data": {key: _b64(raw)},
    }


def test_a_dockerconfigjson_secret_gives_its_auths() -> None:
    secret = _secret(
        pulls.DOCKER_CONFIG_JSON,
        ".dockerconfigjson",
        {
            "auths": {
                HOST: {"auth": _b64("ci:pa:ss")},
                "https://index.docker.io/v1/": {"username": "hub", "password": "tok"},
                "no-user.example": {"auth": ""},
            }
        },
    )
    assert pulls.secret_credentials(secret) == {
        HOST: ("ci", "pa:ss"),
        images.DOCKER_HUB_API: ("hub", "tok"),
    }


def test_a_legacy_dockercfg_secret_is_the_auths_map_itself() -> None:
    secret = _secret(pulls.DOCKER_CFG, ".dockercfg", {HOST: {"auth": _b64("old:pw")}})
    assert pulls.secret_credentials(secret) == {HOST: ("old", "pw")}


@pytest.mark.parametrize(
    ("secret", "says"),
    [
        (
            {"metadata": {"name": "regcred", "namespace": "shop"}, "type": "Opaque", "data": {}},
            "Secret shop/regcred is of type 'Opaque', not kubernetes.io/dockerconfigjson",
        ),
        (
            {"metadata": {"name": "regcred", "namespace": "shop"}, "data": {}},
            "is of type 'Opaque'",
        ),
        (
            {"metadata": {"name": "r"}, "type": pulls.DOCKER_CONFIG_JSON, "data": {}},
            "Secret r has no .dockerconfigjson",
        ),
        (
            {
                "metadata": {"name": "r"},
                "type": pulls.DOCKER_CONFIG_JSON,
                "data": {".dockerconfigjson": "%%%"},
            },
            "is not base64 of JSON",
        ),
        (_secret(pulls.DOCKER_CONFIG_JSON, ".dockerconfigjson", "{not json"), "not base64 of JSON"),
        (_secret(pulls.DOCKER_CONFIG_JSON, ".dockerconfigjson", "[1, 2]"), "not a JSON object"),
        (
            _secret(pulls.DOCKER_CONFIG_JSON, ".dockerconfigjson", {"auths": ["a"]}),
            "its auths are not a map",
        ),
        (
            _secret(
                pulls.DOCKER_CONFIG_JSON, ".dockerconfigjson", {"auths": {HOST: {"auth": "!"}}}
            ),
            f"Secret shop/regcred: the auth of '{HOST}' is not base64 user:pass",
        ),
    ],
)
def test_a_secret_that_cannot_be_used_says_why(secret: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)) as caught:
        pulls.secret_credentials(secret)
    # NB: the message is shown in conditions and Events: never a credential in it.
    assert "pa:ss" not in str(caught.value)


def test_the_first_secret_that_names_a_host_wins_over_later_ones_and_the_operator_s() -> None:
    base = {HOST: ("operator", "x"), "other.example": ("operator", "y")}
    first = {HOST: ("first", "1")}
    second = {HOST: ("second", "2"), "third.example": ("second", "3")}
    assert pulls.merged(base, [first, second]) == {
        HOST: ("first", "1"),
        "other.example": ("operator", "y"),
        "third.example": ("second", "3"),
    }
    assert pulls.merged(base, []) == base


def test_pull_secret_names_and_the_service_account_of_a_pod_spec() -> None:
    spec = {"imagePullSecrets": [{"name": "a"}, {"name": "b"}, {"name": "a"}, {}, "junk"]}
    assert pulls.pull_secret_names(spec) == ("a", "b")
    assert pulls.pull_secret_names({}) == ()
    assert pulls.service_account_of({}) == "default"
    assert pulls.service_account_of({"serviceAccountName": "builder"}) == "builder"
    assert pulls.service_account_of({"serviceAccount": "legacy"}) == "legacy"


def test_the_scope_of_credentials_tells_sets_apart_and_holds_no_password() -> None:
    one = pulls.scope({HOST: ("ci", "secret-one")}, HOST)
    two = pulls.scope({HOST: ("ci", "secret-two")}, HOST)
    assert len(one) == len(two) == 32
    assert one != two
    assert pulls.scope({HOST: ("ci", "secret-one")}, HOST) == one
    assert pulls.scope({}, HOST) == ""
    assert pulls.scope({HOST: ("ci", "secret-one")}, "elsewhere.example") == ""
    assert "secret-one" not in one


def _node(
    name: str, os_: str, arch: str, *, ready: str = "True", cordoned: bool = False
) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {
            "conditions": [{"type": "Ready", "status": ready}],
            "nodeInfo": {"operatingSystem": os_, "architecture": arch},
        },
    }


def test_the_platforms_are_those_of_ready_schedulable_nodes_narrowed_by_the_node_selector() -> None:
    nodes = [
        _node("a", "linux", "amd64"),
        _node("b", "linux", "amd64"),
        _node("c", "linux", "arm64"),
        _node("d", "windows", "amd64"),
        _node("e", "linux", "s390x", ready="False"),
        _node("f", "linux", "ppc64le", cordoned=True),
        {
            "metadata": {"name": "g"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        },
    ]
    assert pulls.node_platforms(nodes, node_selector=None) == (
        "linux/amd64",
        "linux/arm64",
        "windows/amd64",
    )
    assert pulls.node_platforms(nodes, node_selector={"kubernetes.io/arch": "arm64"}) == (
        "linux/arm64",
    )
    assert pulls.node_platforms(
        nodes, node_selector={"kubernetes.io/os": "linux", "disktype": "ssd"}
    ) == ("linux/amd64", "linux/arm64")
    assert pulls.node_platforms(nodes, node_selector={"kubernetes.io/arch": "riscv64"}) == ()


def test_an_index_runs_where_it_holds_one_of_the_wanted_platforms() -> None:
    index = ("linux/amd64", "linux/arm/v7")
    assert pulls.runs_on(index, ("linux/arm64", "linux/amd64"))
    assert pulls.runs_on(index, ("linux/arm",))  # nodes report no variant: any will do
    assert not pulls.runs_on(index, ("linux/arm64", "windows/amd64"))
    assert pulls.runs_on(index, ())  # no node to judge by: nothing to refuse
    assert not pulls.runs_on((), ("linux/amd64",))


def test_the_reasons_of_the_check_are_holding_conditions_of_the_same_name() -> None:
    for outcome, reason in (
        (images.PLATFORM_MISSING, conditions.IMAGE_PLATFORM_MISSING),
        (images.UNAUTHORIZED, conditions.REGISTRY_UNAUTHORIZED),
        (images.PULL_SECRET_MISSING, conditions.PULL_SECRET_MISSING),
        (images.PULL_SECRET_INVALID, conditions.PULL_SECRET_INVALID),
        (images.PULL_SECRET_FORBIDDEN, conditions.PULL_SECRET_FORBIDDEN),
        (images.REGISTRY_CHECK_FORBIDDEN, conditions.REGISTRY_CHECK_FORBIDDEN),
    ):
        assert outcome == reason
        assert reason in conditions.HOLDING_REASONS


def test_pull_secret_problems_hold_before_the_images_and_whatever_the_failure_mode() -> None:
    checks = (
        images.Check("a", images.UNREACHABLE, "a: down"),
        images.Check("Secret shop/x", images.PULL_SECRET_INVALID, "x is not usable"),
        images.Check("Secret shop/y", images.PULL_SECRET_MISSING, "y does not exist"),
    )
    for fail_open in (False, True):
        hold = images.hold_of(checks, fail_open=fail_open)
        assert hold is not None
        assert hold[0] == images.PULL_SECRET_MISSING
        assert hold[1].startswith("y does not exist (nothing is created until")
    platform = (images.Check("b", images.PLATFORM_MISSING, "b: built for linux/arm64"),)
    assert images.hold_of(platform, fail_open=True) == (
        images.PLATFORM_MISSING,
        "b: built for linux/arm64 (nothing is created until every image runs on a node's platform)",
    )


# --- the cache: by image and credentials ------------------------------------------------------


class _Registry:
    """Stands in for the registry: it serves ``image`` only to ``allowed`` (user, password), as
    an index of ``platforms``; it records who asked. (The real client is tested against a real
    registry: tests/integration/test_registry_check.py.)"""

    def __init__(self, *, allowed: tuple[str, str], platforms: tuple[str, ...]) -> None:
        self.allowed, self.platforms = allowed, platforms
        self.asked: list[tuple[str, str] | None] = []

    def answer(self, ref: images.Reference, creds: tuple[str, str] | None) -> registry.Manifest:
        self.asked.append(creds)
        if creds != self.allowed:
            raise registry.RegistryError(registry.UNAUTHORIZED, f"{ref.text}: refused")
        return registry.Manifest(
            digest=ref.digest or "", media_type=registry.OCI_INDEX, platforms=self.platforms
        )


def _checker(
    fake: _Registry, now: list[float], monkeypatch: pytest.MonkeyPatch
) -> registry.Checker:
    def manifest(self: registry.Client, ref: images.Reference) -> registry.Manifest:
        return fake.answer(ref, self.credentials.get(ref.api_host))

    # NB: every client the checker makes answers through the fake, with its own credentials.
    monkeypatch.setattr(registry.Client, "manifest", manifest)
    return registry.Checker(client=registry.Client(), fail_open=False, clock=lambda: now[0])


IMAGE = f"{HOST}/shop/app@sha256:" + "a" * 64


async def test_one_namespace_s_credentials_never_answer_for_another_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _Registry(allowed=("shop", "right"), platforms=("linux/amd64",))
    now = [1000.0]
    checker = _checker(fake, now, monkeypatch)
    right = {HOST: ("shop", "right")}
    (ok,) = await checker.check((IMAGE,), credentials=right)
    assert ok.outcome == images.OK
    # Another namespace, without credentials or with other ones: asked again, refused.
    (anonymous,) = await checker.check((IMAGE,), credentials={})
    (wrong,) = await checker.check((IMAGE,), credentials={HOST: ("shop", "wrong")})
    assert anonymous.outcome == wrong.outcome == images.UNAUTHORIZED
    assert fake.asked == [("shop", "right"), None, ("shop", "wrong")]
    # The same credentials (from any namespace) share the verdict: not asked again.
    fake.asked.clear()
    (again,) = await checker.check((IMAGE,), credentials={HOST: ("shop", "right")})
    assert again.outcome == images.OK
    assert fake.asked == []


async def test_an_index_without_a_node_s_platform_is_refused_judged_on_every_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _Registry(allowed=("u", "p"), platforms=("linux/arm64", "linux/arm/v7"))
    checker = _checker(fake, [0.0], monkeypatch)
    creds = {HOST: ("u", "p")}
    (refused,) = await checker.check((IMAGE,), credentials=creds, platforms=("linux/amd64",))
    assert refused.outcome == images.PLATFORM_MISSING
    assert refused.message == (
        f"{IMAGE}: the image is built for linux/arm64, linux/arm/v7; the nodes it may run on "
        "are linux/amd64"
    )
    # The registry's answer is cached, the platform verdict is not: an arm64 node suffices.
    (ok,) = await checker.check((IMAGE,), credentials=creds, platforms=("linux/arm64",))
    assert ok.outcome == images.OK
    (unjudged,) = await checker.check((IMAGE,), credentials=creds, platforms=())
    assert unjudged.outcome == images.OK
    assert len(fake.asked) == 1


async def test_the_node_list_is_kept_for_a_minute() -> None:
    now = [0.0]
    checker = registry.Checker(client=registry.Client(), fail_open=False, clock=lambda: now[0])
    fetched: list[int] = []

    async def fetch() -> list[dict[str, Any]]:
        fetched.append(1)
        return [_node(f"n{len(fetched)}", "linux", "amd64")]

    first = await checker.nodes(fetch)
    now[0] += registry.NODES_SECONDS - 1
    assert await checker.nodes(fetch) is first
    now[0] += 2
    assert (await checker.nodes(fetch))[0]["metadata"]["name"] == "n2"
    assert len(fetched) == 2


async def test_the_operator_wide_credentials_serve_only_where_nothing_else_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _Registry(allowed=("operator", "wide"), platforms=("linux/amd64",))
    checker = _checker(fake, [0.0], monkeypatch)
    checker.client = registry.Client(credentials={HOST: ("operator", "wide")})
    (default,) = await checker.check((IMAGE,))
    assert default.outcome == images.OK
    merged = pulls.merged(checker.client.credentials, [{HOST: ("shop", "other")}])
    (overridden,) = await checker.check((IMAGE,), credentials=merged)
    (anonymous,) = await checker.check((IMAGE,), credentials={})
    assert overridden.outcome == anonymous.outcome == images.UNAUTHORIZED
    assert fake.asked == [("operator", "wide"), ("shop", "other"), None]
