"""The registry every node trusts.

`registry.engine: harbor` (production): Harbor's offline installer, unpacked by the operator in
/opt/harbor on the harbor host; the deploy renders `harbor.yml` (TLS from our PKI, the admin and
database passwords generated once into `<state dir>/secrets/harbor.json`, 0600) and runs
`install.sh`. Without the installer the host fails, saying what to place where.
`registry.engine: distribution` (the lab): Debian's `docker-registry`, the registry engine inside
Harbor, serving TLS with a certificate from our PKI.

Every Kubernetes node gets the registry CA and `certs.d/<registry>/hosts.toml` for containerd
(`trust_registry`), and the registry name in /etc/hosts when DNS does not know it.
"""

from __future__ import annotations

import json
import secrets
import string
import threading
import time
from pathlib import Path

import httpx
from nornir.core.task import Result, Task

from nornir_k8sha import constants as C
from nornir_k8sha.checkresult import failed, passed
from nornir_k8sha.clients import registry_client
from nornir_k8sha.exceptions import DeployError
from nornir_k8sha.ociimage import MEDIA_MANIFEST, probe_image
from nornir_k8sha.render import SECRET_NAMES, files_for_component
from nornir_k8sha.statefiles import write_private
from nornir_k8sha.tasks import host as H
from nornir_k8sha.tasks.component import probe, upload_pki
from nornir_k8sha.topology import ClusterSpec

DISTRIBUTION_SERVICE = "docker-registry"
DISTRIBUTION_PACKAGE = "docker-registry"
HOSTS_MARK = "# k8sha registry"
#: Harbor's passwords in the state dir: `<state dir>/secrets/<this>`, keys = render.SECRET_NAMES.
HARBOR_SECRETS_FILE = "harbor.json"
#: Letters and digits only: the database password ends up in a connection string.
PASSWORD_ALPHABET = string.ascii_letters + string.digits
PASSWORD_LENGTH = 32
#: The installer can take minutes (it loads every Harbor image).
INSTALL_TIMEOUT_S = 1200

_secrets_lock = threading.Lock()


def harbor_secrets_path(state_dir: Path) -> Path:
    return state_dir / C.STATE_SECRETS_DIR / HARBOR_SECRETS_FILE


def _password() -> str:
    """Random, with a lower, an upper case letter and a digit (Harbor's password policy)."""
    while True:
        pw = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))
        if (any(c.islower() for c in pw) and any(c.isupper() for c in pw)
                and any(c.isdigit() for c in pw)):
            return pw


def harbor_secrets(state_dir: Path, *, save: bool = True) -> dict[str, str]:
    """Harbor's admin and database passwords: the saved ones, or new ones saved 0600 (with
    `save`; a dry run gets throw-away ones). Never regenerated: Harbor keeps the first ones in
    its database."""
    path = harbor_secrets_path(state_dir)
    with _secrets_lock:
        if not path.exists():
            fresh = {name: _password() for name in SECRET_NAMES}
            if not save or write_private(path, json.dumps(fresh, indent=2) + "\n",
                                         exclusive=True):
                return fresh
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise DeployError(f"{path}: cannot read Harbor's passwords ({exc})") from None
    missing = [n for n in SECRET_NAMES if not isinstance(saved.get(n), str) or not saved[n]]
    if missing:
        raise DeployError(f"{path}: no {', '.join(missing)}; restore the file (Harbor keeps the "
                          "passwords it was installed with)")
    return {n: saved[n] for n in SECRET_NAMES}


def configure_registry(
    task: Task, spec: ClusterSpec, state_dir: Path, *, dry_run: bool | None = None
) -> Result:
    """Harbor (`registry.engine: harbor`) or Distribution (the lab) on the harbor host."""
    H.honour_dry_run(task, dry_run)
    if spec.settings.registry.engine == "harbor":
        return _harbor(task, spec, state_dir)
    return _distribution(task, spec, state_dir)


def _harbor(task: Task, spec: ClusterSpec, state_dir: Path) -> Result:
    if H.connect(task).get(C.HARBOR_INSTALLER) is None:
        version = spec.settings.registry.harbor_version
        # raised, not returned: whatever the phase does next on this host must not run
        raise DeployError(
            f"Harbor's offline installer is not on {task.host.name}: unpack "
            f"harbor-offline-installer-v{version}.tgz (github.com/goharbor/harbor/releases) "
            f"into {C.HARBOR_DIR} so that {C.HARBOR_INSTALLER} exists, then deploy again; or "
            "set registry.engine: distribution in defaults.yaml for the plain registry")
    me = spec.host(task.host.name)
    passwords = harbor_secrets(state_dir, save=not task.is_dry_run())
    changed = upload_pki(task, spec, state_dir, under=C.REGISTRY_PKI_DIR)
    diffs = []
    for f in files_for_component(spec, me, "harbor", secrets=passwords):
        r = H.file(task, path=f.path, content=f.content, mode=f.mode, secret=f.secret or None)
        if r.changed:
            changed.append(f.path)
        if r.diff:
            diffs.append(r.diff)
    if changed and not task.is_dry_run():
        H.connect(task).run(f"cd {C.HARBOR_DIR} && ./install.sh", timeout=INSTALL_TIMEOUT_S)
    return Result(host=task.host, changed=bool(changed), diff="\n".join(diffs),
                  result="harbor")


def _distribution(task: Task, spec: ClusterSpec, state_dir: Path) -> Result:
    me = spec.host(task.host.name)
    changed = []
    probed = probe(task, [DISTRIBUTION_PACKAGE], [DISTRIBUTION_SERVICE])
    if H.packages(task, names=[DISTRIBUTION_PACKAGE], known=probed.packages).changed:
        changed.append(DISTRIBUTION_PACKAGE)
    # owned by the service user: its unit's ExecStartPre chowns them anyway
    changed += upload_pki(task, spec, state_dir, under=C.REGISTRY_PKI_DIR,
                          owner=f"{C.REGISTRY_USER}:{C.REGISTRY_USER}")
    for f in files_for_component(spec, me, "registry"):
        if H.file(task, path=f.path, content=f.content, mode=f.mode,
                  secret=f.secret or None).changed:
            changed.append(f.path)
    svc = H.service(task, name=DISTRIBUTION_SERVICE, restart_if_changed=bool(changed),
                    known=None if changed else probed.units[DISTRIBUTION_SERVICE])
    return Result(host=task.host, changed=bool(changed) or bool(svc.changed),
                  result="distribution registry")


def trust_registry(
    task: Task, spec: ClusterSpec, state_dir: Path, *, dry_run: bool | None = None
) -> Result:
    """Registry CA for containerd on a Kubernetes node, and the registry name in /etc/hosts.

    containerd's `certs.d/<registry>/hosts.toml` comes with the containerd component
    (`kubeadm.prepare_node`), so a changed registry restarts containerd in one place."""
    H.honour_dry_run(task, dry_run)
    changed = upload_pki(task, spec, state_dir, under=C.CONTAINERD_CERTS_DIR)
    registry = spec.settings.registry.name
    harbor = spec.role(C.ROLE_HARBOR)[0]
    line = f"{harbor.address} {registry} {HOSTS_MARK}"

    def with_registry(hosts: str) -> str:
        """Our line in, any older line of ours out; left as it is when our line is there."""
        if line in hosts.splitlines():
            return hosts
        kept = [ln for ln in hosts.splitlines() if not ln.endswith(HOSTS_MARK)]
        return "\n".join([*kept, line]) + "\n"

    if H.edit_file(task, path=C.ETC_HOSTS, edit=with_registry, backup=False).changed:
        changed.append(C.ETC_HOSTS)
    return Result(host=task.host, changed=bool(changed), result=", ".join(changed) or "trusted")


def probe_reference(spec: ClusterSpec) -> str:
    """The probe image as containerd names it: `<registry>/library/k8sha-probe:v1`."""
    return f"{spec.registry_host}/{C.PROBE_IMAGE_REPOSITORY}:{C.PROBE_IMAGE_TAG}"


def publish_probe_image(task: Task, spec: ClusterSpec, state_dir: Path, *,
                        dry_run: bool | None = None,
                        transport: httpx.BaseTransport | None = None) -> Result:
    """Push the probe image (ociimage.py) to this registry over its v2 API from here, TLS
    verified with the cluster's registry CA; unchanged when the tag already names it."""
    H.honour_dry_run(task, dry_run)
    image = probe_image(spec.name)
    me = spec.host(task.host.name)
    base = f"https://{me.address}:{spec.settings.registry.port}/v2/{C.PROBE_IMAGE_REPOSITORY}"
    manifest_url = f"{base}/manifests/{C.PROBE_IMAGE_TAG}"
    with registry_client(spec, state_dir, transport) as client:
        _wait_for_registry(client, f"https://{me.address}:{spec.settings.registry.port}/v2/")
        head = client.head(manifest_url, headers={"Accept": MEDIA_MANIFEST})
        if head.status_code == 200 and head.headers.get("Docker-Content-Digest") == image.digest:
            return Result(host=task.host, result=f"probe image {image.digest} present")
        if task.is_dry_run():
            return Result(host=task.host, changed=True,
                          result=f"would push the probe image {image.digest}")
        for blob_digest, blob in image.blobs():
            if client.head(f"{base}/blobs/{blob_digest}").status_code == 200:
                continue
            start = client.post(f"{base}/blobs/uploads/")
            _registry_ok(start, "start a blob upload")
            location = _upload_url(base, start.headers["Location"])
            done = client.put(location.copy_merge_params({"digest": blob_digest}), content=blob,
                              headers={"Content-Type": "application/octet-stream"})
            _registry_ok(done, f"upload blob {blob_digest}")
        put = client.put(manifest_url, content=image.manifest,
                         headers={"Content-Type": MEDIA_MANIFEST})
        _registry_ok(put, "push the probe manifest")
    return Result(host=task.host, changed=True, result=f"probe image {image.digest} pushed")


def _upload_url(base: str, location: str) -> httpx.URL:
    """The upload URL the registry gave, on the address we reached it by: a registry may answer
    with an absolute URL on its own name (docker-registry does), which DNS here may not know."""
    given = httpx.URL(base).join(location)
    return httpx.URL(base).copy_with(path=given.path, query=given.query or None)


def _wait_for_registry(client: httpx.Client, url: str, timeout: float = 15.0) -> None:
    """A registry restarted a moment ago: wait (bounded) until its API answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.get(url).status_code in (200, 401):
                return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            return  # it answers, just not as expected: the push says what is wrong
        time.sleep(0.2)


def _registry_ok(resp: httpx.Response, what: str) -> None:
    if resp.status_code not in (200, 201, 202):
        raise RuntimeError(f"registry refused to {what}: HTTP {resp.status_code} "
                           f"{resp.text.strip()[:200]}")


#: The registry probe from one node, in one exec channel: pull with the cluster's trust (must
#: work; ctr names the digest of the image it stored under the reference on its `unpacking
#: <platform> <digest>...` line, the digest `ctr image ls` would list: no third ctr process)
#: while a second pull resolves with no trust configured (must fail: TLS is really verified).
#: The refusal's exit status follows the pull's output on a last stdout line of its own.
#: `--debug`: ctr (containerd 1.6) then logs to stderr instead of drawing its progress display,
#: whose loop spins on a finished pull until its next 100 ms tick (perf: ctr's CPU in
#: runtime.selectgo under content.ShowProgress): a pull costs a lab node ~0.04 s of CPU instead
#: of ~0.11 s (issue 12.3). stdout keeps the `unpacking` line; a failure still ends stderr.
CTR = f"ctr --debug -n {C.CONTAINERD_K8S_NAMESPACE}"
#: A path on no node: the untrusted pull's hosts directory, the system roots' directory.
_NOWHERE = "/nonexistent"
#: Both pulls run with no system roots: the trusted pull then trusts the CA of
#: `certs.d/<registry>/hosts.toml` and nothing else, so a cluster CA that also sits in the
#: node's system store cannot stand in for a missing `ca` line, and the refusal shows that ctr
#: verifies the registry's certificate at all. It also spares each ctr parsing the ~140 system
#: CAs: 0.015 s of CPU per pull on a lab node. Go's crypto/x509 reads the system roots from
#: these two variables when they are set (root_unix.go): an empty file and a missing directory
#: leave the pool empty.
NO_SYSTEM_ROOTS = f"SSL_CERT_FILE=/dev/null SSL_CERT_DIR={_NOWHERE}"
UNTRUSTED_MARK = "k8sha-untrusted-exit"
_PROBE = ("{roots} {ctr} image pull --hosts-dir {nowhere} {ref} >/dev/null 2>&1 &\n"
          "{roots} {ctr} image pull --hosts-dir {hosts} {ref}; rc=$?\n"
          "wait $!; printf '\\n%s %s\\n' " + UNTRUSTED_MARK + " $?\n"
          "exit $rc")


def probe_command(spec: ClusterSpec) -> str:
    """The shell command of `check`: both pulls at once (the check lasts as long as the slower
    one), one exec channel."""
    return _PROBE.format(roots=NO_SYSTEM_ROOTS, ctr=CTR, nowhere=_NOWHERE,
                         hosts=C.CONTAINERD_CERTS_DIR, ref=probe_reference(spec))


def untrusted_exit(output: str) -> int | None:
    """The untrusted pull's exit status from the probe's stdout (None: it never reported)."""
    for line in reversed(output.splitlines()):
        words = line.split()
        if len(words) == 2 and words[0] == UNTRUSTED_MARK and words[1].lstrip("-").isdigit():
            return int(words[1])
    return None


def pulled_digest(output: str) -> str:
    """The digest `ctr image pull` stored the image under: its `unpacking linux/amd64
    sha256:<hex>...` line ('' when there is none: nothing was stored)."""
    for line in output.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "unpacking" and words[2].startswith("sha256:"):
            return words[2].rstrip(".")
    return ""


def check(task: Task, spec: ClusterSpec) -> Result:
    """containerd on this Kubernetes node pulls the probe image through `certs.d/<registry>`
    and the cluster's registry CA alone (the node's system store left out), and refuses the
    registry without that trust.

    `result` is a CheckResult with values digest (as pulled), expected (built here) and
    untrusted_refused. Read-only for the cluster (the probe image lands in containerd's store).
    """
    start = time.monotonic()
    ref = probe_reference(spec)
    expected = probe_image(spec.name).digest
    # two pulls of a one-layer image, a few probe timeouts at most
    pulled = H.probe_connection(task).run(probe_command(spec), check=False,
                                          timeout=3 * C.CHECK_TIMEOUT_S)
    got = pulled_digest(pulled.stdout)
    untrusted = untrusted_exit(pulled.stdout)
    refused = untrusted is not None and untrusted != 0
    values = {"reference": ref, "digest": got, "expected": expected,
              "untrusted_refused": refused}
    name = task.host.name
    if pulled.exit_code != 0:
        err = (pulled.stderr.strip().splitlines() or [f"exit {pulled.exit_code}"])[-1]
        res = failed(name, f"containerd cannot pull {ref}: {err[:200]}", start, **values)
    elif got != expected:
        res = failed(name, f"pulled {ref} but its digest is {got or '?'}, expected {expected}",
                     start, **values)
    elif untrusted is None:
        res = failed(name, "the pull without the cluster CA never reported its exit status",
                     start, **values)
    elif not refused:
        res = failed(name, f"{ref} also pulls without the cluster CA: TLS is not verified",
                     start, **values)
    else:
        res = passed(name, f"containerd pulled {ref} ({got[:19]}…) with the cluster CA; "
                     "refused without it", start, **values)
    return Result(host=task.host, result=res, failed=not res.ok)
