"""Webhook TLS material: what the certificates say, that TLS clients accept them, when they are
renewed, and how they are kept in a Secret.

The apiserver refuses to call a webhook whose certificate does not verify against the caBundle or
does not name the Service, so the handshake tests below use a real TLS client (strict X.509
checks, trusting only the bundle's CA). The keys are EC, so the whole file takes well under a
second.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import pathlib
import re
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from permafrost.guards import certs

NOW = datetime.datetime(2025, 3, 1, 12, 0, tzinfo=datetime.UTC)
DAYS = datetime.timedelta(days=1)
SECOND = datetime.timedelta(seconds=1)
SERVICE = "permafrost-webhook.permafrost-system.svc"
HOSTNAMES = [SERVICE, f"{SERVICE}.cluster.local", "127.0.0.1", "::1"]

E = TypeVar("E", bound=x509.ExtensionType)


@pytest.fixture(scope="module")
def bundle() -> certs.Bundle:
    return certs.issue(hostnames=HOSTNAMES, now=NOW)


@pytest.fixture(scope="module")
def live_bundle() -> certs.Bundle:
    """Issued now, for TLS clients, which check the dates against the real clock."""
    return certs.issue(hostnames=HOSTNAMES, now=datetime.datetime.now(datetime.UTC))


@pytest.fixture(scope="module")
def other_bundle() -> certs.Bundle:
    """The same hostnames, under another CA."""
    return certs.issue(hostnames=HOSTNAMES, now=NOW)


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def extension(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


# --- what the certificates say -----------------------------------------------------------------


def test_a_fresh_certificate_covers_every_hostname_as_dns_or_ip(bundle: certs.Bundle) -> None:
    san = extension(load(bundle.cert), x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [SERVICE, f"{SERVICE}.cluster.local"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_hostnames_are_lower_cased_and_deduplicated() -> None:
    issued = certs.issue(hostnames=["Web.Example", "web.example", "::1", "0::1"], now=NOW)
    san = extension(load(issued.cert), x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["web.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1")]


def test_the_common_name_is_the_first_hostname_cut_to_64_characters() -> None:
    long_name = "a" * 60 + ".permafrost-system.svc"
    issued = certs.issue(hostnames=[long_name, SERVICE], now=NOW)
    cert = load(issued.cert)
    [common_name] = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert common_name.value == long_name[:64]
    assert long_name in extension(cert, x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


def test_the_serving_certificate_is_signed_by_its_ca(bundle: certs.Bundle) -> None:
    cert, ca_cert = load(bundle.cert), load(bundle.ca_cert)
    cert.verify_directly_issued_by(ca_cert)
    assert cert.issuer == ca_cert.subject
    ca_key_id = extension(ca_cert, x509.SubjectKeyIdentifier).value.digest
    assert extension(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ca_key_id


def test_the_serving_certificate_is_for_tls_servers_only(bundle: certs.Bundle) -> None:
    cert = load(bundle.cert)
    assert list(extension(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    usage = extension(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert usage.value.key_encipherment
    assert not usage.value.key_cert_sign
    assert extension(cert, x509.BasicConstraints).value.ca is False


def test_the_ca_signs_certificates_and_nothing_below_them(bundle: certs.Bundle) -> None:
    ca_cert = load(bundle.ca_cert)
    ca_cert.verify_directly_issued_by(ca_cert)  # self-signed
    [common_name] = ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert common_name.value == "permafrost-webhook-ca"
    constraints = extension(ca_cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = extension(ca_cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    assert extension(ca_cert, x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(ca_cert.public_key())
    )


def test_certificates_are_valid_from_five_minutes_before_now(bundle: certs.Bundle) -> None:
    cert, ca_cert = load(bundle.cert), load(bundle.ca_cert)
    assert cert.not_valid_before_utc == NOW - datetime.timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + 365 * DAYS
    assert ca_cert.not_valid_before_utc == NOW - datetime.timedelta(minutes=5)
    assert ca_cert.not_valid_after_utc == NOW + 3650 * DAYS


def test_times_in_other_zones_are_taken_as_the_same_instant() -> None:
    tokyo = NOW.astimezone(datetime.timezone(datetime.timedelta(hours=9)))
    issued = certs.issue(hostnames=[SERVICE], now=tokyo, validity=10 * DAYS)
    assert certs.expires_at(issued.cert) == NOW + 10 * DAYS
    assert certs.expires_at(issued.cert).tzinfo == datetime.UTC


@pytest.mark.parametrize("field", ["ca_key", "key"])
def test_keys_are_unencrypted_pkcs8_ec_p256(bundle: certs.Bundle, field: str) -> None:
    pem: bytes = getattr(bundle, field)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, not "EC PRIVATE KEY"
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)


def test_a_given_ca_signs_and_is_kept_verbatim() -> None:
    ca = certs.new_ca(now=NOW, common_name="team-ca", validity=30 * DAYS)
    issued = certs.issue(hostnames=[SERVICE], now=NOW, ca=ca, validity=7 * DAYS)
    assert (issued.ca_cert, issued.ca_key) == ca
    load(issued.cert).verify_directly_issued_by(load(ca[0]))


def test_a_new_serving_key_is_made_every_time(bundle: certs.Bundle) -> None:
    again = certs.issue(hostnames=HOSTNAMES, now=NOW, ca=(bundle.ca_cert, bundle.ca_key))
    assert again.key != bundle.key
    assert load(again.cert).serial_number != load(bundle.cert).serial_number


@pytest.mark.parametrize(
    "hostnames",
    [[], SERVICE, [""], ["web example"], ["bücher.example"]],
    ids=["empty", "a-bare-string", "an-empty-name", "whitespace", "not-ascii"],
)
def test_issuing_for_no_or_bad_hostnames_is_an_error(hostnames: list[str]) -> None:
    with pytest.raises(certs.CertificateError):
        certs.issue(hostnames=hostnames, now=NOW)


def test_naive_times_are_an_error() -> None:
    with pytest.raises(certs.CertificateError, match="timezone-aware"):
        certs.issue(hostnames=[SERVICE], now=NOW.replace(tzinfo=None))


def test_a_ca_that_ends_before_the_certificate_would_is_refused() -> None:
    ca = certs.new_ca(now=NOW, validity=100 * DAYS)
    with pytest.raises(certs.CertificateError, match="CA expires at 2025-06-09"):
        certs.issue(hostnames=[SERVICE], now=NOW, ca=ca, validity=101 * DAYS)


def test_a_ca_whose_key_does_not_match_is_refused(bundle: certs.Bundle) -> None:
    ca_cert, _ = certs.new_ca(now=NOW)
    with pytest.raises(certs.CertificateError, match="does not match its key"):
        certs.issue(hostnames=[SERVICE], now=NOW, ca=(ca_cert, bundle.ca_key))


# --- a real TLS handshake ----------------------------------------------------------------------


def handshake(
    bundle: certs.Bundle,
    tmp_path: pathlib.Path,
    *,
    server_hostname: str,
    trusted_ca: bytes | None = None,
) -> bytes:
    """Serve ``bundle`` on one end of a socket pair to a client that trusts only ``trusted_ca``
    (default: the bundle's CA) and checks ``server_hostname``; what the server answered to ping.
    """
    certfile, keyfile = tmp_path / "tls.crt", tmp_path / "tls.key"
    certfile.write_bytes(bundle.cert)
    keyfile.write_bytes(bundle.key)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certfile, keyfile)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no system CAs; checks hostnames
    client_context.verify_flags |= ssl.VERIFY_X509_STRICT  # the default of Python 3.13 clients
    client_context.load_verify_locations(cadata=(trusted_ca or bundle.ca_cert).decode("ascii"))

    def serve(sock: socket.socket) -> None:
        try:
            with server_context.wrap_socket(sock, server_side=True) as tls:
                tls.sendall(b"pong" if tls.recv(4) == b"ping" else b"what")
        except OSError:  # NB: ssl.SSLError is an OSError; the client hung up on us
            pass

    client_sock, server_sock = socket.socketpair()
    client_sock.settimeout(5)
    server_sock.settimeout(5)
    with client_sock, server_sock, ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(serve, server_sock)
        with client_context.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
            tls.sendall(b"ping")
            return tls.recv(4)


@pytest.mark.parametrize("hostname", HOSTNAMES)
def test_a_client_that_trusts_only_the_ca_accepts_every_covered_name(
    live_bundle: certs.Bundle, tmp_path: pathlib.Path, hostname: str
) -> None:
    assert handshake(live_bundle, tmp_path, server_hostname=hostname) == b"pong"


@pytest.mark.parametrize(
    ("hostname", "error"),
    [
        ("other.permafrost-system.svc", "Hostname mismatch"),
        ("10.0.0.1", "IP address mismatch"),
    ],
)
def test_a_client_rejects_a_name_the_certificate_does_not_cover(
    live_bundle: certs.Bundle, tmp_path: pathlib.Path, hostname: str, error: str
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match=error):
        handshake(live_bundle, tmp_path, server_hostname=hostname)


def test_a_client_that_trusts_another_ca_rejects_the_certificate(
    live_bundle: certs.Bundle, other_bundle: certs.Bundle, tmp_path: pathlib.Path
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(live_bundle, tmp_path, server_hostname=SERVICE, trusted_ca=other_bundle.ca_cert)


# --- when to renew -----------------------------------------------------------------------------


def test_a_fresh_certificate_needs_no_renewal(bundle: certs.Bundle) -> None:
    assert certs.needs_renewal(bundle, hostnames=HOSTNAMES, now=NOW) is None
    # Fewer names, other spellings of the same names, and the clock skew are all fine.
    assert certs.needs_renewal(bundle, hostnames=[SERVICE.upper(), "0::1"], now=NOW) is None
    assert certs.needs_renewal(bundle, hostnames=[SERVICE], now=NOW - 4 * 60 * SECOND) is None


def test_a_certificate_needs_renewal_once_within_the_margin_of_its_expiry(
    bundle: certs.Bundle,
) -> None:
    renewal_due = NOW + 365 * DAYS - 30 * DAYS
    assert certs.needs_renewal(bundle, hostnames=HOSTNAMES, now=renewal_due - SECOND) is None
    assert certs.needs_renewal(bundle, hostnames=HOSTNAMES, now=renewal_due) == (
        "expires at 2026-03-01T12:00:00Z (within 30 days)"
    )
    assert (
        certs.needs_renewal(bundle, hostnames=HOSTNAMES, now=renewal_due, margin=7 * DAYS) is None
    )


def test_an_expired_certificate_needs_renewal(bundle: certs.Bundle) -> None:
    assert certs.needs_renewal(bundle, hostnames=HOSTNAMES, now=NOW + 400 * DAYS) == (
        "expired at 2026-03-01T12:00:00Z"
    )


def test_a_bundle_that_is_not_valid_yet_needs_renewal(bundle: certs.Bundle) -> None:
    reason = certs.needs_renewal(bundle, hostnames=HOSTNAMES, now=NOW - DAYS)
    assert reason == "CA is not valid until 2025-03-01T11:55:00Z"


def test_a_certificate_that_does_not_cover_a_hostname_needs_renewal(bundle: certs.Bundle) -> None:
    hostnames = [*HOSTNAMES, "permafrost-webhook.elsewhere.svc"]
    assert certs.needs_renewal(bundle, hostnames=hostnames, now=NOW) == (
        "does not cover hostname permafrost-webhook.elsewhere.svc"
    )
    assert certs.needs_renewal(bundle, hostnames=["10.0.0.1"], now=NOW) == (
        "does not cover hostname 10.0.0.1"
    )


def test_a_wildcard_covers_exactly_one_leftmost_label() -> None:
    issued = certs.issue(hostnames=["*.permafrost-system.svc"], now=NOW)

    def reason(hostname: str) -> str | None:
        return certs.needs_renewal(issued, hostnames=[hostname], now=NOW)

    assert reason("webhook.permafrost-system.svc") is None
    assert reason("*.permafrost-system.svc") is None
    assert reason("a.webhook.permafrost-system.svc") is not None
    assert reason("permafrost-system.svc") is not None


def test_a_certificate_from_another_ca_needs_renewal(
    bundle: certs.Bundle, other_bundle: certs.Bundle
) -> None:
    mixed = dataclasses.replace(bundle, cert=other_bundle.cert, key=other_bundle.key)
    assert certs.needs_renewal(mixed, hostnames=HOSTNAMES, now=NOW) == (
        "is not signed by the CA in the bundle"
    )


def test_a_certificate_with_the_key_of_another_needs_renewal(
    bundle: certs.Bundle, other_bundle: certs.Bundle
) -> None:
    mixed = dataclasses.replace(bundle, key=other_bundle.key)
    assert certs.needs_renewal(mixed, hostnames=HOSTNAMES, now=NOW) == "does not match its key"
    mixed = dataclasses.replace(bundle, ca_key=other_bundle.ca_key)
    assert certs.needs_renewal(mixed, hostnames=HOSTNAMES, now=NOW) == ("CA does not match its key")


def test_a_ca_near_its_end_needs_renewal() -> None:
    ca = certs.new_ca(now=NOW, validity=400 * DAYS)
    issued = certs.issue(hostnames=[SERVICE], now=NOW, ca=ca, validity=390 * DAYS)
    assert certs.needs_renewal(issued, hostnames=[SERVICE], now=NOW + 375 * DAYS) == (
        "CA expires at 2026-04-05T12:00:00Z (within 30 days)"
    )


@pytest.mark.parametrize("field", ["ca_cert", "ca_key", "cert", "key"])
def test_garbage_in_the_bundle_needs_renewal_as_unreadable(
    bundle: certs.Bundle, field: str
) -> None:
    garbled = dataclasses.replace(bundle, **{field: b"-----BEGIN garbage"})
    reason = certs.needs_renewal(garbled, hostnames=HOSTNAMES, now=NOW)
    assert reason is not None
    assert reason.startswith("unreadable: the ")


def test_asking_about_no_hostnames_is_an_error(bundle: certs.Bundle) -> None:
    with pytest.raises(certs.CertificateError, match="at least one hostname"):
        certs.needs_renewal(bundle, hostnames=[], now=NOW)


# --- renewal -----------------------------------------------------------------------------------


def test_renewing_keeps_a_ca_that_outlives_the_new_certificate(bundle: certs.Bundle) -> None:
    later = NOW + 340 * DAYS
    renewed = certs.renew(bundle, hostnames=HOSTNAMES, now=later)
    assert (renewed.ca_cert, renewed.ca_key) == (bundle.ca_cert, bundle.ca_key)
    assert renewed.key != bundle.key
    load(renewed.cert).verify_directly_issued_by(load(bundle.ca_cert))
    assert certs.expires_at(renewed.cert) == later + 365 * DAYS
    assert certs.needs_renewal(renewed, hostnames=HOSTNAMES, now=later) is None


def test_renewing_replaces_a_ca_near_its_end() -> None:
    ca = certs.new_ca(now=NOW, validity=400 * DAYS)
    issued = certs.issue(hostnames=[SERVICE], now=NOW, ca=ca)
    later = NOW + 340 * DAYS  # the CA has 60 days left, the new certificate needs 365
    renewed = certs.renew(issued, hostnames=[SERVICE], now=later)
    assert renewed.ca_cert != issued.ca_cert
    assert renewed.ca_key != issued.ca_key
    assert certs.expires_at(renewed.ca_cert) == later + 3650 * DAYS
    load(renewed.cert).verify_directly_issued_by(load(renewed.ca_cert))
    assert certs.needs_renewal(renewed, hostnames=[SERVICE], now=later) is None


@pytest.mark.parametrize(
    ("ca_validity", "kept"),
    [(700 * DAYS, False), (700 * DAYS + SECOND, True)],
    ids=["ends-with-the-new-certificate", "outlives-it-by-a-second"],
)
def test_renewing_keeps_the_ca_only_if_it_stays_valid_for_longer(
    ca_validity: datetime.timedelta, kept: bool
) -> None:
    ca = certs.new_ca(now=NOW, validity=ca_validity)
    issued = certs.issue(hostnames=[SERVICE], now=NOW, ca=ca)
    renewed = certs.renew(issued, hostnames=[SERVICE], now=NOW + 335 * DAYS)
    assert (renewed.ca_cert == issued.ca_cert) is kept


def test_renewing_replaces_an_unreadable_ca(bundle: certs.Bundle) -> None:
    garbled = dataclasses.replace(bundle, ca_key=b"garbage", cert=b"garbage")
    renewed = certs.renew(garbled, hostnames=HOSTNAMES, now=NOW)
    assert renewed.ca_cert != bundle.ca_cert
    assert certs.needs_renewal(renewed, hostnames=HOSTNAMES, now=NOW) is None


def test_renewing_covers_the_new_hostnames(bundle: certs.Bundle) -> None:
    hostnames = ["permafrost-webhook.elsewhere.svc", "10.0.0.1"]
    renewed = certs.renew(bundle, hostnames=hostnames, now=NOW)
    assert renewed.ca_cert == bundle.ca_cert
    assert certs.needs_renewal(renewed, hostnames=hostnames, now=NOW) is None


# --- the Secret --------------------------------------------------------------------------------


def test_the_secret_data_round_trips(bundle: certs.Bundle) -> None:
    data = bundle.to_secret_data()
    assert set(data) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert base64.b64decode(data["tls.crt"]) == bundle.cert
    assert base64.b64decode(data["ca.key"]) == bundle.ca_key
    assert certs.Bundle.from_secret_data({**data, "unrelated": "eA=="}) == bundle


@pytest.mark.parametrize("missing", ["ca.crt", "ca.key", "tls.crt", "tls.key"])
def test_a_missing_secret_key_is_named(bundle: certs.Bundle, missing: str) -> None:
    data = bundle.to_secret_data()
    del data[missing]
    with pytest.raises(certs.CertificateError, match=re.escape(f"no '{missing}'")):
        certs.Bundle.from_secret_data(data)


def test_every_missing_secret_key_is_named() -> None:
    with pytest.raises(certs.CertificateError) as caught:
        certs.Bundle.from_secret_data({"ca.crt": ""})
    assert str(caught.value) == "the Secret data has no 'ca.key', 'tls.crt', 'tls.key'"


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("tls.crt", "not base64!", "not valid base64"),
        ("ca.crt", base64.b64encode(b"hello").decode(), "not a PEM certificate"),
        ("tls.key", "", "not an unencrypted PEM private key"),
    ],
)
def test_a_bad_secret_value_is_named(
    bundle: certs.Bundle, key: str, value: str, error: str
) -> None:
    data = {**bundle.to_secret_data(), key: value}
    with pytest.raises(certs.CertificateError, match=re.escape(f"'{key}' is {error}")):
        certs.Bundle.from_secret_data(data)


def test_a_certificate_under_a_key_name_is_named(bundle: certs.Bundle) -> None:
    data = bundle.to_secret_data()
    data["ca.key"] = data["ca.crt"]
    with pytest.raises(certs.CertificateError, match=r"'ca\.key' is not an unencrypted PEM"):
        certs.Bundle.from_secret_data(data)


def test_a_tls_secret_without_the_ca_key_is_read_when_allowed(bundle: certs.Bundle) -> None:
    data = bundle.to_secret_data()
    del data["ca.key"]  # what cert-manager writes: ca.crt, tls.crt, tls.key
    read = certs.Bundle.from_secret_data(data, require_ca_key=False)
    assert read == dataclasses.replace(bundle, ca_key=b"")
    assert read.to_secret_data() == data
    assert certs.needs_renewal(read, hostnames=HOSTNAMES, now=NOW) is None
    assert certs.renew(read, hostnames=HOSTNAMES, now=NOW).ca_cert != bundle.ca_cert


def test_the_private_keys_stay_out_of_the_repr(bundle: certs.Bundle) -> None:
    text = repr(bundle)
    assert "PRIVATE KEY" not in text
    assert "ca_key" not in text
    assert "ca_cert=" in text


def test_expires_at_reads_the_end_of_validity(bundle: certs.Bundle) -> None:
    assert certs.expires_at(bundle.cert) == NOW + 365 * DAYS
    with pytest.raises(certs.CertificateError, match="not a PEM certificate"):
        certs.expires_at(b"garbage")
