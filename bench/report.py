"""Write ``docs/benchmarks.md`` and its plots from the results JSON of a run.

The generated part of the page sits between two markers; everything outside them (the
analysis: which targets are met, why, what was changed) is kept as written.
"""

from __future__ import annotations

import json
import pathlib
import statistics
from collections.abc import Sequence
from typing import Any

from bench import common

DOC = common.ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- BEGIN GENERATED: python -m bench (do not edit by hand) -->"
END = "<!-- END GENERATED -->"
# NB: the zero-downtime runs need the real node and have a block of their own, so either part
# can be measured again (``--only``) without the other's results.
ZD_BEGIN = "<!-- BEGIN GENERATED: python -m bench --only zero_downtime (do not edit by hand) -->"
ZD_END = "<!-- END GENERATED: zero_downtime -->"
# NB: image verification needs no cluster (a registry on loopback): a block of its own too.
VF_BEGIN = "<!-- BEGIN GENERATED: python -m bench --only verification (do not edit by hand) -->"
VF_END = "<!-- END GENERATED: verification -->"
MAIN = ("admission", "rollout", "rollback", "scale", "policy_engine")
MiB = 1024 * 1024


def _load(out: pathlib.Path, name: str) -> dict[str, Any] | None:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _spread(values: Sequence[float], fmt: str = "{:.1f}") -> str:
    """``median (min-max)`` of repetitions."""
    if not values:
        return "-"
    s = common.summary(values)
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _plot(plots: pathlib.Path, name: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    return fig, ax, plots / f"{name}.png", plt


def _save(fig: Any, path: pathlib.Path, plt: Any) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return f"![{path.stem}]({path.parent.name}/{path.name})"


def _machine(m: dict[str, Any]) -> list[str]:
    return [
        "| | |",
        "|---|---|",
        f"| run | {m['started']} |",
        f"| CPU | {m['cores']} cores, {m['cpu']} |",
        f"| memory | {m['memory_bytes'] / 1024**3:.1f} GiB |",
        f"| load average at start | {', '.join(f'{x:.2f}' for x in m['load_average'])} |",
        f"| Permafrost / Kopf / Python | {m['permafrost']} / {m['kopf']} / {m['python']} |",
        f"| Kubernetes / etcd / kwok | {m['kubernetes']} / {m['etcd']} / {m['kwok']} |",
        f"| platform | {m['platform']} |",
    ]


def _admission(r: dict[str, Any], plots: pathlib.Path) -> tuple[list[str], dict[str, bool]]:
    lines = [
        "### 1a. The webhook alone",
        "",
        f"AdmissionReviews POSTed to the webhook over loopback HTTPS, open loop, "
        f"{r['repetitions']} repetitions of {r['seconds_per_repetition']:g} s per rate; half "
        f"CREATEs (the built-in library, {r['policies']} policies, is evaluated), half UPDATEs. "
        "Latency counts from when a request was due. Median over repetitions (min-max).",
        "",
        "| rate /s | achieved /s | p50 ms | p99 ms | errors | operator CPU ms/review "
        "| load generator CPU ms/review |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = r["webhook"]
    targets: dict[str, bool] = {}
    medians: dict[float, tuple[float, float]] = {}
    for rate in r["rates"]:
        mine = [x for x in rows if x["rate"] == rate]
        p50 = [x["p50_ms"] for x in mine]
        p99 = [x["p99_ms"] for x in mine]
        errors = sum(x["errors"] for x in mine)
        sent = sum(x["sent"] for x in mine)
        achieved = statistics.median(x["achieved_rate"] for x in mine)
        lines.append(
            f"| {rate:g} | {achieved:.0f} | {_spread(p50, '{:.2f}')} | {_spread(p99, '{:.2f}')} "
            f"| {errors} of {sent} "
            f"| {_spread([x['operator_cpu_ms_per_review'] for x in mine], '{:.2f}')} "
            f"| {_spread([x['client_cpu_ms_per_review'] for x in mine], '{:.2f}')} |"
        )
        medians[rate] = (statistics.median(p50), statistics.median(p99))
        if rate == 300:
            targets["1a. webhook p99 < 5 ms at 300/s"] = statistics.median(p99) < 5
    fig, ax, path, plt = _plot(plots, "admission-webhook")
    rates = sorted(medians)
    ax.plot(rates, [medians[x][0] for x in rates], "o-", label="p50")
    ax.plot(rates, [medians[x][1] for x in rates], "s-", label="p99")
    ax.axhline(5, color="grey", linestyle=":", label="target p99 at 300/s")
    ax.set_xscale("log")
    ax.set_xlabel("AdmissionReviews per second")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Webhook latency (median of repetitions)")
    ax.legend()
    lines += ["", _save(fig, path, plt), ""]

    rounds = r["apiserver"]
    variants = ("webhook", "policy-only", "no-guard")
    lines += [
        "### 1b. As the apiserver sees it",
        "",
        "Deployment creates and label updates through the apiserver, "
        f"{r['apiserver_ops_per_variant']} of each per variant per repetition, "
        f"{len(rounds)} repetitions, the three variants "
        "interleaved request by request: an enforced namespace with the webhook and the "
        "ValidatingAdmissionPolicy, an enforced namespace with only the policy, and an "
        "unguarded namespace. Median over repetitions (min-max).",
        "",
        "| operation | variant | p50 ms | p99 ms | p99 / no-guard p99 |",
        "|---|---|---:|---:|---:|",
    ]
    for op in ("create", "update"):
        base = [x[f"no-guard.{op}.p99_ms"] for x in rounds]
        for variant in variants:
            p50 = [x[f"{variant}.{op}.p50_ms"] for x in rounds]
            p99 = [x[f"{variant}.{op}.p99_ms"] for x in rounds]
            ratio = [a / b for a, b in zip(p99, base, strict=True)]
            lines.append(
                f"| {op} | {variant} | {_spread(p50)} | {_spread(p99)} | "
                f"{_spread(ratio, '{:.2f}')} |"
            )
            if variant == "webhook":
                targets[f"1b. webhook adds < 30% to the no-guard p99 ({op})"] = (
                    statistics.median(ratio) < 1.3
                )
    fig, ax, path, plt = _plot(plots, "admission-apiserver")
    width = 0.25
    for i, variant in enumerate(variants):
        values = [
            statistics.median(x[f"{variant}.{op}.p99_ms"] for x in rounds)
            for op in ("create", "update")
        ]
        ax.bar([j + (i - 1) * width for j in range(2)], values, width, label=variant)
    ax.set_xticks(range(2), ["create", "update"])
    ax.set_ylabel("p99 latency (ms)")
    ax.set_title("Apiserver request latency by guard (median p99)")
    ax.legend()
    lines += ["", _save(fig, path, plt), ""]
    if "apiserver_compiled" in r:
        part, more = _admission_compiled(r)
        lines += part
        targets.update(more)
    return lines, targets


def _admission_compiled(r: dict[str, Any]) -> tuple[list[str], dict[str, bool]]:
    rounds = r["apiserver_compiled"]
    enforced_by = r.get("enforced_by", {})
    in_apiserver = sorted(n for n, where in enforced_by.items() if where == "apiserver")
    on_webhook = sorted(n for n, where in enforced_by.items() if where == "webhook")
    lines = [
        "### 1c. Policies compiled into the apiserver",
        "",
        "The same measurement with the operator compiling the create-stage policies into "
        "ValidatingAdmissionPolicies (its default): an enforced namespace with the webhook, "
        "which leaves the compiled policies to the apiserver (`compiled+webhook`), an enforced "
        "namespace without the webhook (`compiled`: the fail-safe and the compiled policies, "
        "what holds with the operator stopped), and the unguarded one, interleaved request by "
        f"request, after 1b in the same run. In the apiserver: {len(in_apiserver)} of "
        f"{len(enforced_by)} policies"
        + (f"; on the webhook: {', '.join(on_webhook)}" if on_webhook else "")
        + ". Median over repetitions (min-max).",
        "",
        "| operation | variant | p50 ms | p99 ms | p50 - no-guard p50 ms | p99 / no-guard p99 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    targets: dict[str, bool] = {}
    for op in ("create", "update"):
        base50 = [x[f"no-guard.{op}.p50_ms"] for x in rounds]
        base99 = [x[f"no-guard.{op}.p99_ms"] for x in rounds]
        for variant in ("compiled+webhook", "compiled", "no-guard"):
            p50 = [x[f"{variant}.{op}.p50_ms"] for x in rounds]
            p99 = [x[f"{variant}.{op}.p99_ms"] for x in rounds]
            added = [a - b for a, b in zip(p50, base50, strict=True)]
            ratio = [a / b for a, b in zip(p99, base99, strict=True)]
            lines.append(
                f"| {op} | {variant} | {_spread(p50)} | {_spread(p99)} | "
                f"{_spread(added)} | {_spread(ratio, '{:.2f}')} |"
            )
            if variant != "no-guard":
                targets[f"1c. {variant} adds < 1 ms to the no-guard p50 ({op})"] = (
                    statistics.median(added) < 1
                )
                targets[f"1c. {variant} adds < 30% to the no-guard p99 ({op})"] = (
                    statistics.median(ratio) < 1.3
                )
    lines.append("")
    return lines, targets


def _rollout(r: dict[str, Any], plots: pathlib.Path) -> tuple[list[str], dict[str, bool]]:
    lines = [
        "## 2. Rollout time",
        "",
        f"From the spec change to traffic on the new revision; every pod Ready "
        f"{r['ready_after_seconds']:g} s after scheduling (kwok), {r['repetitions']} "
        "repetitions per size, Permafrost and native interleaved. Seconds, median (min-max).",
        "",
        "| replicas | Permafrost s | native Deployment s | ratio | native, maxSurge 100% s "
        "| ratio |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    targets = {}
    sizes = r["sizes"]
    meds = {}
    for size in sizes:
        mine = [x for x in r["rows"] if x["replicas"] == size]
        p = [x["permafrost_s"] for x in mine]
        n = [x["native_s"] for x in mine]
        f = [x["native_full_surge_s"] for x in mine]
        ratio = [a / b for a, b in zip(p, n, strict=True)]
        ratio_f = [a / b for a, b in zip(p, f, strict=True)]
        lines.append(
            f"| {size} | {_spread(p, '{:.2f}')} | {_spread(n, '{:.2f}')} | "
            f"{_spread(ratio, '{:.2f}')} | {_spread(f, '{:.2f}')} | {_spread(ratio_f, '{:.2f}')} |"
        )
        meds[size] = (statistics.median(p), statistics.median(n), statistics.median(f))
        targets[f"2. rollout <= 1.2x native ({size} replicas)"] = statistics.median(ratio) <= 1.2
    fig, ax, path, plt = _plot(plots, "rollout")
    width = 0.27
    for k, label in enumerate(("Permafrost", "native Deployment", "native, maxSurge 100%")):
        ax.bar(
            [i + (k - 1) * width for i in range(len(sizes))],
            [meds[s][k] for s in sizes],
            width,
            label=label,
        )
    ax.set_xticks(range(len(sizes)), [f"{s} replicas" for s in sizes])
    ax.set_ylabel("seconds (median)")
    ax.set_title("Spec change to traffic on the new revision")
    ax.legend()
    lines += ["", _save(fig, path, plt), ""]
    return lines, targets


def _rollback(r: dict[str, Any], plots: pathlib.Path) -> tuple[list[str], dict[str, bool]]:
    lines = [
        "## 3. Time to rollback",
        "",
        f"{r['replicas']} replicas; {r['repetitions']} repetitions per failure mode; "
        f"progress deadline {r['progress_deadline_seconds']} s. Seconds from the moment the "
        "failure is detectable, median (min-max).",
        "",
        "| failure | failed revision at 0 replicas | RolledBack=True in the status | both "
        "| samples with the Service off the stable revision |",
        "|---|---:|---:|---:|---:|",
    ]
    targets = {}
    for mode in ("crash-loop", "deadline"):
        mine = [x for x in r["rows"] if x["mode"] == mode]
        a = [x["to_scaled_down_s"] for x in mine]
        b = [x["to_rolled_back_s"] for x in mine]
        done = [x["to_done_s"] for x in mine]
        off = sum(x["samples_off_stable"] for x in mine)
        lines.append(
            f"| {mode} | {_spread(a, '{:.2f}')} | {_spread(b, '{:.2f}')} | "
            f"{_spread(done, '{:.2f}')} | {off} |"
        )
        targets[f"3. rollback < 1 s ({mode})"] = statistics.median(done) < 1
    return [*lines, ""], targets


def _scale(r: dict[str, Any], plots: pathlib.Path) -> tuple[list[str], dict[str, bool]]:
    req = r["requests_per_rollout"]
    lines = [
        "## 4. Scale",
        "",
        f"{r['releases']} GuardedReleases created at once, among {r['unmanaged_deployments']} "
        f"unmanaged Deployments in {r['namespaces']} enforced namespaces, one operator (all "
        f"namespaces, admission on, {r['policies']} policies). One run.",
        "",
        "| measure | value |",
        "|---|---:|",
        "| unmanaged Deployments created / synced by the controller-manager / operator settled "
        f"| {r['unmanaged_create_s']:.0f} s / {r['unmanaged_synced_s']:.0f} s / "
        f"{r['unmanaged_settled_s']:.0f} s |",
        f"| releases created (16 threads) | {r['apply_s']:.1f} s |",
        f"| until every release is Stable | {r['all_stable_s']:.1f} s |",
        f"| operator peak RSS | {r['peak_rss'] / MiB:.0f} MiB |",
        f"| operator RSS before the releases / at the end | {r['rss_before_releases'] / MiB:.0f}"
        f" / {r['rss_end'] / MiB:.0f} MiB |",
        f"| memory per release (RSS growth / releases) | {r['rss_per_release'] / 1024:.0f} KiB |",
        f"| operator CPU while rolling out | {r['operator_cpu_s']:.1f} s |",
        f"| apiserver requests per rollout: reads / writes | {req['reads']:.1f} / "
        f"{req['writes']:.1f} |",
        "| apiserver requests per unmanaged Deployment (created, then settled): reads / writes "
        f"| {r['requests_per_unmanaged']['reads']:.1f} / "
        f"{r['requests_per_unmanaged']['writes']:.1f} |",
    ]
    targets = {"4. operator peak RSS < 300 MB": r["peak_rss"] < 300e6}
    fig, ax, path, plt = _plot(plots, "scale")
    ax.plot([t for t, _ in r["progress"]], [n for _, n in r["progress"]])
    ax.set_xlabel("seconds since the releases were applied")
    ax.set_ylabel("Stable releases")
    ax.set_title(f"{r['releases']} releases applied at once")
    lines += ["", _save(fig, path, plt), ""]
    return lines, targets


def _policy(r: dict[str, Any]) -> list[str]:
    rows = r["rows"]
    cached = [x["cached_per_second"] for x in rows]
    uncached = [x["uncached_per_second"] for x in rows]
    return [
        "## 5. Policy engine",
        "",
        f"The built-in library ({r['policies']} policies, {r['rules_evaluated']} rules apply at "
        f"create) against a typical Deployment, {r['repetitions']} repetitions of "
        f"{r['seconds_per_repetition']:g} s, one core. Evaluations per second, median (min-max).",
        "",
        "| | evaluations/s | ms each |",
        "|---|---:|---:|",
        f"| compiled once (as the operator does) | {_spread(cached, '{:.0f}')} | "
        f"{1000 / statistics.median(cached):.3f} |",
        f"| compiled for every evaluation | {_spread(uncached, '{:.0f}')} | "
        f"{1000 / statistics.median(uncached):.3f} |",
        "",
    ]


def _ms(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.1f}"


def _zero_downtime(r: dict[str, Any], plots: pathlib.Path) -> tuple[list[str], dict[str, bool]]:
    if r.get("skipped"):
        return ["## 6. Zero downtime under real traffic", "", f"Not run: {r['skipped']}.", ""], {}
    lines = [
        "## 6. Zero downtime under real traffic",
        "",
        f"The demo app on the real node, {r['replicas']} replicas, {r['rate']:g} requests/s "
        "(each on a new connection, through the ClusterIP and kube-proxy) from a second before "
        "the change until the replaced revision has no pod left. One run. *Unverified*: answers "
        "from a revision that was not verified when the request was sent (a native Deployment "
        "verifies nothing: not counted). *To all-new*: from the switch (the Service's selector "
        "changing; for a native Deployment, the template change) to the last answer from "
        "another revision.",
        "",
        "| scenario | what | sent | failed | unverified | p50 ms | p99 ms | to all-new s "
        "| answers by version | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    targets: dict[str, bool] = {}
    pictures = []
    for row in r["rows"]:
        new = row.get("switch_to_all_new_s")
        versions = ", ".join(f"{v} {n}" for v, n in sorted(row["versions"].items()))
        errors = ", ".join(f"{e} ({n})" for e, n in row["errors"].items()) or "-"
        unverified = "-" if row["unverified"] is None else str(row["unverified"])
        lines.append(
            f"| {row['scenario']} | {row['notes']} | {row['sent']} | {row['failed']} "
            f"| {unverified} | {_ms(row['p50_ms'])} | {_ms(row['p99_ms'])} "
            f"| {'-' if new is None else f'{new:.2f}'} | {versions} | {errors} |"
        )
        if row["scenario"] != "errors" and not row["scenario"].startswith("native"):
            targets[f"6. 0 failed, 0 unverified ({row['scenario']})"] = (
                row["failed"] == 0 and row["unverified"] == 0
            )
        pictures.append(_traffic_plot(row, plots))
    return [*lines, "", *pictures, ""], targets


def _verification(r: dict[str, Any]) -> tuple[list[str], dict[str, bool]]:
    title = "## 7. Image verification"
    if r.get("skipped"):
        return [title, "", f"Not run: {r['skipped']}.", ""], {}
    b = r["bounds"]
    lines = [
        title,
        "",
        f"The operator's own checks (`SignatureChecker.verify`, then `Checker.check`: what "
        f"the reconciler asks before it creates a revision) against a real registry "
        f"(distribution {r['registry']}) on loopback, {r['images']} small images signed with "
        f"`permafrost sign` and attested with `permafrost check --stage build --attest`. "
        f"*Cold*: a fresh client and fresh caches every time, {r['cold_per_repetition']} "
        f"verifications per repetition (the signature manifest, its payload, the referrers, "
        f"the attestation when required, the image manifest: {r['requests']['cold']} requests, "
        f"{r['requests']['cold_attested']} with the attestation; each on a new connection, as "
        f"the client makes them). *Cached*: the same digest again, "
        f"{r['cached_per_repetition']} times per repetition. Percentiles of every sample of a "
        f"repetition; median (min-max) over {r['repetitions']} repetitions.",
        "",
        "| verification | p50 | p99 | of which signature p99 | of which registry check p99 "
        "| failed |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    targets: dict[str, bool] = {}
    for name, what, unit, limit in (
        ("cold", "cold, signature", "ms", 50.0),
        ("cold_attested", "cold, signature + attestation", "ms", 50.0),
        ("cached", "cached, signature", "µs", 1000.0),
        ("cached_attested", "cached, signature + attestation", "µs", 1000.0),
    ):
        rows = r[name]
        fmt = "{:.2f}" if unit == "ms" else "{:.0f}"
        lines.append(
            f"| {what} | {_spread([x['p50'] for x in rows], fmt)} {unit} "
            f"| {_spread([x['p99'] for x in rows], fmt)} {unit} "
            f"| {_spread([x['signature_p99'] for x in rows], fmt)} {unit} "
            f"| {_spread([x['check_p99'] for x in rows], fmt)} {unit} "
            f"| {sum(x['failed'] for x in rows)} |"
        )
        if name == "cold_attested":
            continue  # NB: the target is for a manifest and a signature; shown, not judged
        p99 = statistics.median(x["p99"] for x in rows)
        shown = "< 50 ms" if unit == "ms" else "< 1 ms"
        targets[f"7. {what} p99 {shown}"] = p99 < limit and not any(x["failed"] for x in rows)
    sig, check = b["signatures"], b["registry_check"]
    lines += [
        "",
        f"The caches, after {b['inserted']} distinct pinned references were verified "
        f"({b['seconds']:.1f} s; none signed: each verdict a refusal, cached as any is). "
        "*Estimated*: the bytes the byte bound counts (the text kept plus a fixed overhead per "
        "entry); *measured*: what tracemalloc saw both caches hold together.",
        "",
        "| cache | entries (bound) | bytes estimated (bound) | newest kept, oldest dropped |",
        "|---|---:|---:|---|",
        f"| signatures | {sig['entries']} ({sig['entries_bound']}) "
        f"| {sig['bytes_estimated'] / MiB:.2f} MiB ({sig['bytes_bound'] / MiB:.0f} MiB) "
        f"| {'yes' if sig['newest_kept'] and not sig['oldest_kept'] else '**no**'} |",
        f"| registry check | {check['entries']} ({check['entries_bound']}) "
        f"| {check['bytes_estimated'] / MiB:.2f} MiB ({check['bytes_bound'] / MiB:.0f} MiB) "
        "| - |",
        f"| both, measured | {sig['entries'] + check['entries']} "
        f"| {b['bytes_measured'] / MiB:.2f} MiB | |",
        "",
    ]
    targets["7. the caches are bounded (entries and bytes)"] = (
        all(
            c["entries"] <= c["entries_bound"] and c["bytes_estimated"] <= c["bytes_bound"]
            for c in (sig, check)
        )
        and b["inserted"] > sig["entries_bound"]
    )
    return lines, targets


def _traffic_plot(row: dict[str, Any], plots: pathlib.Path) -> str:
    fig, ax, path, plt = _plot(plots, f"traffic-{row['scenario']}")
    fig.set_size_inches(6.4, 2.8)
    series = row["series"]
    for label in sorted(k for k in series if k != "failed"):
        ax.plot(range(len(series[label])), series[label], drawstyle="steps-post", label=label)
    if series.get("failed"):
        ax.bar(
            range(len(series["failed"])),
            series["failed"],
            width=1,
            align="edge",
            color="red",
            alpha=0.6,
            label="failed",
        )
    for at in row["failures_at_s"][:500]:
        ax.axvline(at, color="red", linewidth=0.3, alpha=0.3)
    if row.get("switch_at_s") is not None:
        ax.axvline(row["switch_at_s"], color="black", linestyle=":", label="switch")
    ax.set_xlabel("seconds")
    ax.set_ylabel("answers per second")
    ax.set_title(f"{row['scenario']}: {row['notes']}", fontsize=9)
    ax.legend(fontsize=7, loc="center left")
    return _save(fig, path, plt)


def generate(out: pathlib.Path, *, plots: pathlib.Path) -> str:
    """The generated Markdown for the results in ``out``."""
    machine = _load(out, "machine") or {}
    lines = ["## The machine", ""] + (_machine(machine) if machine else ["(unknown)"]) + [""]
    targets: dict[str, bool] = {}
    body: list[str] = []
    if (r := _load(out, "admission")) is not None:
        part, t = _admission(r, plots)
        body += ["## 1. Admission latency", "", *part]
        targets |= t
    for name, render in (("rollout", _rollout), ("rollback", _rollback), ("scale", _scale)):
        if (r := _load(out, name)) is not None:
            part, t = render(r, plots)
            body += part
            targets |= t
    if (r := _load(out, "policy_engine")) is not None:
        body += _policy(r)

    summary = ["## Targets", "", "| target | this run |", "|---|---|"]
    summary += [f"| {k} | {_met(v)} |" for k, v in targets.items()]
    return "\n".join([BEGIN, "", *lines, *summary, "", *body, END])


def generate_zero_downtime(out: pathlib.Path, *, plots: pathlib.Path) -> str | None:
    """The generated Markdown of the zero-downtime runs in ``out`` (None: there are none)."""
    r = _load(out, "zero_downtime")
    if r is None:
        return None
    machine = _load(out, "machine") or {}
    part, targets = _zero_downtime(r, plots)
    run = f"Run {machine['started']}, {machine['cores']} cores." if machine else ""
    summary = ["| target | this run |", "|---|---|"]
    summary += [f"| {k} | {_met(v)} |" for k, v in targets.items()]
    return "\n".join([ZD_BEGIN, "", *part[:2], run, "", *summary, "", *part[2:], ZD_END])


def generate_verification(out: pathlib.Path) -> str | None:
    """The generated Markdown of the image verification run in ``out`` (None: there is none)."""
    r = _load(out, "verification")
    if r is None:
        return None
    machine = _load(out, "machine") or {}
    part, targets = _verification(r)
    run = (
        f"Run {machine['started']}, {machine['cores']} cores ({machine['cpu']}), load average "
        f"{machine['load_average'][0]:.2f} at the start"
        + (f", {r['load_average_end'][0]:.2f} at the end." if "load_average_end" in r else ".")
        if machine
        else ""
    )
    summary = ["| target | this run |", "|---|---|"]
    summary += [f"| {k} | {_met(v)} |" for k, v in targets.items()]
    return "\n".join([VF_BEGIN, "", *part[:2], run, "", *summary, "", *part[2:], VF_END])


def _replace(text: str, begin: str, end: str, generated: str) -> str:
    if begin in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        return head + generated + tail
    return text.rstrip("\n") + "\n\n" + generated + "\n"


def write(out: pathlib.Path, *, doc: pathlib.Path = DOC) -> pathlib.Path:
    """Replace the generated parts of ``doc`` whose results are in ``out`` (create the page if
    missing); the plots go to the folder named like it (``docs/benchmarks/`` for
    ``docs/benchmarks.md``)."""
    plots = doc.with_suffix("")
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if any((out / f"{name}.json").exists() for name in MAIN) or BEGIN not in text:
        text = _replace(text, BEGIN, END, generate(out, plots=plots))
    zero_downtime = generate_zero_downtime(out, plots=plots)
    if zero_downtime is not None:
        text = _replace(text, ZD_BEGIN, ZD_END, zero_downtime)
    verification = generate_verification(out)
    if verification is not None:
        text = _replace(text, VF_BEGIN, VF_END, verification)
    doc.write_text(text)
    return doc
