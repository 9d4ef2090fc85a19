"""Break-glass sessions, exec/attach/port-forward into frozen pods, and the replacement of marked
pods: values in, decisions out; and the fail-safe policy for them, as data."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from permafrost import models
from permafrost.guards import admission, sessions

NOW = datetime.datetime(2026, 12, 3, 6, 0, 0, tzinfo=datetime.UTC)
GROUP = "permafrost:break-glass"
SETTINGS = admission.Settings(
    exempt_users=frozenset({"operator"}),
    break_glass_groups=frozenset({GROUP}),
    excluded_namespaces=frozenset({"kube-system", "permafrost-system"}),
)
ENFORCED = {models.LABEL_ENFORCE: "true"}


def stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def session(
    user: str = "alice",
    *,
    since: datetime.datetime = NOW,
    minutes: float = 15,
    reason: str = "INC-42",
) -> dict[str, str]:
    until = since + datetime.timedelta(minutes=minutes)
    return {
        sessions.ANNOTATION_USER: user,
        sessions.ANNOTATION_SINCE: stamp(since),
        sessions.ANNOTATION_UNTIL: stamp(until),
        sessions.ANNOTATION_REASON: reason,
    }


def pod(
    *,
    managed: bool = True,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    name: str = "web-1",
) -> dict[str, Any]:
    all_labels = {"app": "web", **(labels or {})}
    if managed:
        all_labels |= {models.LABEL_RELEASE: "web", models.LABEL_REVISION: "abc"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": f"uid-{name}",
            "labels": all_labels,
            "annotations": annotations or {},
        },
        "spec": {"containers": [{"name": "app", "image": "x@sha256:" + "a" * 64}]},
    }


def connect(
    subresource: str = "exec",
    *,
    user: str = "alice",
    groups: tuple[str, ...] = (GROUP,),
    target: dict[str, Any] | None = None,
    namespace_labels: dict[str, str] | None = None,
) -> sessions.Connect:
    return sessions.Connect(
        subresource=subresource,
        namespace="shop",
        name="web-1",
        username=user,
        groups=groups,
        pod=target,
        namespace_labels=namespace_labels or {},
        options={"kind": "PodExecOptions", "command": ["sh"]},
    )


# --- exec, attach, port-forward -----------------------------------------------------------------


@pytest.mark.parametrize("subresource", ["exec", "attach", "portforward"])
@pytest.mark.parametrize(
    ("target", "labels"),
    [(pod(), {}), (pod(managed=False), ENFORCED)],
    ids=["managed", "enforced"],
)
def test_a_frozen_pod_is_not_entered_without_a_session(
    subresource: str, target: dict[str, Any], labels: dict[str, str]
) -> None:
    for user, groups in (("bob", ()), ("alice", (GROUP,))):
        decision = sessions.review_connect(
            connect(subresource, user=user, groups=groups, target=target, namespace_labels=labels),
            SETTINGS,
            now=NOW,
        )
        assert not decision.allowed
        assert decision.reason == sessions.DENIED[subresource]
        assert decision.event_type == "Warning"
        assert "permafrost break-glass web-1 -n shop --for 15m" in decision.message
        assert "kubectl debug web-1 --copy-to=NAME" in decision.message


def test_a_pod_that_is_not_frozen_is_entered_freely() -> None:
    decision = sessions.review_connect(
        connect(user="bob", groups=(), target=pod(managed=False)), SETTINGS, now=NOW
    )
    assert decision.allowed
    assert decision.reason == admission.NOT_FROZEN
    gone = sessions.review_connect(connect(user="bob", groups=(), target=None), SETTINGS, now=NOW)
    assert gone.allowed  # the apiserver answers 404 itself


def test_exempt_users_are_never_denied() -> None:
    decision = sessions.review_connect(
        connect(user="operator", groups=(), target=pod()), SETTINGS, now=NOW
    )
    assert decision == admission.Decision(True, admission.EXEMPT)


def test_the_session_s_user_gets_in_while_it_is_open_and_is_told_it_is_recorded() -> None:
    target = pod(annotations=session(minutes=15))
    decision = sessions.review_connect(connect(target=target), SETTINGS, now=NOW)
    assert decision.allowed
    assert decision.reason == sessions.BREAK_GLASS_EXEC
    assert decision.event_type == "Warning"
    assert "alice ran exec ['sh'] in Pod shop/web-1" in decision.message
    assert "INC-42" in decision.message
    assert any("marked tainted" in w for w in decision.warnings)
    # A minute before its end, still; at its end, no longer.
    later = NOW + datetime.timedelta(minutes=14)
    assert sessions.review_connect(connect(target=target), SETTINGS, now=later).allowed
    ended = sessions.review_connect(
        connect(target=target), SETTINGS, now=NOW + datetime.timedelta(minutes=15)
    )
    assert not ended.allowed
    assert "your break-glass session ended at 2026-12-03T06:15:00Z" in ended.message


@pytest.mark.parametrize(
    ("user", "groups", "said"),
    [
        ("bob", (GROUP,), "no break-glass session of yours"),  # someone else's session
        ("alice", (), "not in a break-glass group"),  # no longer a member
    ],
)
def test_a_session_lets_in_only_its_user_while_a_member(
    user: str, groups: tuple[str, ...], said: str
) -> None:
    decision = sessions.review_connect(
        connect(user=user, groups=groups, target=pod(annotations=session())), SETTINGS, now=NOW
    )
    assert not decision.allowed
    assert said in decision.message


def test_a_session_longer_than_the_maximum_or_not_begun_lets_nobody_in() -> None:
    too_long = pod(annotations=session(minutes=5 * 60))
    assert not sessions.review_connect(connect(target=too_long), SETTINGS, now=NOW).allowed
    future = pod(annotations=session(since=NOW + datetime.timedelta(hours=1)))
    assert not sessions.review_connect(connect(target=future), SETTINGS, now=NOW).allowed


def test_port_forward_may_be_allowed_by_a_setting_and_never_marks_the_pod() -> None:
    allowing = admission.Settings(**{**SETTINGS.__dict__, "allow_port_forward": True})
    decision = sessions.review_connect(
        connect("portforward", user="bob", groups=(), target=pod()), allowing, now=NOW
    )
    assert decision.allowed
    assert decision.reason == sessions.PORT_FORWARD_ALLOWED
    exec_ = sessions.review_connect(
        connect("exec", user="bob", groups=(), target=pod()), allowing, now=NOW
    )
    assert not exec_.allowed
    assert sessions.taint_of("portforward") is None
    assert sessions.taint_of("exec") == "exec"
    assert sessions.taint_of("attach") == "attach"


# --- opening a session ---------------------------------------------------------------------------


def update(
    new_annotations: dict[str, str],
    *,
    user: str = "alice",
    groups: tuple[str, ...] = (GROUP,),
    old_annotations: dict[str, str] | None = None,
) -> admission.Request:
    return admission.Request(
        scope="managed",
        kind="Pod",
        operation="UPDATE",
        subresource=None,
        namespace="shop",
        name="web-1",
        username=user,
        groups=groups,
        old=pod(annotations=old_annotations or {}),
        new=pod(annotations=new_annotations),
    )


def test_a_member_opens_a_session_for_themselves() -> None:
    decision = sessions.review_session(update(session()), SETTINGS, now=NOW)
    assert decision is not None
    assert decision.allowed
    assert decision.reason == sessions.SESSION_OPENED
    assert decision.message == (
        "alice opened a break-glass session on Pod shop/web-1 until 2026-12-03T06:15:00Z "
        "(15m): INC-42"
    )


@pytest.mark.parametrize(
    ("annotations", "user", "groups", "said"),
    [
        (session("bob"), "bob", (), "bob is not in a break-glass group"),
        (session("bob"), "alice", (GROUP,), "only for themselves, not for bob"),
        (session(minutes=5 * 60), "alice", (GROUP,), "at most 4h"),
        (session(minutes=-5), "alice", (GROUP,), "end after it starts"),
        (
            session(since=NOW - datetime.timedelta(hours=1)),
            "alice",
            (GROUP,),
            "it must start now",
        ),
        ({sessions.ANNOTATION_USER: "alice"}, "alice", (GROUP,), "it needs all of"),
        (
            {**session(), sessions.ANNOTATION_UNTIL: "tomorrow"},
            "alice",
            (GROUP,),
            "it needs all of",
        ),
        ({**session(), sessions.ANNOTATION_REASON: " "}, "alice", (GROUP,), "it needs all of"),
    ],
    ids=["non-member", "for-another", "too-long", "backwards", "backdated", "partial",
         "bad-time", "no-reason"],
)  # fmt: skip
def test_a_session_is_refused_unless_a_member_opens_it_for_themselves_for_a_bounded_time(
    annotations: dict[str, str], user: str, groups: tuple[str, ...], said: str
) -> None:
    decision = sessions.review_session(
        update(annotations, user=user, groups=groups), SETTINGS, now=NOW
    )
    assert decision is not None
    assert not decision.allowed
    assert decision.reason == sessions.SESSION_REFUSED
    assert said in decision.message


def test_ending_a_session_or_leaving_it_alone_is_not_a_session_decision() -> None:
    assert (
        sessions.review_session(
            update({}, user="bob", groups=(), old_annotations=session()), SETTINGS, now=NOW
        )
        is None
    )
    same = session()
    unrelated = update({**same, "x": "y"}, user="bob", groups=(), old_annotations=same)
    assert sessions.review_session(unrelated, SETTINGS, now=NOW) is None


def test_open_session_writes_what_review_session_accepts() -> None:
    opened = sessions.open_session(
        user="alice", reason=" INC-42 ", duration=datetime.timedelta(minutes=15), now=NOW
    )
    decision = sessions.review_session(update(opened.annotations()), SETTINGS, now=NOW)
    assert decision is not None
    assert decision.allowed
    assert sessions.session_of(pod(annotations=opened.annotations())) == opened
    for bad in (datetime.timedelta(0), datetime.timedelta(hours=5)):
        with pytest.raises(ValueError, match="at most 4h"):
            sessions.open_session(user="alice", reason="x", duration=bad, now=NOW)
    with pytest.raises(ValueError, match="needs a reason"):
        sessions.open_session(
            user="alice", reason=" ", duration=datetime.timedelta(minutes=1), now=NOW
        )


# --- replacing marked pods ----------------------------------------------------------------------


def test_a_marked_pod_is_replaced_once_its_session_is_over() -> None:
    marked = {sessions.LABEL_TAINTED: "exec"}
    open_ = pod(name="a", labels=marked, annotations=session(minutes=10))
    over = pod(
        name="b", labels=marked, annotations=session(since=NOW - datetime.timedelta(hours=1))
    )
    ended = pod(name="c", labels=marked)
    clean = pod(name="d", annotations=session())
    going = pod(name="e", labels=marked)
    going["metadata"]["deletionTimestamp"] = stamp(NOW)
    due, wake = sessions.replacements([open_, over, ended, clean, going], now=NOW, enabled=True)
    assert [r.name for r in due] == ["b", "c"]
    assert "revision abc" in due[0].message
    assert "the break-glass session of alice ended at 2026-12-03T05:15:00Z" in due[0].message
    assert wake == NOW + datetime.timedelta(minutes=10)
    assert sessions.replacements([over, ended], now=NOW, enabled=False) == ([], None)


def test_a_release_replaces_marked_pods_unless_it_opts_out() -> None:
    spec = models.GuardedReleaseSpec.model_validate({"template": {}})
    assert spec.rollout.replace_tainted_pods is True
    off = models.GuardedReleaseSpec.model_validate(
        {"template": {}, "rollout": {"replaceTaintedPods": False}}
    )
    assert off.rollout.replace_tainted_pods is False


# --- the guards the apiserver is given ----------------------------------------------------------


def test_the_connect_webhook_matches_every_pod_and_reads_it() -> None:
    config = admission.webhook_configuration(
        name="w", client_config={"url": "https://127.0.0.1:9443"}, settings=SETTINGS
    )
    hook = next(w for w in config["webhooks"] if w["name"] == "connect.permafrost.dev")
    assert hook["objectSelector"] == {}
    assert hook["failurePolicy"] == "Ignore"
    assert hook["clientConfig"]["url"].endswith("/pods-connect")
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CONNECT"],
            "resources": ["pods/exec", "pods/attach", "pods/portforward"],
        }
    ]
    allowing = admission.Settings(**{**SETTINGS.__dict__, "allow_port_forward": True})
    config = admission.webhook_configuration(
        name="w", client_config={"url": "https://127.0.0.1:9443"}, settings=allowing
    )
    hook = next(w for w in config["webhooks"] if w["name"] == "connect.permafrost.dev")
    assert "pods/portforward" not in hook["rules"][0]["resources"]


def test_the_fail_safe_binds_connect_without_an_object_selector() -> None:
    policy, enforced, managed = admission.exec_policy_manifests(name="p", settings=SETTINGS)
    assert "objectSelector" not in enforced["spec"]["matchResources"]
    assert enforced["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == ENFORCED
    assert managed["spec"]["matchResources"]["objectSelector"] == {
        "matchExpressions": [{"key": models.LABEL_RELEASE, "operator": "Exists"}]
    }
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert (
        policy["spec"]["matchConditions"][0]["expression"]
        == '!(request.userInfo.username in ["operator"])'
    )
    text = json.dumps(policy)
    assert json.dumps(GROUP)[1:-1] in text
    assert admission.SESSION_ANNOTATIONS == sessions.SESSION_ANNOTATIONS
    assert admission.MAX_SESSION_CEL == "duration('4h')"
    assert datetime.timedelta(hours=4) == sessions.MAX_SESSION
