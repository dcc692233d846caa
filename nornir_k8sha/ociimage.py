"""The registry probe image: one small OCI image built here, byte for byte the same every time.

No image can be downloaded in a closed network, and none is needed to prove that every node's
containerd resolves and pulls through the cluster registry with the cluster's CA: one layer
holding one text file is enough. Built deterministically (gzip without a timestamp, tar entries
with fixed metadata), so its digest is known before any push and a second publish changes
nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import tarfile
from dataclasses import dataclass

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
#: Go's names for the machine architectures containerd matches an image config against.
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
          "s390x": "s390x", "riscv64": "riscv64"}


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class OCIImage:
    """The blobs of an image and its manifest, with their digests."""

    layer: bytes
    config: bytes
    manifest: bytes

    @property
    def digest(self) -> str:
        """The manifest digest: what containerd reports for a pulled image."""
        return digest(self.manifest)

    def blobs(self) -> list[tuple[str, bytes]]:
        return [(digest(self.layer), self.layer), (digest(self.config), self.config)]


def _layer(cluster: str) -> tuple[bytes, str]:
    """(gzipped tar, digest of the uncompressed tar = the config's diff_id)."""
    content = (f"nornir-k8sha registry probe of cluster {cluster}: pulled by containerd "
               "through the cluster registry and its CA.\n").encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("k8sha-probe.txt")
        info.size, info.mode, info.mtime = len(content), 0o644, 0
        tar.addfile(info, io.BytesIO(content))
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return packed.getvalue(), digest(raw.getvalue())


def probe_image(cluster: str, arch: str | None = None) -> OCIImage:
    """The probe image of `cluster` for `arch` (default: this machine's, as Go names it)."""
    arch = arch or GOARCH.get(platform.machine(), platform.machine())
    layer, diff_id = _layer(cluster)
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Labels": {"org.nornir-k8sha.probe": cluster}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }, sort_keys=True, separators=(",", ":")).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": digest(layer), "size": len(layer)}],
    }, sort_keys=True, separators=(",", ":")).encode()
    return OCIImage(layer, config, manifest)
