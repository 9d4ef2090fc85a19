"""Webhook TLS material: a private CA and the serving certificate it signs.

The apiserver calls the admission webhooks over HTTPS and trusts them through the ``caBundle`` of
the webhook configuration. This module makes and checks that material with the ``cryptography``
package (not Kopf's self-signed helper: its ``oscrypto`` dependency does not load on OpenSSL 3).

It is pure: no files, no network, no Kubernetes client, and the time is always passed in as
``now`` (timezone-aware; every datetime returned is in UTC). The caller decides where the material
lives, typically a Secret shared by all replicas::

    bundle = Bundle.from_secret_data(secret["data"])  # or issue(...) the first time
    why = needs_renewal(bundle, hostnames=names, now=now)
    if why is not None:
        bundle = renew(bundle, hostnames=names, now=now)
        # store bundle.to_secret_data(); if bundle.ca_cert changed, update the caBundle too

Keys are EC P-256 and certificates are signed with ECDSA-SHA256: fast to make, and accepted by
Go's TLS stack (the apiserver) and OpenSSL alike. Certificate times have a resolution of one
second, so ``now`` is truncated to whole seconds throughout.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Final, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Keys of the Secret data (the last two are those of a kubernetes.io/tls Secret).
SECRET_CA_CERT: Final = "ca.crt"
SECRET_CA_KEY: Final = "ca.key"
SECRET_CERT: Final = "tls.crt"
SECRET_KEY: Final = "tls.key"
SECRET_KEYS: Final = (SECRET_CA_CERT, SECRET_CA_KEY, SECRET_CERT, SECRET_KEY)

DEFAULT_CA_COMMON_NAME: Final = "permafrost-webhook-ca"
DEFAULT_CA_VALIDITY: Final = datetime.timedelta(days=3650)
DEFAULT_VALIDITY: Final = datetime.timedelta(days=365)
DEFAULT_MARGIN: Final = datetime.timedelta(days=30)
# Certificates are valid from a little before "now", for peers whose clocks run behind.
CLOCK_SKEW: Final = datetime.timedelta(minutes=5)
_MAX_COMMON_NAME: Final = 64  # the upper bound of X.520 (RFC 5280); longer names do not encode

Host: TypeAlias = str | ipaddress.IPv4Address | ipaddress.IPv6Address
# Key types that can sign a certificate (and serve TLS); DSA is deliberately not among them.
_PrivateKey: TypeAlias = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
_PRIVATE_KEY_TYPES: Final = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


class CertificateError(ValueError):
    """TLS material that cannot be used or made: unreadable, inconsistent, or a bad request."""


@dataclasses.dataclass(frozen=True)
class Bundle:
    """The webhook's TLS material, all PEM-encoded; private keys are PKCS#8 and unencrypted.

    ``cert`` is the serving certificate, signed by the CA ``ca_cert``/``ca_key``; ``ca_cert``
    goes into the webhook configuration's ``caBundle``. ``ca_key`` is ``b""`` when the CA's key
    is not held (a Secret made by cert-manager, see :meth:`from_secret_data`); such a bundle
    cannot be renewed under the same CA. The private keys are left out of ``repr()``.
    """

    ca_cert: bytes
    ca_key: bytes = dataclasses.field(repr=False)
    cert: bytes
    key: bytes = dataclasses.field(repr=False)

    def to_secret_data(self) -> dict[str, str]:
        """The ``.data`` of a Kubernetes Secret: base64 of each PEM under ``ca.crt``, ``ca.key``,
        ``tls.crt`` and ``tls.key`` (``ca.key`` is left out when the bundle holds no CA key)."""
        values = {
            SECRET_CA_CERT: self.ca_cert,
            SECRET_CA_KEY: self.ca_key,
            SECRET_CERT: self.cert,
            SECRET_KEY: self.key,
        }
        return {
            name: base64.b64encode(value).decode("ascii")
            for name, value in values.items()
            if value or name != SECRET_CA_KEY
        }

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str], *, require_ca_key: bool = True) -> Bundle:
        """The inverse of :meth:`to_secret_data`; other keys in ``data`` are ignored.

        Each value must be base64 of a PEM certificate (``ca.crt``, ``tls.crt``) or of an
        unencrypted PEM private key (``ca.key``, ``tls.key``); only the first certificate of a
        chain is looked at. With ``require_ca_key=False`` a missing ``ca.key`` is allowed and
        gives ``ca_key=b""`` (a kubernetes.io/tls Secret from cert-manager has no CA key).

        Raises :class:`CertificateError` naming every missing key, or the first bad one and why.
        Whether the pieces fit together (key pairs, signature, dates) is :func:`needs_renewal`'s
        job, not this one's.
        """
        optional = () if require_ca_key else (SECRET_CA_KEY,)
        missing = [name for name in SECRET_KEYS if name not in data and name not in optional]
        if missing:
            listed = ", ".join(repr(name) for name in missing)
            raise CertificateError(f"the Secret data has no {listed}")
        pems: dict[str, bytes] = {}
        for name in SECRET_KEYS:
            if name not in data:
                pems[name] = b""
                continue
            try:
                pem = base64.b64decode(data[name], validate=True)
            except (ValueError, TypeError) as exc:  # NB: binascii.Error is a ValueError
                raise CertificateError(
                    f"the Secret data {name!r} is not valid base64: {exc}"
                ) from exc
            if name in (SECRET_CA_CERT, SECRET_CERT):
                _load_cert(pem, f"the Secret data {name!r}")
            else:
                _load_key(pem, f"the Secret data {name!r}")
            pems[name] = pem
        return cls(
            ca_cert=pems[SECRET_CA_CERT],
            ca_key=pems[SECRET_CA_KEY],
            cert=pems[SECRET_CERT],
            key=pems[SECRET_KEY],
        )


def new_ca(
    *,
    now: datetime.datetime,
    common_name: str = DEFAULT_CA_COMMON_NAME,
    validity: datetime.timedelta = DEFAULT_CA_VALIDITY,
) -> tuple[bytes, bytes]:
    """A new self-signed CA: ``(cert_pem, key_pem)``, with a fresh EC P-256 key.

    The CA may sign end-entity certificates only (BasicConstraints CA=true, path length 0,
    critical; KeyUsage keyCertSign and cRLSign, critical) and carries a SubjectKeyIdentifier.
    It is valid from ``now`` minus :data:`CLOCK_SKEW` until ``now + validity``.

    Raises :class:`CertificateError` for a naive ``now``, a validity that is not positive, or a
    common name that is empty or longer than 64 characters.
    """
    now = _utc(now)
    _check_validity(validity)
    if not 1 <= len(common_name) <= _MAX_COMMON_NAME:
        raise CertificateError(
            f"the CA common name must have 1 to {_MAX_COMMON_NAME} characters: {common_name!r}"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
    )
    return _cert_pem(builder.sign(key, hashes.SHA256())), _key_pem(key)


def issue(
    *,
    hostnames: Sequence[str],
    now: datetime.datetime,
    ca: tuple[bytes, bytes] | None = None,
    validity: datetime.timedelta = DEFAULT_VALIDITY,
) -> Bundle:
    """A new serving certificate and key for ``hostnames``, signed by ``ca`` (or by a new CA).

    ``hostnames`` are DNS names or IP addresses (told apart with :mod:`ipaddress`); all of them
    go into the SubjectAlternativeName (DNS names lower-cased, duplicates dropped), and the first
    one, cut to 64 characters, is the common name. The certificate is for TLS servers only
    (ExtendedKeyUsage serverAuth; KeyUsage digitalSignature and keyEncipherment), names its
    issuer's key (AuthorityKeyIdentifier), and is valid from ``now`` minus :data:`CLOCK_SKEW`
    until ``now + validity``.

    ``ca`` is ``(cert_pem, key_pem)`` as made by :func:`new_ca`; when it is None, a new CA with
    the defaults of :func:`new_ca` (or as long a validity as the certificate's) is made too.

    Raises :class:`CertificateError` when ``hostnames`` is empty (or a bare string) or holds a
    name that is empty, not ASCII (use the IDNA form, ``xn--...``) or has whitespace; for a naive
    ``now`` or a validity that is not positive; and when ``ca`` is unreadable, its key does not
    match, it is not a CA, or it is not valid from ``now`` until the certificate expires (use
    :func:`renew` to replace such a CA).
    """
    hosts = _parse_hostnames(hostnames)
    now = _utc(now)
    _check_validity(validity)
    not_after = now + validity
    if ca is None:
        ca = new_ca(now=now, validity=max(DEFAULT_CA_VALIDITY, validity))
    ca_cert = _load_cert(ca[0], "the CA certificate")
    ca_key = _load_key(ca[1], "the CA key")
    problem = _ca_problem(ca_cert, ca_key) or _ca_validity_problem(
        ca_cert, now=now, until=not_after
    )
    if problem is not None:
        raise CertificateError(f"cannot sign with this CA: {problem}")

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName(host) if isinstance(host, str) else x509.IPAddress(host) for host in hosts
    ]
    common_name = hostnames[0][:_MAX_COMMON_NAME]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_authority_key_identifier(ca_cert, ca_key), critical=False)
    )
    return Bundle(
        ca_cert=ca[0], ca_key=ca[1], cert=_cert_pem(_sign(builder, ca_key)), key=_key_pem(key)
    )


def needs_renewal(
    bundle: Bundle,
    *,
    hostnames: Sequence[str],
    now: datetime.datetime,
    margin: datetime.timedelta = DEFAULT_MARGIN,
) -> str | None:
    """Why the serving certificate of ``bundle`` should be renewed at ``now``, or None if it is
    fine.

    The reason is a short phrase about the certificate, the first that applies of:

    - ``"unreadable: ..."``: a PEM in the bundle does not parse;
    - ``"does not match its key"`` / ``"CA does not match its key"``: a key pair is broken;
    - ``"CA is not a certificate authority"``: the CA lacks BasicConstraints CA=true;
    - ``"is not signed by the CA in the bundle"``;
    - ``"CA is not valid until ..."``, ``"CA expired at ..."``, or
      ``"CA expires at ... (within 30 days)"`` when less than ``margin`` is left;
    - the same three for the serving certificate itself (without ``"CA "``);
    - ``"does not cover hostname X"``: a requested name is not in its SubjectAlternativeName
      (a wildcard ``*.example.com`` covers ``a.example.com``; extra names do no harm).

    A bundle without a CA key (``ca_key == b""``) is checked all the same, bar that key.
    :func:`renew` fixes every reason, as long as ``margin`` is shorter than the validity of the
    certificates it makes. Raises :class:`CertificateError` only for a bad request: empty or
    invalid ``hostnames``, a naive ``now``, or a negative ``margin``.
    """
    wanted = _parse_hostnames(hostnames)
    now = _utc(now)
    if margin < datetime.timedelta(0):
        raise CertificateError(f"the renewal margin must not be negative: {margin}")
    try:
        ca_cert = _load_cert(bundle.ca_cert, "the CA certificate")
        ca_key = _load_key(bundle.ca_key, "the CA key") if bundle.ca_key else None
        cert = _load_cert(bundle.cert, "the certificate")
        key = _load_key(bundle.key, "the key")
        dns_names, ip_addresses = _subject_alternative_names(cert)
        if not _same_public_key(key, cert):
            return "does not match its key"
        problem = _ca_problem(ca_cert, ca_key)
        if problem is not None:
            return problem
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature):
            return "is not signed by the CA in the bundle"
    except ValueError as exc:  # NB: CertificateError and malformed extensions alike
        return f"unreadable: {exc}"
    problem = _validity_problem(ca_cert, now=now, margin=margin)
    if problem is not None:
        return f"CA {problem}"
    problem = _validity_problem(cert, now=now, margin=margin)
    if problem is not None:
        return problem
    for host in wanted:
        if not _covers(host, dns_names=dns_names, ip_addresses=ip_addresses):
            return f"does not cover hostname {host}"
    return None


def renew(bundle: Bundle, *, hostnames: Sequence[str], now: datetime.datetime) -> Bundle:
    """A new serving certificate and key for ``hostnames``, valid for :data:`DEFAULT_VALIDITY`.

    It is signed by the CA of ``bundle`` when that CA is usable (readable, its key held and
    matching, a CA, valid at ``now``) and stays valid for longer than the new certificate;
    otherwise a new CA is made as well, and the caller must publish the new ``ca_cert`` (the
    webhook configuration's ``caBundle``). The old serving certificate is not looked at, so a
    garbled one is simply replaced. Raises :class:`CertificateError` as :func:`issue` does.
    """
    now = _utc(now)
    keep_ca = _can_sign(bundle, now=now, until=now + DEFAULT_VALIDITY)
    ca = (bundle.ca_cert, bundle.ca_key) if keep_ca else None
    return issue(hostnames=hostnames, now=now, ca=ca)


def expires_at(cert_pem: bytes) -> datetime.datetime:
    """When the (first) certificate in ``cert_pem`` expires, in UTC.

    Raises :class:`CertificateError` if ``cert_pem`` is not a PEM certificate.
    """
    return _load_cert(cert_pem, "the certificate").not_valid_after_utc


# --- helpers ----------------------------------------------------------------------------------


def _utc(now: datetime.datetime) -> datetime.datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise CertificateError(f"the time must be timezone-aware: {now.isoformat()}")
    return now.astimezone(datetime.UTC).replace(microsecond=0)


def _check_validity(validity: datetime.timedelta) -> None:
    if validity <= datetime.timedelta(0):
        raise CertificateError(f"the validity must be positive: {validity}")


def _format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _format_duration(duration: datetime.timedelta) -> str:
    if duration % datetime.timedelta(days=1):
        return str(duration)
    return "1 day" if duration.days == 1 else f"{duration.days} days"


def _parse_hostnames(hostnames: Sequence[str]) -> list[Host]:
    if isinstance(hostnames, str):
        raise CertificateError(f"hostnames must be a list of names, not a string: {hostnames!r}")
    hosts: list[Host] = []
    for name in hostnames:
        host = _parse_hostname(name)
        if host not in hosts:
            hosts.append(host)
    if not hosts:
        raise CertificateError("a certificate needs at least one hostname")
    return hosts


def _parse_hostname(name: str) -> Host:
    if (
        not isinstance(name, str)
        or not name
        or not name.isascii()
        or any(char.isspace() for char in name)
    ):
        raise CertificateError(
            f"not a hostname: {name!r} (a DNS name in ASCII, xn--... for IDNs, or an IP address)"
        )
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return name.lower()


def _covers(
    host: Host,
    *,
    dns_names: Sequence[str],
    ip_addresses: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> bool:
    if not isinstance(host, str):
        return host in ip_addresses
    for pattern in dns_names:
        if pattern == host:
            return True
        # A wildcard stands for exactly one whole label, the leftmost one (RFC 6125).
        if pattern.startswith("*.") and "." in host:
            label, rest = host.split(".", 1)
            if label and label != "*" and rest == pattern[2:]:
                return True
    return False


def _subject_alternative_names(
    cert: x509.Certificate,
) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    dns_names = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    ip_addresses = [
        address
        for address in san.get_values_for_type(x509.IPAddress)
        if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)
    ]
    return dns_names, ip_addresses


def _load_cert(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{what} is not a PEM certificate: {_brief(exc)}") from exc


def _load_key(pem: bytes, what: str) -> _PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateError(
            f"{what} is not an unencrypted PEM private key: {_brief(exc)}"
        ) from exc
    if not isinstance(key, _PRIVATE_KEY_TYPES):
        raise CertificateError(
            f"{what} is a {type(key).__name__}; supported are EC, RSA, Ed25519 and Ed448 keys"
        )
    return key


def _brief(exc: Exception) -> str:
    """The message of a parsing error, without cryptography's pointer to its FAQ."""
    return re.sub(r"\s*See https?://\S+ for more details\.", "", str(exc)) or type(exc).__name__


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: _PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_identifier(
    ca_cert: x509.Certificate, ca_key: _PrivateKey
) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _sign(builder: x509.CertificateBuilder, key: _PrivateKey) -> x509.Certificate:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return builder.sign(key, None)  # NB: EdDSA hashes internally
    return builder.sign(key, hashes.SHA256())


def _same_public_key(key: _PrivateKey, cert: x509.Certificate) -> bool:
    def spki(public_key: PublicKeyTypes) -> bytes:
        return public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    return spki(key.public_key()) == spki(cert.public_key())


def _ca_problem(ca_cert: x509.Certificate, ca_key: _PrivateKey | None) -> str | None:
    """What makes the CA unfit to sign, dates aside (a None key is not checked)."""
    if ca_key is not None and not _same_public_key(ca_key, ca_cert):
        return "CA does not match its key"
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return "CA is not a certificate authority (it has no BasicConstraints)"
    if not constraints.ca:
        return "CA is not a certificate authority (BasicConstraints CA is false)"
    return None


def _validity_problem(
    cert: x509.Certificate, *, now: datetime.datetime, margin: datetime.timedelta
) -> str | None:
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < not_before:
        return f"is not valid until {_format_time(not_before)}"
    if not_after <= now:
        return f"expired at {_format_time(not_after)}"
    if not_after - margin <= now:
        return f"expires at {_format_time(not_after)} (within {_format_duration(margin)})"
    return None


def _ca_validity_problem(
    ca_cert: x509.Certificate, *, now: datetime.datetime, until: datetime.datetime
) -> str | None:
    not_before, not_after = ca_cert.not_valid_before_utc, ca_cert.not_valid_after_utc
    if now < not_before:
        return f"CA is not valid until {_format_time(not_before)}"
    if not_after < until:
        return (
            f"CA expires at {_format_time(not_after)}, before the certificate would "
            f"({_format_time(until)})"
        )
    return None


def _can_sign(bundle: Bundle, *, now: datetime.datetime, until: datetime.datetime) -> bool:
    """Whether the CA of ``bundle`` can sign a certificate valid until (strictly) before its end."""
    if not bundle.ca_key:
        return False
    try:
        ca_cert = _load_cert(bundle.ca_cert, "the CA certificate")
        ca_key = _load_key(bundle.ca_key, "the CA key")
        if _ca_problem(ca_cert, ca_key) is not None:
            return False
    except ValueError:
        return False
    return ca_cert.not_valid_before_utc <= now and until < ca_cert.not_valid_after_utc
