"""What ``permafrost status`` and ``permafrost history`` show: tables, ages, timelines."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
import yaml

from permafrost import presenting

NOW = datetime.datetime(2026, 11, 25, 12, 0, 0, tzinfo=datetime.UTC)
IMAGE_1 = "registry.example/shop/checkout:1.4.2@sha256:" + "3f" * 32
IMAGE_2 = "registry.example/shop/checkout:1.5.0@sha256:" + "4e" * 32
IMAGE_3 = "registry.example/shop/checkout:1.6.0@sha256:" + "5f" * 32


def condition(
    type_: str, status: str, reason: str, message: str = "", at: str = ""
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": 3,
        "lastTransitionTime": at or "2026-11-25T11:59:00Z",
    }


def rolled_back_release(**meta: Any) -> dict[str, Any]:
    """v1 retired, v2 stable, v3 failed and rolled back; as the operator writes it."""
    return {
        "apiVersion": "permafrost.dev/v1alpha1",
        "kind": "GuardedRelease",
        "metadata": {
            "name": "checkout",
            "namespace": "shop",
            "generation": 3,
            "creationTimestamp": "2026-11-25T11:50:00Z",
            "managedFields": [
                {
                    "manager": "kubectl-client-side-apply",
                    "operation": "Update",
                    "time": "2026-11-25T11:50:00Z",
                    "fieldsV1": {"f:spec": {"f:replicas": {}}},
                },
                {
                    "manager": "kubectl-patch",
                    "operation": "Update",
                    "time": "2026-11-25T11:58:00Z",
                    "fieldsV1": {"f:spec": {"f:template": {}}},
                },
                {
                    "manager": "permafrost",
                    "operation": "Update",
                    "subresource": "status",
                    "time": "2026-11-25T11:59:30Z",
                    "fieldsV1": {"f:status": {}},
                },
            ],
            **meta,
        },
        "spec": {"replicas": 3, "service": {"name": "checkout"}},
        "status": {
            "observedGeneration": 3,
            "desiredRevision": "cccccccccc",
            "stableRevision": "bbbbbbbbbb",
            "phase": "RolledBack",
            "readyReplicas": "3/3",
            "message": "revision cccccccccc failed",
            "conditions": [
                condition("Ready", "True", "AllReplicasReady", "revision bbbbbbbbbb serves"),
                condition(
                    "RolledBack",
                    "True",
                    "ProgressDeadlineExceeded",
                    "revision cccccccccc failed (0/3 pods Ready after 10s)",
                ),
            ],
            "revisions": [
                {
                    "name": "checkout-cccccccccc",
                    "hash": "cccccccccc",
                    "images": [IMAGE_3],
                    "outcome": "Failed",
                    "reason": "ProgressDeadlineExceeded",
                    "message": "0/3 pods Ready after 10s",
                    "createdAt": "2026-11-25T11:58:00Z",
                    "failedAt": "2026-11-25T11:58:10Z",
                },
                {
                    "name": "checkout-bbbbbbbbbb",
                    "hash": "bbbbbbbbbb",
                    "images": [IMAGE_2],
                    "outcome": "Stable",
                    "reason": "Verified",
                    "createdAt": "2026-11-25T11:55:00Z",
                    "promotedAt": "2026-11-25T11:55:05Z",
                },
                {
                    "name": "checkout-aaaaaaaaaa",
                    "hash": "aaaaaaaaaa",
                    "images": [IMAGE_1],
                    "outcome": "Retired",
                    "reason": "Replaced",
                    "message": "replaced by revision bbbbbbbbbb",
                    "createdAt": "2026-11-25T11:50:00Z",
                    "promotedAt": "2026-11-25T11:50:05Z",
                    "retiredAt": "2026-11-25T11:55:05Z",
                },
            ],
        },
    }


def stable_release(name: str = "cart", namespace: str = "shop") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "generation": 1,
            "creationTimestamp": "2026-11-25T09:00:00Z",
        },
        "status": {
            "observedGeneration": 1,
            "desiredRevision": "dddddddddd",
            "stableRevision": "dddddddddd",
            "phase": "Stable",
            "readyReplicas": "2/2",
            "message": "revision dddddddddd is stable",
            "conditions": [condition("Ready", "True", "AllReplicasReady")],
            "revisions": [
                {
                    "name": f"{name}-dddddddddd",
                    "hash": "dddddddddd",
                    "outcome": "Stable",
                    "createdAt": "2026-11-25T09:00:00Z",
                    "promotedAt": "2026-11-25T09:00:05Z",
                }
            ],
        },
    }


def event(
    reason: str, message: str, at: str, *, kind: str = "GuardedRelease", name: str = "checkout"
) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{name}.{reason}", "uid": f"uid-{reason}-{at}"},
        "involvedObject": {"kind": kind, "name": name},
        "reason": reason,
        "message": message,
        "type": "Warning" if reason in ("RolledBack", "TemplateFrozen") else "Normal",
        "lastTimestamp": at,
        "count": 1,
    }


# --- time -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-5, "<invalid>"),
        (-0.5, "0s"),
        (0, "0s"),
        (59, "59s"),
        (119, "119s"),
        (120, "2m"),
        (330, "5m30s"),
        (600, "10m"),
        (75 * 60, "75m"),
        (3 * 3600, "3h"),
        (4 * 3600 + 10 * 60, "4h10m"),
        (30 * 3600, "30h"),
        (3 * 86400 + 2 * 3600, "3d2h"),
        (5 * 86400, "5d"),
        (400 * 86400, "400d"),
        (3 * 365 * 86400 + 10 * 86400, "3y10d"),
        (10 * 365 * 86400, "10y"),
    ],
)
def test_durations_are_shown_as_kubectl_shows_ages(seconds: float, shown: str) -> None:
    assert presenting.human_duration(seconds) == shown


def test_age_counts_from_the_injected_now() -> None:
    assert presenting.age("2026-11-25T11:58:30Z", now=NOW) == "90s"
    assert presenting.age("2026-11-25T11:58:30.123456+00:00", now=NOW) == "89s"


def test_age_of_a_missing_or_unusable_time_is_unknown() -> None:
    assert presenting.age(None, now=NOW) == "<unknown>"
    assert presenting.age("yesterday", now=NOW) == "<unknown>"


def test_clock_shows_utc_seconds_and_a_dash_for_nothing() -> None:
    assert presenting.clock("2026-11-25T13:00:00+01:00") == "2026-11-25 12:00:00"
    assert presenting.clock(None) == "-"


# --- tables -----------------------------------------------------------------------------------


def test_table_aligns_columns_three_spaces_apart_without_trailing_spaces() -> None:
    text = presenting.table(
        ["NAME", "PHASE", "MESSAGE"], [["a", "Stable", ""], ["long-name", "X", "m"]]
    )
    assert text.splitlines() == [
        "NAME        PHASE    MESSAGE",
        "a           Stable",
        "long-name   X        m",
    ]


def test_table_cells_are_one_line() -> None:
    text = presenting.table(["A", "B"], [["x", "two\nlines  here"]])
    assert text.splitlines()[1] == "x   two lines here"


def test_short_image_cuts_the_digest_to_twelve_hex_digits() -> None:
    assert (
        presenting.short_image(IMAGE_1)
        == "registry.example/shop/checkout:1.4.2@sha256:3f3f3f3f3f3f"
    )
    assert presenting.short_image("nginx:1.27") == "nginx:1.27"


# --- status -----------------------------------------------------------------------------------


def test_status_table_lists_releases_with_why_one_is_not_stable() -> None:
    text = presenting.status_table(
        [stable_release(), rolled_back_release()], now=NOW, all_namespaces=False
    )
    header, cart, checkout = text.splitlines()
    assert header.split() == ["NAME", "DESIRED", "STABLE", "PHASE", "READY", "AGE", "MESSAGE"]
    assert cart.split() == ["cart", "dddddddddd", "dddddddddd", "Stable", "2/2", "3h"]
    assert checkout.split()[:6] == [
        "checkout",
        "cccccccccc",
        "bbbbbbbbbb",
        "RolledBack",
        "3/3",
        "10m",
    ]
    assert checkout.endswith(
        "ProgressDeadlineExceeded: revision cccccccccc failed (0/3 pods Ready after 10s)"
    )


def test_status_table_of_all_namespaces_leads_with_the_namespace() -> None:
    text = presenting.status_table([stable_release(namespace="web")], now=NOW, all_namespaces=True)
    assert text.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert text.splitlines()[1].split()[:2] == ["web", "cart"]


def test_a_release_the_operator_never_saw_says_so() -> None:
    fresh = {"metadata": {"name": "new", "namespace": "shop", "generation": 1}}
    row = presenting.status_table([fresh], now=NOW, all_namespaces=False).splitlines()[1]
    assert row.split()[:5] == ["new", "<none>", "<none>", "<none>", "<none>"]
    assert presenting.NOT_RECONCILED in row


def test_a_stable_release_with_an_unobserved_generation_says_so() -> None:
    release = stable_release()
    release["metadata"]["generation"] = 2
    assert presenting.explanation(release) == "generation 2 not observed yet (observed 1)"


def test_status_detail_shows_the_conditions_and_the_revisions() -> None:
    text = presenting.status_detail(rolled_back_release(), now=NOW)
    assert "Name:        shop/checkout" in text
    assert "Stable:      bbbbbbbbbb (Service checkout selects it)" in text
    assert "Generation:  3 (observed: 3)" in text
    lines = text.splitlines()
    rolled = next(line for line in lines if line.strip().startswith("RolledBack "))
    assert rolled.split()[:4] == ["RolledBack", "True", "ProgressDeadlineExceeded", "60s"]
    revisions = lines[lines.index("Revisions (newest first, times in UTC):") + 1 :]
    assert revisions[0].split()[0] == "REVISION"
    assert [r.split()[:2] for r in revisions[1:]] == [
        ["cccccccccc", "Failed"],
        ["bbbbbbbbbb", "Stable"],
        ["aaaaaaaaaa", "Retired"],
    ]
    assert "registry.example/shop/checkout:1.6.0@sha256:5f5f5f5f5f5f " in revisions[1]


def test_status_document_keeps_whole_images_and_every_condition() -> None:
    doc = presenting.status_document(rolled_back_release(), now=NOW)
    assert doc["phase"] == "RolledBack"
    assert doc["stableRevision"] == "bbbbbbbbbb"
    assert doc["revisions"][0]["images"] == [IMAGE_3]
    assert [c["type"] for c in doc["conditions"]] == ["Ready", "RolledBack"]
    assert json.loads(presenting.render(doc, output="json")) == doc
    assert yaml.safe_load(presenting.render(doc, output="yaml")) == doc


# --- watching ---------------------------------------------------------------------------------


def test_a_release_with_nothing_moving_is_settled() -> None:
    assert presenting.settled(stable_release())
    assert presenting.settled(rolled_back_release())


def test_an_unobserved_generation_is_not_settled() -> None:
    release = stable_release()
    release["metadata"]["generation"] = 2
    assert not presenting.settled(release)


def test_a_revision_being_verified_is_not_settled() -> None:
    release = stable_release()
    release["status"]["revisions"][0]["outcome"] = "Progressing"
    release["status"]["phase"] = "Progressing"
    assert not presenting.settled(release)


def test_a_rollout_held_by_policy_is_settled_though_its_revision_is_still_progressing() -> None:
    # PromotionHeld: verified, waiting for an approval; `status -w` must not wait its timeout.
    release = stable_release()
    release["status"]["revisions"][0]["outcome"] = "Progressing"
    release["status"]["phase"] = "Held"
    assert presenting.settled(release)


def test_a_rollback_asked_for_but_not_started_is_not_settled() -> None:
    release = rolled_back_release(
        annotations={
            "permafrost.dev/rollback-to": "aaaaaaaaaa",
            "permafrost.dev/rollback-from": "cccccccccc",
        }
    )
    assert not presenting.settled(release)
    release["status"]["desiredRevision"] = "aaaaaaaaaa"  # the operator took it on
    assert presenting.settled(release)


def test_a_retry_not_taken_on_yet_is_not_settled() -> None:
    release = rolled_back_release(annotations={"permafrost.dev/retry": "20261125T120000Z"})
    assert not presenting.settled(release)
    release["status"]["revisions"][0]["attempt"] = "3:20261125T120000Z"
    assert presenting.settled(release)


def test_progress_line_says_what_is_being_verified_and_why() -> None:
    release = rolled_back_release()
    release["status"]["revisions"][0]["outcome"] = "Progressing"
    line = presenting.progress_line(release)
    assert line.startswith("checkout  RolledBack  ready 3/3  desired cccccccccc  stable bbbbbbbbbb")
    assert "verifying cccccccccc" in line
    assert line.endswith(
        "(ProgressDeadlineExceeded: revision cccccccccc failed (0/3 pods Ready after 10s))"
    )


def test_watch_shows_the_release_events_and_the_warnings_about_its_revisions() -> None:
    assert presenting.worth_watching(event("Promoted", "m", "t"), release="checkout")
    denial = event("TemplateFrozen", "m", "t", kind="Deployment", name="checkout-bbbbbbbbbb")
    assert presenting.worth_watching(denial, release="checkout")
    scaling = event("ScalingReplicaSet", "m", "t", kind="Deployment", name="checkout-bbbbbbbbbb")
    assert not presenting.worth_watching(scaling, release="checkout")


def test_stamped_lines_lead_with_the_wall_clock() -> None:
    assert presenting.stamped(NOW, "checkout  Stable") == "12:00:00  checkout  Stable"


# --- history ----------------------------------------------------------------------------------


def test_spec_changes_are_newest_first_and_ignore_the_status_writer() -> None:
    changes = presenting.spec_changes(rolled_back_release())
    assert [c["manager"] for c in changes] == ["kubectl-patch", "kubectl-client-side-apply"]
    assert changes[0]["time"] == "2026-11-25T11:58:00Z"


def test_requests_name_the_annotation_and_who_wrote_it() -> None:
    release = rolled_back_release(annotations={"permafrost.dev/rollback-to": "aaaaaaaaaa"})
    release["metadata"]["managedFields"].append(
        {
            "manager": "permafrost-cli",
            "operation": "Update",
            "time": "2026-11-25T11:59:50Z",
            "fieldsV1": {"f:metadata": {"f:annotations": {"f:permafrost.dev/rollback-to": {}}}},
        }
    )
    assert presenting.requests(release) == [
        {
            "annotation": "permafrost.dev/rollback-to",
            "value": "aaaaaaaaaa",
            "manager": "permafrost-cli",
            "time": "2026-11-25T11:59:50Z",
        }
    ]


def test_timeline_without_events_is_told_from_the_status() -> None:
    entries = presenting.timeline(rolled_back_release(), [])
    assert [(e.time, e.reason) for e in entries] == [
        ("2026-11-25T11:50:00Z", "RevisionCreated"),
        ("2026-11-25T11:50:05Z", "Promoted"),
        ("2026-11-25T11:55:00Z", "RevisionCreated"),
        ("2026-11-25T11:55:05Z", "Promoted"),
        ("2026-11-25T11:55:05Z", "Retired"),
        ("2026-11-25T11:58:00Z", "RevisionCreated"),
        ("2026-11-25T11:58:10Z", "ProgressDeadlineExceeded"),
    ]
    assert {e.source for e in entries} == {"status"}


def test_timeline_shows_an_event_instead_of_the_status_record_it_reports() -> None:
    events = [
        event(
            "Promoted",
            "revision bbbbbbbbbb is verified and now serves traffic (was aaaaaaaaaa)",
            "2026-11-25T11:55:05Z",
        ),
        event(
            "RolledBack",
            "revision cccccccccc failed (ProgressDeadlineExceeded: …); "
            "traffic stays on revision bbbbbbbbbb",
            "2026-11-25T11:58:10Z",
        ),
        event(
            "TemplateFrozen",
            "Deployment shop/checkout-bbbbbbbbbb is frozen by Permafrost",
            "2026-11-25T11:56:00Z",
            kind="Deployment",
            name="checkout-bbbbbbbbbb",
        ),
    ]
    entries = presenting.timeline(rolled_back_release(), events)
    reasons = [(e.reason, e.source) for e in entries]
    assert ("Promoted", "event") in reasons
    assert ("RolledBack", "event") in reasons
    assert ("ProgressDeadlineExceeded", "status") not in reasons  # the RolledBack event says it
    assert [r for r in reasons if r[0] == "Promoted"] == [
        ("Promoted", "status"),
        ("Promoted", "event"),
    ]
    denial = next(e for e in entries if e.reason == "TemplateFrozen")
    assert denial.object == "deployment/checkout-bbbbbbbbbb"
    assert [e.time for e in entries] == sorted(e.time for e in entries)


def test_timeline_shows_a_policy_verdict_from_the_status_when_no_event_reports_it() -> None:
    release = stable_release()
    release["status"]["conditions"].append(
        condition(
            "PolicyCompliant",
            "False",
            "PolicyViolation",
            "no-latest-tag/tag: denied",
            at="2026-11-25T10:00:00Z",
        )
    )
    entries = presenting.timeline(release, [])
    assert ("PolicyViolation", "Warning") in [(e.reason, e.type) for e in entries]
    reported = event(
        "PolicyViolation", "no-latest-tag/tag: denied", "2026-11-25T10:00:00Z", name="cart"
    )
    again = presenting.timeline(release, [reported])
    assert [e.source for e in again if e.reason == "PolicyViolation"] == ["event"]


def test_history_text_says_who_changed_the_spec_and_tells_the_timeline() -> None:
    text = presenting.history_text(rolled_back_release(), [], now=NOW)
    lines = text.splitlines()
    assert (
        lines[0]
        == "GuardedRelease shop/checkout: RolledBack, stable revision bbbbbbbbbb, spec generation 3"
    )
    assert lines[1] == "Spec last changed by kubectl-patch (Update) at 2026-11-25 11:58:00 (2m ago)"
    assert lines[2] == "Spec fields also owned by: kubectl-client-side-apply"
    assert lines[3].startswith("Operator says: ProgressDeadlineExceeded")
    timeline = lines[lines.index("Timeline (UTC):") + 1 :]
    assert timeline[0].split() == ["TIME", "TYPE", "OBJECT", "REASON", "MESSAGE"]
    assert timeline[-1].split()[:5] == [
        "2026-11-25",
        "11:58:10",
        "Warning",
        "guardedrelease/checkout",
        "ProgressDeadlineExceeded",
    ]


def test_history_text_counts_repeated_events() -> None:
    repeated = event(
        "TemplateFrozen", "frozen", "2026-11-25T11:56:00Z", kind="Deployment", name="x"
    )
    repeated["count"] = 4
    assert "frozen (x4)" in presenting.history_text(rolled_back_release(), [repeated], now=NOW)


def test_history_document_is_json_with_revisions_changes_and_timeline() -> None:
    doc = presenting.history_document(rolled_back_release(), [])
    assert doc["name"] == "checkout"
    assert doc["specChanges"][0]["manager"] == "kubectl-patch"
    assert [r["hash"] for r in doc["revisions"]] == ["cccccccccc", "bbbbbbbbbb", "aaaaaaaaaa"]
    assert doc["timeline"][0] == {
        "time": "2026-11-25T11:50:00Z",
        "type": "Normal",
        "object": "guardedrelease/checkout",
        "reason": "RevisionCreated",
        "message": f"revision aaaaaaaaaa ({IMAGE_1})",
        "source": "status",
        "count": 1,
    }
    assert json.loads(presenting.render(doc, output="json")) == doc


def test_status_detail_says_when_no_generation_was_observed_yet() -> None:
    release = stable_release()
    del release["status"]["observedGeneration"]
    text = presenting.status_detail(release, now=NOW)
    assert "(observed: not yet)" in text
    assert "None" not in text


def test_status_detail_names_the_spec_revision_during_a_manual_rollback() -> None:
    release = rolled_back_release(
        annotations={
            "permafrost.dev/rollback-to": "aaaaaaaaaa",
            "permafrost.dev/rollback-from": "cccccccccc",
        }
    )
    release["status"]["desiredRevision"] = "aaaaaaaaaa"
    text = presenting.status_detail(release, now=NOW)
    assert "Desired:     aaaaaaaaaa (manual rollback; the spec's revision is cccccccccc)" in text
    plain = presenting.status_detail(rolled_back_release(), now=NOW)
    assert "Desired:     cccccccccc\n" in plain


def test_a_stable_release_that_breaks_an_enforced_policy_or_leaks_traffic_says_so() -> None:
    release = stable_release()
    assert presenting.explanation(release) == ""
    release["status"]["conditions"].append(
        condition(
            "TrafficGuarded",
            "False",
            "UnguardedService",
            "Service old (app=checkout) selects the release's pods",
        )
    )
    assert presenting.explanation(release).startswith("UnguardedService: Service old")
    release["status"]["conditions"].append(
        condition("PolicyCompliant", "False", "EnforcedPolicyViolated", "Enforce p/r: no")
    )
    assert presenting.explanation(release) == "EnforcedPolicyViolated: Enforce p/r: no"
