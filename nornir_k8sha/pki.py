"""The cluster's certificates and keys, made locally in the cluster state dir, idempotently.

Why local: kubeadm would mint the Kubernetes CAs on the first master it initialises; making them
here lets *any* master be initialised, lets `check` verify apiserver TLS with the cluster CA, and
keeps the external etcd's PKI (which kubeadm does not manage) in the same place.

Keys are ECDSA P-256 (fast to make: the lab's whole PKI takes a few tens of milliseconds; accepted
by etcd, kube-apiserver, kubeadm and containerd), written as SEC1 PEM like kubeadm's, signed with
SHA-256. CAs last CA_VALIDITY_DAYS, leaves LEAF_VALIDITY_DAYS (kubeadm's 10 years / 1 year).

Layout of `<state_dir>/pki/` (dirs 0700, keys 0600, certs 0644)::

    etcd/ca.crt|key                          etcd CA
    etcd/members/<host>/server.crt|key       per member: SANs name, localhost, IP, 127.0.0.1, ::1
    etcd/members/<host>/peer.crt|key         per member: SANs name, IP
    etcd/apiserver-etcd-client.crt|key       CN kube-apiserver-etcd-client (client auth)
    etcd/healthcheck-client.crt|key          CN kube-etcd-healthcheck-client (`check` -> /health)
    kubernetes/ca.crt|key                    cluster CA (kubeadm finds it on every master)
    kubernetes/front-proxy-ca.crt|key        front-proxy CA
    kubernetes/sa.key|sa.pub                 service-account signing key pair
    kubernetes/admin.crt|key                 CN kubernetes-admin, O system:masters (client auth)
    registry/ca.crt|key                      registry CA (every Kubernetes node trusts it)
    registry/server.crt|key                  SANs registry name, harbor hosts' names and IPs

Public API (other modules depend on it; keep it small and stable):

- `ClusterPKI(spec, state_dir=None)`; `.ensure() -> list[CertStatus]` creates what is missing and
  reuses the rest. A leaf is regenerated when its key or certificate is missing or unreadable, its
  key does not match, it was not signed by the current CA, or its subject/SANs/usages differ from
  what the inventory now asks for; it is renewed when it expires within RENEW_BEFORE_DAYS. A CA is
  never replaced silently: a half-present or unreadable CA raises PKIError, an expiring one is
  reported (`CertStatus.reason`, `expiry_report`). Certificates of etcd members gone from the
  inventory are deleted (action "removed"). A lock file (`pki/.lock`) serialises runs.
- Path helpers, each a `CertPaths(cert, key)`: `.etcd_ca`, `.etcd_server(host)`,
  `.etcd_peer(host)`, `.apiserver_etcd_client`, `.healthcheck_client`, `.kubernetes_ca`,
  `.front_proxy_ca`, `.sa` (cert = sa.pub), `.admin_client`, `.registry_ca`, `.registry_server`.
- `.renew(within_days)`: re-issue the leaves expiring within the window (`pki renew`).
- `reissue(cert_pem, ca)`, `days_left_of(cert_pem)`: a leaf another tool made under our CA
  (kubeadm's apiserver serving certificate) renewed like-for-like.
- `expiry_report(state_dir) -> list[CertExpiry]` for `check`.
- `bundle_for_host(spec, host, state_dir=None) -> list[BundleFile(local, remote, mode)]`: which
  files a host needs and where they go (paths from constants).
- `RENEW_BEFORE_DAYS`.

Errors raise `PKIError` naming the file. Private key material is never printed nor put in an
exception message.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any, Literal, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nornir_k8sha import constants as C
from nornir_k8sha.exceptions import PKIError
from nornir_k8sha.topology import ClusterSpec, HostSpec

#: Leaves expiring within this many days are renewed by `ensure()`; `check` warns below it.
RENEW_BEFORE_DAYS = C.CERT_RENEW_BEFORE_DAYS
CA_VALIDITY_DAYS = 3650
LEAF_VALIDITY_DAYS = 365
#: notBefore is set this far in the past so a host whose clock lags a little accepts the cert.
BACKDATE = timedelta(minutes=5)

LOCK_FILE = ".lock"
KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700

Action = Literal["created", "reused", "regenerated", "renewed", "removed"]
Usage = Literal["server", "client"]

_EKU = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_LOOPBACKS = (IPv4Address("127.0.0.1"), IPv6Address("::1"))


# --- public data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertPaths:
    """Where one certificate (or, for `.sa`, the public key) and its private key live."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CertStatus:
    """What `ensure()` did with one certificate (or the service-account key pair)."""

    name: str
    path: Path
    action: Action
    subject: str
    sans: tuple[str, ...]
    not_after: datetime | None
    is_ca: bool = False
    reason: str = ""

    @property
    def days_left(self) -> int | None:
        return _days_left(self.not_after) if self.not_after else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "action": self.action,
            "reason": self.reason,
            "subject": self.subject,
            "sans": list(self.sans),
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "days_left": self.days_left,
            "is_ca": self.is_ca,
        }


@dataclass(frozen=True)
class CertExpiry:
    """One certificate found in a state dir, for `check`."""

    name: str
    path: Path
    not_after: datetime
    days_left: int
    is_ca: bool


class BundleFile(NamedTuple):
    """A file a host needs: local source, absolute path on the host, mode."""

    local: Path
    remote: str
    mode: int


# --- what we want ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Want:
    """The desired shape of one certificate."""

    paths: CertPaths
    common_name: str
    organization: str | None = None
    usages: tuple[Usage, ...] = ()
    dns: tuple[str, ...] = ()
    ips: tuple[IPv4Address | IPv6Address, ...] = ()
    issuer: CertPaths | None = None  # None: a self-signed CA

    @property
    def subject(self) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, self.common_name)]
        if self.organization:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.organization))
        return x509.Name(attrs)

    @property
    def sans(self) -> tuple[str, ...]:
        return tuple(sorted({f"DNS:{d}" for d in self.dns} | {f"IP:{i}" for i in self.ips}))


@dataclass
class _CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    paths: CertPaths = field(repr=False)


def _days_left(not_after: datetime, now: datetime | None = None) -> int:
    return (not_after - (now or datetime.now(UTC))).days


# --- files -------------------------------------------------------------------------------------


def _mkdir(path: Path) -> None:
    """Create `path` and any missing parents 0700 (mkdir's mode skips parents); fix `path`."""
    try:
        for missing in [p for p in (path, *path.parents) if not p.exists()][::-1]:
            missing.mkdir(mode=DIR_MODE, exist_ok=True)
            missing.chmod(DIR_MODE)
        if path.stat().st_mode & 0o777 != DIR_MODE:
            path.chmod(DIR_MODE)
    except OSError as exc:
        raise PKIError(f"{path}: cannot create directory: {exc.strerror}") from None


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomic write with the mode set before any byte lands (a key is never world-readable)."""
    _mkdir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PKIError(f"{path}: cannot write: {exc.strerror}") from None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One `ensure()` at a time per state dir (a deploy and a `pki` run must not race on a CA)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, KEY_MODE)
    except OSError as exc:
        raise PKIError(f"{path}: cannot open lock: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fix_mode(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except OSError as exc:
        raise PKIError(f"{path}: cannot set mode {mode:o}: {exc.strerror}") from None


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        raise PKIError(f"{path}: not a readable PEM certificate") from None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Never let the parser's message (or the bytes) reach an exception."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        raise PKIError(f"{path}: not a readable unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{path}: not an ECDSA private key")
    return key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _pub_der(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# --- certificate facts -------------------------------------------------------------------------


def _cert_sans(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(sorted({f"DNS:{d}" for d in ext.get_values_for_type(x509.DNSName)}
                        | {f"IP:{i}" for i in ext.get_values_for_type(x509.IPAddress)}))


def _cert_usages(cert: x509.Certificate) -> frozenset[Any]:
    try:
        return frozenset(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return frozenset()


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issue(want: _Want, key: ec.EllipticCurvePrivateKey, ca: _CA | None, days: int,
           now: datetime) -> x509.Certificate:
    not_after = now + timedelta(days=days)
    if ca is not None:
        # A leaf never outlives its CA: clients would reject the chain at the CA's expiry anyway.
        not_after = min(not_after, ca.cert.not_valid_after_utc)
    signer = ca.key if ca else key
    issuer = ca.cert.subject if ca else want.subject
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(want.subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(ski, critical=False)
    )
    if ca is None:
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
        )
    else:
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([_EKU[u] for u in want.usages]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca.key.public_key()), critical=False)
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in want.dns]
        names += [x509.IPAddress(i) for i in want.ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


# --- the cluster PKI ---------------------------------------------------------------------------


def _host_name(host: HostSpec | str) -> str:
    name = host.name if isinstance(host, HostSpec) else str(host)
    if not _SAFE_NAME.match(name):
        raise PKIError(f"host name {name!r} cannot name a certificate directory")
    return name


class ClusterPKI:
    """The cluster's CAs and certificates under `<state_dir>/pki/`."""

    def __init__(self, spec: ClusterSpec, state_dir: Path | None = None, *,
                 leaf_days: int = LEAF_VALIDITY_DAYS, ca_days: int = CA_VALIDITY_DAYS) -> None:
        if leaf_days <= 0 or ca_days <= 0:
            raise ValueError("validity must be at least one day")
        self.spec = spec
        self.state_dir = Path(state_dir) if state_dir is not None else spec.state_dir
        self.root = self.state_dir / C.STATE_PKI_DIR
        self.leaf_days = leaf_days
        self.ca_days = ca_days

    # --- paths ---------------------------------------------------------------------------------

    def _pair(self, *parts: str) -> CertPaths:
        base = self.root.joinpath(*parts)
        return CertPaths(base.with_name(base.name + ".crt"), base.with_name(base.name + ".key"))

    @property
    def etcd_ca(self) -> CertPaths:
        return self._pair("etcd", "ca")

    def etcd_server(self, host: HostSpec | str) -> CertPaths:
        return self._pair("etcd", "members", _host_name(host), "server")

    def etcd_peer(self, host: HostSpec | str) -> CertPaths:
        return self._pair("etcd", "members", _host_name(host), "peer")

    @property
    def apiserver_etcd_client(self) -> CertPaths:
        return self._pair("etcd", "apiserver-etcd-client")

    @property
    def healthcheck_client(self) -> CertPaths:
        return self._pair("etcd", "healthcheck-client")

    @property
    def kubernetes_ca(self) -> CertPaths:
        return self._pair("kubernetes", "ca")

    @property
    def front_proxy_ca(self) -> CertPaths:
        return self._pair("kubernetes", "front-proxy-ca")

    @property
    def sa(self) -> CertPaths:
        """The service-account key pair: `.cert` is sa.pub, `.key` is sa.key."""
        return CertPaths(self.root / "kubernetes" / "sa.pub", self.root / "kubernetes" / "sa.key")

    @property
    def admin_client(self) -> CertPaths:
        return self._pair("kubernetes", "admin")

    @property
    def registry_ca(self) -> CertPaths:
        return self._pair("registry", "ca")

    @property
    def registry_server(self) -> CertPaths:
        return self._pair("registry", "server")

    def name_of(self, paths: CertPaths) -> str:
        """A short stable name: the path under pki/ without suffix (`etcd/members/etcd1/peer`)."""
        return paths.cert.relative_to(self.root).with_suffix("").as_posix()

    # --- the plan ------------------------------------------------------------------------------

    def _cas(self) -> list[_Want]:
        org = f"nornir-k8sha {self.spec.name}"
        return [
            _Want(self.etcd_ca, "etcd-ca", org),
            _Want(self.kubernetes_ca, "kubernetes", org),
            _Want(self.front_proxy_ca, "front-proxy-ca", org),
            _Want(self.registry_ca, "registry-ca", org),
        ]

    def _leaves(self) -> list[_Want]:
        both: tuple[Usage, ...] = ("server", "client")
        out = []
        for h in self.spec.role(C.ROLE_ETCD):
            # etcd's own gRPC gateway dials the member with the server cert: it needs client auth.
            out.append(_Want(self.etcd_server(h), h.name, usages=both, dns=(h.name, "localhost"),
                             ips=(h.address, *_LOOPBACKS), issuer=self.etcd_ca))
            out.append(_Want(self.etcd_peer(h), h.name, usages=both, dns=(h.name,),
                             ips=(h.address,), issuer=self.etcd_ca))
        out.append(_Want(self.apiserver_etcd_client, "kube-apiserver-etcd-client",
                         usages=("client",), issuer=self.etcd_ca))
        out.append(_Want(self.healthcheck_client, "kube-etcd-healthcheck-client",
                         usages=("client",), issuer=self.etcd_ca))
        out.append(_Want(self.admin_client, "kubernetes-admin", "system:masters",
                         usages=("client",), issuer=self.kubernetes_ca))
        registry = self.spec.settings.registry.name
        harbor = self.spec.role(C.ROLE_HARBOR)
        dns = tuple(dict.fromkeys([registry, *(h.name for h in harbor)]))
        out.append(_Want(self.registry_server, registry, usages=("server",), dns=dns,
                         ips=tuple(h.address for h in harbor), issuer=self.registry_ca))
        return out

    # --- ensure --------------------------------------------------------------------------------

    def ensure(self) -> list[CertStatus]:
        """Create what is missing, renew what expires, regenerate what changed; reuse the rest."""
        now = datetime.now(UTC)
        _mkdir(self.state_dir)
        _mkdir(self.root)
        statuses: list[CertStatus] = []
        with _locked(self.root / LOCK_FILE):
            cas: dict[Path, _CA] = {}
            for want in self._cas():
                ca, status = self._ensure_ca(want, now)
                cas[want.paths.cert] = ca
                statuses.append(status)
            for want in self._leaves():
                assert want.issuer is not None
                statuses.append(self._ensure_leaf(want, cas[want.issuer.cert], now))
            statuses.append(self._ensure_sa())
            statuses += self._prune_members()
        return statuses

    def renew(self, within_days: int, *, now: datetime | None = None,
              dry_run: bool = False) -> list[CertStatus]:
        """Re-issue every leaf that expires within `within_days` under its current CA: a new
        key, the same subject, SANs and usages (`pki renew`). CAs and the service-account pair
        are never touched; the rest is left alone. Returns the renewed leaves (with `dry_run`,
        those that would be, unchanged). PKIError when the PKI is not complete (run `pki`)."""
        now = now or datetime.now(UTC)
        out: list[CertStatus] = []
        if not self.root.is_dir():
            raise PKIError(f"{self.root}: missing; run `pki` or `deploy` first")
        with _locked(self.root / LOCK_FILE):
            cas: dict[Path, _CA] = {}
            for want in self._cas():
                if not want.paths.cert.exists():
                    raise PKIError(f"{want.paths.cert}: missing; run `pki` or `deploy` first")
                cas[want.paths.cert], _ = self._ensure_ca(want, now)
            for want in self._leaves():
                assert want.issuer is not None
                if not want.paths.cert.exists():
                    raise PKIError(f"{want.paths.cert}: missing; run `pki` or `deploy` first")
                old = _load_cert(want.paths.cert)
                days = _days_left(old.not_valid_after_utc, now)
                if days >= within_days:
                    continue
                reason = "expired" if days < 0 else f"expires in {days} days"
                if dry_run:
                    out.append(self._status(want, old, "reused", reason=reason))
                    continue
                ca = cas[want.issuer.cert]
                if ca.cert.not_valid_after_utc <= now:
                    raise PKIError(f"{ca.paths.cert}: CA expired; cannot renew "
                                   f"{want.paths.cert}: rotate the CA deliberately")
                cert, _ = self._store(want, ca, self.leaf_days, now)
                out.append(self._status(want, cert, "renewed", reason=reason))
        return out

    def _prune_members(self) -> list[CertStatus]:
        """Delete the certificates of etcd members gone from the inventory: left behind they
        would stay valid credentials and show up in every expiry report."""
        members = self.root / "etcd" / "members"
        if not members.is_dir():
            return []
        keep = {h.name for h in self.spec.role(C.ROLE_ETCD)}
        out = []
        for gone in sorted(d for d in members.iterdir() if d.is_dir() and d.name not in keep):
            out += [CertStatus(self.name_of(CertPaths(crt, crt)), crt, "removed", "", (), None,
                               reason="etcd member no longer in the inventory")
                    for crt in sorted(gone.glob("*.crt"))]
            try:
                shutil.rmtree(gone)
            except OSError as exc:
                raise PKIError(f"{gone}: cannot remove: {exc.strerror}") from None
        return out

    def _status(self, want: _Want, cert: x509.Certificate, action: Action, *, is_ca: bool = False,
                reason: str = "") -> CertStatus:
        return CertStatus(self.name_of(want.paths), want.paths.cert, action,
                          cert.subject.rfc4514_string(), _cert_sans(cert),
                          cert.not_valid_after_utc, is_ca, reason)

    def _store(self, want: _Want, ca: _CA | None, days: int, now: datetime
               ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = _new_key()
        cert = _issue(want, key, ca, days, now)
        _write(want.paths.key, _key_pem(key), KEY_MODE)
        _write(want.paths.cert, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)
        return cert, key

    def _ensure_ca(self, want: _Want, now: datetime) -> tuple[_CA, CertStatus]:
        """A CA is created once; afterwards it is only ever read (rotation is deliberate)."""
        p = want.paths
        has_cert, has_key = p.cert.exists(), p.key.exists()
        if not has_cert and not has_key:
            cert, key = self._store(want, None, self.ca_days, now)
            return _CA(cert, key, p), self._status(want, cert, "created", is_ca=True)
        if not (has_cert and has_key):
            present, missing = (p.cert, p.key) if has_cert else (p.key, p.cert)
            raise PKIError(
                f"{missing}: missing while {present} exists; a CA is never replaced silently: "
                f"restore it, or remove {present} as well to create a new CA (every certificate "
                "it signed is then re-issued)")
        cert, key = _load_cert(p.cert), _load_key(p.key)
        if _pub_der(cert.public_key()) != _pub_der(key.public_key()):
            raise PKIError(f"{p.key}: does not belong to {p.cert}")
        if not _is_ca(cert):
            raise PKIError(f"{p.cert}: is not a CA certificate")
        _fix_mode(p.key, KEY_MODE)
        days = _days_left(cert.not_valid_after_utc, now)
        reason = ""
        if days < RENEW_BEFORE_DAYS:
            reason = (f"CA {'expired' if days < 0 else f'expires in {days} days'}: rotate it "
                      "deliberately (every certificate under it changes)")
        return _CA(cert, key, p), self._status(want, cert, "reused", is_ca=True, reason=reason)

    def _leaf_verdict(self, want: _Want, ca: _CA, now: datetime) -> tuple[Action, str] | None:
        """Why this leaf must be (re)made, or None when it is reusable as it is."""
        p = want.paths
        has_cert, has_key = p.cert.exists(), p.key.exists()
        if not has_cert and not has_key:
            return "created", "new"
        if not has_key:
            return "regenerated", "key missing"
        if not has_cert:
            return "regenerated", "certificate missing"
        try:
            cert, key = _load_cert(p.cert), _load_key(p.key)
        except PKIError as exc:
            return "regenerated", str(exc).split(": ", 1)[-1]
        if _pub_der(cert.public_key()) != _pub_der(key.public_key()):
            return "regenerated", "key does not match the certificate"
        try:
            cert.verify_directly_issued_by(ca.cert)
        except (ValueError, TypeError, InvalidSignature):
            return "regenerated", "not signed by the current CA"
        if cert.subject != want.subject:
            return "regenerated", f"subject changed (was {cert.subject.rfc4514_string()})"
        have, wanted = set(_cert_sans(cert)), set(want.sans)
        if have != wanted:
            delta = [f"+{s}" for s in sorted(wanted - have)] + [f"-{s}" for s in
                                                                sorted(have - wanted)]
            return "regenerated", "SANs changed: " + " ".join(delta)
        if _cert_usages(cert) != frozenset(_EKU[u] for u in want.usages):
            return "regenerated", "key usages changed"
        not_after = cert.not_valid_after_utc
        days = _days_left(not_after, now)
        # Renewing under a CA that expires first gains nothing: the CA is reported instead.
        if days < RENEW_BEFORE_DAYS and not_after < ca.cert.not_valid_after_utc:
            return "renewed", "expired" if days < 0 else f"expires in {days} days"
        return None

    def _ensure_leaf(self, want: _Want, ca: _CA, now: datetime) -> CertStatus:
        verdict = self._leaf_verdict(want, ca, now)
        if verdict is None:
            _fix_mode(want.paths.key, KEY_MODE)
            return self._status(want, _load_cert(want.paths.cert), "reused")
        if ca.cert.not_valid_after_utc <= now:
            raise PKIError(f"{ca.paths.cert}: CA expired on {ca.cert.not_valid_after_utc:%Y-%m-%d}"
                           f"; cannot issue {want.paths.cert}: rotate the CA deliberately")
        action, reason = verdict
        cert, _ = self._store(want, ca, self.leaf_days, now)
        return self._status(want, cert, action, reason=reason)

    def _ensure_sa(self) -> CertStatus:
        """The service-account signing key pair: a key (0600) and its public half (0644)."""
        p = self.sa
        name = self.name_of(p)
        subject = "service-account signing key pair"
        if p.key.exists():
            try:
                key = _load_key(p.key)
            except PKIError as exc:
                raise PKIError(f"{exc}: every service-account token depends on it; restore it "
                               "or remove it to make a new pair") from None
            pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
            _fix_mode(p.key, KEY_MODE)
            if p.cert.exists() and p.cert.read_bytes() == pub:
                return CertStatus(name, p.cert, "reused", subject, (), None)
            _write(p.cert, pub, CERT_MODE)
            return CertStatus(name, p.cert, "regenerated", subject, (), None,
                              reason="public key rewritten from sa.key")
        action: Action = "regenerated" if p.cert.exists() else "created"
        key = _new_key()
        _write(p.key, _key_pem(key), KEY_MODE)
        _write(p.cert, key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
            CERT_MODE)
        return CertStatus(name, p.cert, action, subject, (), None,
                          reason="new" if action == "created" else "key missing")


# --- certificates made by someone else under our CA (kubeadm's apiserver serving cert) ----------


def days_left_of(cert_pem: bytes, now: datetime | None = None) -> int:
    """Days until a PEM certificate expires (PKIError when it is not one)."""
    return _days_left(_parse_pem(cert_pem).not_valid_after_utc, now)


def _parse_pem(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise PKIError("not a readable PEM certificate") from None


def reissue(cert_pem: bytes, ca: CertPaths, *, days: int = LEAF_VALIDITY_DAYS,
            now: datetime | None = None) -> tuple[bytes, bytes]:
    """A new key and certificate like `cert_pem` (its CN/O, SANs, usages), signed by `ca`:
    (certificate PEM, key PEM). For leaves our CA signs but another tool made (kubeadm's
    `apiserver.crt`); the key never leaves the caller but to its host."""
    old = _parse_pem(cert_pem)
    authority = _CA(_load_cert(ca.cert), _load_key(ca.key), ca)
    try:
        old.verify_directly_issued_by(authority.cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PKIError(f"{old.subject.rfc4514_string()}: not signed by {ca.cert}; "
                       "not renewed") from None
    cn = old.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    org = old.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    usages = _cert_usages(old)
    try:
        ext = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(ext.get_values_for_type(x509.DNSName))
        ips = tuple(ext.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    want = _Want(CertPaths(ca.cert, ca.key), str(cn[0].value) if cn else "",
                 str(org[0].value) if org else None,
                 usages=tuple(u for u, oid in _EKU.items() if oid in usages), dns=dns,
                 ips=ips, issuer=ca)
    key = _new_key()
    cert = _issue(want, key, authority, days, now or datetime.now(UTC))
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


# --- for check and deploy ----------------------------------------------------------------------


def expiry_report(state_dir: Path) -> list[CertExpiry]:
    """Every certificate under `<state_dir>/pki/` with its expiry; empty when there is no PKI."""
    root = Path(state_dir) / C.STATE_PKI_DIR
    if not root.is_dir():
        return []
    now = datetime.now(UTC)
    out = []
    for path in sorted(root.rglob("*.crt")):
        cert = _load_cert(path)
        not_after = cert.not_valid_after_utc
        out.append(CertExpiry(path.relative_to(root).with_suffix("").as_posix(), path,
                              not_after, _days_left(not_after, now), _is_ca(cert)))
    return out


def bundle_for_host(spec: ClusterSpec, host: HostSpec | str,
                    state_dir: Path | None = None) -> list[BundleFile]:
    """The PKI files `host` needs, by its roles: (local path, path on the host, mode).

    Raises PKIError naming the first missing local file (run `pki` first).
    """
    pki = ClusterPKI(spec, state_dir)
    name = host.name if isinstance(host, HostSpec) else str(host)
    try:
        me = spec.host(name)
    except KeyError:
        raise PKIError(f"host {name!r} is not in the inventory") from None
    files: list[BundleFile] = []

    def pair(paths: CertPaths, cert: str, key: str) -> None:
        files.append(BundleFile(paths.cert, cert, CERT_MODE))
        files.append(BundleFile(paths.key, key, KEY_MODE))

    if me.has_role(C.ROLE_ETCD):
        files.append(BundleFile(pki.etcd_ca.cert, C.ETCD_CA_CERT, CERT_MODE))
        pair(pki.etcd_server(me), C.ETCD_SERVER_CERT, C.ETCD_SERVER_KEY)
        pair(pki.etcd_peer(me), C.ETCD_PEER_CERT, C.ETCD_PEER_KEY)
    if me.has_role(C.ROLE_MASTERS):
        files.append(BundleFile(pki.etcd_ca.cert, C.APISERVER_ETCD_CA_CERT, CERT_MODE))
        pair(pki.apiserver_etcd_client, C.APISERVER_ETCD_CLIENT_CERT, C.APISERVER_ETCD_CLIENT_KEY)
        k8s = C.KUBERNETES_PKI_DIR
        pair(pki.kubernetes_ca, f"{k8s}/ca.crt", f"{k8s}/ca.key")
        pair(pki.front_proxy_ca, f"{k8s}/front-proxy-ca.crt", f"{k8s}/front-proxy-ca.key")
        pair(pki.sa, f"{k8s}/sa.pub", f"{k8s}/sa.key")
    if me.has_role(C.ROLE_HAPROXY):  # its apiserver health checks verify with the cluster CA
        files.append(BundleFile(pki.kubernetes_ca.cert, C.HAPROXY_KUBERNETES_CA, CERT_MODE))
    if me.has_role(C.ROLE_HARBOR):
        pair(pki.registry_server, C.REGISTRY_CERT, C.REGISTRY_KEY)
    if any(me.has_role(r) for r in C.KUBERNETES_ROLES):

        files.append(BundleFile(pki.registry_ca.cert, spec.registry_ca_on_node, CERT_MODE))
    for f in files:
        if not f.local.is_file():
            raise PKIError(f"{f.local}: missing; run `nornir-k8sha pki` (or deploy's pki phase) "
                           "first")
    return files


__all__ = [
    "RENEW_BEFORE_DAYS",
    "BundleFile",
    "CertExpiry",
    "CertPaths",
    "CertStatus",
    "ClusterPKI",
    "bundle_for_host",
    "days_left_of",
    "expiry_report",
    "reissue",
]
