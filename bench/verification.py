"""Image verification: what the operator's signature and registry checks cost, cold and cached,
and what their caches hold.

A real OCI registry (distribution, ``bench/oci_registry.py``) on loopback; small images pushed
with crane, signed with ``permafrost sign`` and attested with ``permafrost check --stage build
--attest`` (the project's own signer, as a CI job would run it). Then the operator's own code
path, the two calls the reconciler makes before it creates a revision, in its order:
``SignatureChecker.verify`` (the cosign signature, and the attestation when one is required)
then ``Checker.check`` (the manifest exists, and runs on the nodes' platforms).

(a) ``cold``: a fresh client and fresh caches for every verification: the signature manifest,
its payload blob, the referrers (for sigstore bundles), the attestation manifest and blob when
required, then the image manifest, all fetched and verified again. The images are taken in
turn, so the registry serves them from its page cache, as a busy one would.

(b) ``cached``: the same two calls, the same digest, again and again on warm caches: what a
verified digest adds to every later reconcile of its release.

(c) ``bounds``: more distinct pinned references than :data:`~permafrost.artifacts.registry.
MAX_VERIFICATIONS` are verified (through the registry: unsigned digests, refused and cached as
any verdict is), and the caches' entries and bytes are reported: the estimate their byte bound
counts, and what tracemalloc measures them to hold.

All traffic goes to the registry on loopback; every count is fixed and every request bounded
by the client's timeout.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench import common, oci_registry
from permafrost.artifacts import attestations, images, registry, signatures

REPOSITORY = "bench/app"
BUILD_POLICY = "bench-build-pinned"
TIMEOUT = 5.0  # seconds per request; the registry is on loopback
PLATFORMS = ("linux/amd64",)


def _permafrost(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "permafrost", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=common.ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"permafrost {args[0]} exited {done.returncode}: {done.stderr}")


def _key(directory: pathlib.Path) -> tuple[pathlib.Path, signatures.PublicKey]:
    """A fresh ECDSA P-256 key (cosign's default kind): its private PEM file, its public key."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = directory / "signer.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path, signatures.load_public_key(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _publish(host: str, count: int, *, key: pathlib.Path, work: pathlib.Path) -> list[str]:
    """``count`` small images pushed, signed and attested; their pinned references."""
    policy = work / "build-policy.json"
    policy.write_text(
        json.dumps(
            {
                "apiVersion": "permafrost.dev/v1alpha1",
                "kind": "GuardrailPolicy",
                "metadata": {"name": BUILD_POLICY},
                "spec": {
                    "stages": ["build"],
                    "rules": [{"name": "pinned", "expression": "object.image.contains('@')"}],
                },
            }
        )
    )
    published = []
    for n in range(count):
        tag = f"{host}/{REPOSITORY}:v{n}"
        digest = oci_registry.push(tag, f"image {n}\n".encode() * 64, platform="linux/amd64")
        image = f"{tag}@{digest}"
        _permafrost("sign", image, "--key", str(key))
        artifact = work / "artifact.json"
        artifact.write_text(
            json.dumps(
                {
                    "apiVersion": "permafrost.dev/v1alpha1",
                    "kind": "Artifact",
                    "metadata": {"name": "app"},
                    "image": image,
                }
            )
        )
        _permafrost(
            "check", "--stage", "build", "--attest", "--key", str(key),
            "-p", str(policy), str(artifact),
        )  # fmt: skip
        published.append(image)
    return published


def _fresh() -> tuple[registry.SignatureChecker, registry.Checker]:
    """The operator's two checkers as ``permafrost run`` makes them (one client, shared)."""
    client = registry.Client(timeout=TIMEOUT)
    return registry.SignatureChecker(client=client), registry.Checker(
        client=client, fail_open=False
    )


async def _verify(
    signed: registry.SignatureChecker,
    checker: registry.Checker,
    wanted: registry.Wanted,
) -> tuple[float, float, bool]:
    """One verification as the reconciler makes it: seconds for the signature (and
    attestation) part, seconds for the registry check, and whether both said yes."""
    started = time.perf_counter()
    verdicts = await signed.verify([wanted])
    middle = time.perf_counter()
    (check,) = await checker.check((wanted[0],), platforms=PLATFORMS)
    done = time.perf_counter()
    ok = all(v.verified for v in verdicts.values()) and check.outcome == images.OK
    return middle - started, done - middle, ok


def _row(
    total: Sequence[float], signature: Sequence[float], check: Sequence[float], *, unit: float
) -> dict[str, Any]:
    """Percentiles of one repetition's samples (seconds), in ``unit`` per second."""
    return {
        "n": len(total),
        "p50": common.percentile(total, 50) * unit,
        "p99": common.percentile(total, 99) * unit,
        "max": max(total) * unit,
        "signature_p50": common.percentile(signature, 50) * unit,
        "signature_p99": common.percentile(signature, 99) * unit,
        "check_p50": common.percentile(check, 50) * unit,
        "check_p99": common.percentile(check, 99) * unit,
    }


class _Counting(registry.Client):
    """The client, counting its requests (one untimed verification of each kind is made with
    it: how many requests a cold one makes)."""

    sent = 0

    def _send(self, url: str, headers: Any, **kwargs: Any) -> tuple[int, Any, bytes]:
        self.sent += 1
        return super()._send(url, headers, **kwargs)


async def _requests(wanted: registry.Wanted) -> int:
    client = _Counting(timeout=TIMEOUT)
    signed = registry.SignatureChecker(client=client)
    checker = registry.Checker(client=client, fail_open=False)
    *_, ok = await _verify(signed, checker, wanted)
    if not ok:
        raise RuntimeError(f"{wanted[0]} did not verify")
    return client.sent


async def _cold(wanted: Sequence[registry.Wanted], n: int) -> dict[str, Any]:
    totals, sigs, checks, failed = [], [], [], 0
    for i in range(n):
        signed, checker = _fresh()
        sig, check, ok = await _verify(signed, checker, wanted[i % len(wanted)])
        totals.append(sig + check)
        sigs.append(sig)
        checks.append(check)
        failed += not ok
    return {**_row(totals, sigs, checks, unit=1000.0), "failed": failed}


async def _cached(wanted: registry.Wanted, n: int) -> dict[str, Any]:
    signed, checker = _fresh()
    *_, ok = await _verify(signed, checker, wanted)  # NB: the one cold lookup, not counted
    totals, sigs, checks, failed = [], [], [], int(not ok)
    for _ in range(n):
        sig, check, ok = await _verify(signed, checker, wanted)
        totals.append(sig + check)
        sigs.append(sig)
        checks.append(check)
        failed += not ok
    return {**_row(totals, sigs, checks, unit=1e6), "failed": failed}


async def _bounds(host: str, key: signatures.PublicKey, *, entries: int | None) -> dict[str, Any]:
    """Fill both caches past their entries bound with distinct pinned references (through the
    registry: none of these digests is there, each verdict is a refusal, cached as any is)."""
    signed, checker = _fresh()
    if entries is not None:
        # NB: the smoke run shrinks the bound, not the code path: the real one needs minutes.
        signed._cache.max_entries = checker._cache.max_entries = entries
    bound = signed._cache.max_entries
    count = bound + bound // 4
    wanted = [f"{host}/{REPOSITORY}@sha256:{n:064x}" for n in range(count)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        # NB: in batches, as reconciles ask: each batch at most CONCURRENT_LOOKUPS at once.
        for at in range(0, count, 64):
            batch = wanted[at : at + 64]
            found = await signed.verify([(image, (key,), ()) for image in batch])
            if any(v.outcome != signatures.NOT_SIGNED for v in found.values()):
                raise RuntimeError(f"expected refusals: {list(found.values())[:3]}")
            await checker.check(tuple(batch), platforms=PLATFORMS)
        seconds = time.perf_counter() - started
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    kept_newest = signed.cached(wanted[-1], (key,)) is not None
    kept_oldest = signed.cached(wanted[0], (key,)) is not None
    return {
        "inserted": count,
        "seconds": seconds,
        "signatures": {
            "entries_bound": bound,
            "bytes_bound": signed._cache.max_bytes,
            "entries": len(signed._cache),
            "bytes_estimated": signed._cache.bytes,
            "newest_kept": kept_newest,
            "oldest_kept": kept_oldest,
        },
        "registry_check": {
            "entries_bound": checker._cache.max_entries,
            "bytes_bound": checker._cache.max_bytes,
            "entries": len(checker._cache),
            "bytes_estimated": checker._cache.bytes,
        },
        # NB: both caches and the clients' few tokens: all that the fill left alive.
        "bytes_measured": held,
    }


def run(api: common.Api | None, out: pathlib.Path, *, smoke: bool) -> dict[str, Any]:
    del api, out  # NB: no cluster, no operator process: the operator's classes, in process
    reason = oci_registry.missing()
    if reason is not None:
        return {"skipped": reason}
    repetitions = 2 if smoke else 3
    cold_n = 10 if smoke else 200
    cached_n = 100 if smoke else 5000
    count = 1 if smoke else 4
    with tempfile.TemporaryDirectory(prefix="permafrost-bench-") as tmp:
        work = pathlib.Path(tmp)
        (work / "registry").mkdir()
        with oci_registry.serve(work / "registry") as host:
            private, public = _key(work)
            published = _publish(host, count, key=private, work=work)
            required = (attestations.Requirement(policy=BUILD_POLICY, keys=(public,)),)
            signature_only = [(i, (public,), ()) for i in published]
            attested = [(i, (public,), required) for i in published]

            async def measure() -> dict[str, Any]:
                rows: dict[str, list[dict[str, Any]]] = {
                    "cold": [], "cold_attested": [], "cached": [], "cached_attested": [],
                }  # fmt: skip
                requests = {
                    "cold": await _requests(signature_only[0]),
                    "cold_attested": await _requests(attested[0]),
                }
                for _ in range(repetitions):
                    rows["cold"].append(await _cold(signature_only, cold_n))
                    rows["cold_attested"].append(await _cold(attested, cold_n))
                    rows["cached"].append(await _cached(signature_only[0], cached_n))
                    rows["cached_attested"].append(await _cached(attested[0], cached_n))
                bounds = await _bounds(host, public, entries=64 if smoke else None)
                return {**rows, "bounds": bounds, "requests": requests}

            measured = asyncio.run(measure())
    cold = measured["cold"]
    cached = measured["cached"]
    return {
        **measured,
        "images": count,
        "repetitions": repetitions,
        "cold_per_repetition": cold_n,
        "cached_per_repetition": cached_n,
        "registry": oci_registry.V["REGISTRY_VERSION"],
        "cold_p99_ms": statistics.median(r["p99"] for r in cold),
        "cached_p99_us": statistics.median(r["p99"] for r in cached),
        # NB: the machine may be shared: how busy it was by the end says what the tails mean.
        "load_average_end": os.getloadavg(),
    }
