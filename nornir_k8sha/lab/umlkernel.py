"""Pick a user-mode Linux kernel that boots on this machine, fetching a newer one when needed.

Debian bookworm's `user-mode-linux` (6.1) and trixie's (6.12) panic at the first userspace
process on hosts whose CPU has AMX and whose kernel is recent (seen: 6.18): `userspace - ptrace
set fp regs failed, errno = 14` (the host's ptrace FP-register set is larger than old UML
kernels expect). sid's 7.x works. So the packaged kernel is kept when a quick self-test boots
it (hostfs root, `init=/bin/echo <marker>`, ~1 s; the verdict is cached per binary, host kernel
release and CPU flags); otherwise a newer `user-mode-linux` and the `libc6` it needs (glibc
newer than the host's) are downloaded from Debian's newer suites with a throw-away apt config
(never touching /etc/apt), unpacked into the cache and the binary patchelf'ed to run against
that libc (running it via `ld.so --library-path` makes UML miscompute its memory layout).

Among kernels that boot, one that runs its processes in **seccomp mode** (`seccomp=on`, UML
7.x) is preferred, fetching one when only a ptrace-mode kernel is at hand: in ptrace mode each
guest system call stops the guest for the UML kernel twice through the host's ptrace, and on a
VM whose context switches are dear the directors' `systemctl` calls were 2-4 times slower
(docs/lab.md, "UML kernel"). A fetch from a suite is tried at most once a day, so a machine
without Debian's mirror keeps its ptrace-mode kernel without waiting at every `lab up`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nornir_k8sha.exceptions import LabError
from nornir_k8sha.lab import rootfs, uml

#: Newer Debian suites to fetch a kernel from, best first.
FETCH_SUITES: tuple[str, ...] = ("sid", "trixie")
MIRROR = "http://deb.debian.org/debian"
PACKAGES: tuple[str, ...] = ("user-mode-linux", "libc6")
SELFTEST_MARKER = "k8sha-uml-selftest-ok"
SELFTEST_TIMEOUT = 30.0
COMPLETE_MARK = ".k8sha-uml-complete"
#: The known symptom, quoted in the error when the self-test fails with it.
FP_REGS_FAILURE = "ptrace set fp regs failed"
#: What a kernel prints at boot (without `quiet`) when its processes will run in seccomp mode.
SECCOMP_OK = "Checking that seccomp filters can be installed...OK"
#: A suite whose fetch was tried (whatever came of it) is not fetched again for this long.
FETCH_RETRY_S = 24 * 3600.0

Log = Callable[[str], None]


@dataclass(frozen=True)
class UmlKernel:
    """A UML kernel binary and the directory with its modules (`<release>/kernel/...`)."""

    binary: Path
    modules: Path
    origin: str
    #: Boot it with `uml.SECCOMP_ARG`: its self-test showed seccomp mode working here.
    seccomp: bool = False


@dataclass(frozen=True)
class SelfTest:
    ok: bool
    detail: str
    seccomp: bool = False


def cache_root() -> Path:
    # Read at call time: the cache root may be redirected (K8SHA_LAB_CACHE, bench).
    return rootfs.CACHE_ROOT


def packaged_kernel() -> UmlKernel | None:
    binary = uml.packaged_binary()
    if binary is None:
        return None
    return UmlKernel(Path(binary), uml.PACKAGED_MODULES, "Debian's packaged user-mode-linux")


def host_fingerprint() -> str:
    """What decides whether a UML binary boots here besides itself: host kernel and CPU."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return hashlib.sha256(f"{platform.release()}|{flags}".encode()).hexdigest()[:16]


def binary_digest(binary: Path) -> str:
    digest = hashlib.sha256()
    with open(binary, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def selftest_command(binary: Path, uml_dir: Path, seccomp: bool = True) -> list[str]:
    """Boot with the host's / as a read-only hostfs root; init prints the marker and exits.

    With `seccomp` it asks for seccomp mode; never `quiet`, so the output says whether it got it.
    """
    return [
        str(binary), *([uml.SECCOMP_ARG] if seccomp else []), "mem=64M",
        f"umid=k8sha-selftest-{os.getpid()}", f"uml_dir={uml_dir}", "root=/dev/root",
        "rootfstype=hostfs", "rootflags=/", "ro", "init=/bin/echo", SELFTEST_MARKER,
        "con=null", "con0=null,fd:1",
    ]


def judge(output: str) -> SelfTest:
    """Passed when init ran and printed the marker as a line of its own."""
    lines = [line.strip() for line in output.splitlines()]
    if SELFTEST_MARKER in lines:
        seccomp = SECCOMP_OK in lines
        return SelfTest(True, "init ran" + (" in seccomp mode" if seccomp else ""), seccomp)
    for line in lines:
        if FP_REGS_FAILURE in line or "Kernel panic" in line:
            return SelfTest(False, line)
    tail = " | ".join(output.strip().splitlines()[-3:])
    return SelfTest(False, f"init never ran ({tail or 'no output'})")


def run_selftest(binary: Path) -> SelfTest:
    """Boot the kernel asking for seccomp mode; when that boot fails, once more without it (a
    kernel with seccomp mode on a host that refuses its filters may still run in ptrace mode)."""
    result = boot_once(binary, seccomp=True)
    return result if result.ok else boot_once(binary, seccomp=False)


def boot_once(binary: Path, seccomp: bool) -> SelfTest:
    """Boot the kernel once (~1 s). UML panics when init exits: expected, the marker decides."""
    with tempfile.TemporaryDirectory(prefix="k8sha-uml-selftest-") as tmp:
        try:
            proc = subprocess.Popen(
                selftest_command(binary, Path(tmp), seccomp), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )
        except OSError as exc:
            return SelfTest(False, f"cannot run: {exc}")
        try:
            out, _ = proc.communicate(timeout=SELFTEST_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            result = judge(out.decode(errors="replace"))
            return result if result.ok else SelfTest(
                False, f"no result in {SELFTEST_TIMEOUT:.0f} s")
        finally:
            try:  # UML's helper threads are processes of its group: none may outlive the test
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return judge(out.decode(errors="replace"))


def selftest(binary: Path, log: Log) -> SelfTest:
    """The cached verdict for this binary on this host, running the test when unknown."""
    cache = cache_root() / "uml-selftest.json"
    key = f"{binary_digest(binary)}-{host_fingerprint()}"
    verdicts = _read_json(cache)
    known = verdicts.get(key)
    if known is not None and "seccomp" in known:  # older verdicts did not ask for seccomp mode
        return SelfTest(bool(known["ok"]), str(known["detail"]), bool(known["seccomp"]))
    log(f"self-testing the UML kernel {binary}")
    result = run_selftest(binary)
    verdicts[key] = {"ok": result.ok, "detail": result.detail, "seccomp": result.seccomp,
                     "binary": str(binary)}
    _write_json(cache, verdicts)
    return result


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def _fetches_path() -> Path:
    return cache_root() / "uml-fetches.json"


def fetch_tried_recently(suite: str) -> bool:
    """Whether `suite` was fetched from (or tried) within `FETCH_RETRY_S`."""
    when = _read_json(_fetches_path()).get(suite)
    return isinstance(when, (int, float)) and 0 <= time.time() - when < FETCH_RETRY_S


def remember_fetch(suite: str) -> None:
    tried = _read_json(_fetches_path())
    tried[suite] = time.time()
    _write_json(_fetches_path(), tried)


def fetched_kernels() -> list[UmlKernel]:
    """Kernels unpacked by earlier fetches, newest unpack first."""
    root = cache_root() / "uml"
    if not root.is_dir():
        return []
    dirs = [d for d in root.iterdir() if (d / COMPLETE_MARK).is_file()]
    dirs.sort(key=lambda d: (d / COMPLETE_MARK).stat().st_mtime, reverse=True)
    return [_unpacked(d) for d in dirs]


def _unpacked(version_dir: Path) -> UmlKernel:
    return UmlKernel(version_dir / "kernel/usr/bin/linux.uml",
                     version_dir / "kernel/usr/lib/uml/modules",
                     f"user-mode-linux {version_dir.name} (fetched)")


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise LabError(f"`{' '.join(cmd[:2])} ... {cmd[-1]}` failed (exit {proc.returncode}): "
                       f"{tail}")
    return proc


def apt_options(aptdir: Path) -> list[str]:
    """A private apt config: its own sources, lists and cache; the system's stay untouched."""
    return [
        "-o", f"Dir::Etc::SourceList={aptdir / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={aptdir / 'lists'}",
        "-o", f"Dir::Cache={aptdir / 'cache'}",
        "-o", "APT::Sandbox::User=root",
    ]


def fetch(suite: str, log: Log) -> UmlKernel:
    """Download and unpack `suite`'s user-mode-linux + libc6; patchelf the binary onto that libc."""
    root = cache_root() / "uml"
    root.mkdir(parents=True, exist_ok=True)
    aptdir = Path(tempfile.mkdtemp(prefix=f".apt-{suite}-", dir=root))
    try:
        for sub in ("lists/partial", "cache/archives/partial", "debs"):
            (aptdir / sub).mkdir(parents=True)
        (aptdir / "sources.list").write_text(f"deb {MIRROR} {suite} main\n")
        opts = apt_options(aptdir)
        log(f"fetching user-mode-linux and libc6 from Debian {suite}")
        _run(["apt-get", *opts, "update", "-q"])
        _run(["apt-get", *opts, "download", *PACKAGES], cwd=aptdir / "debs")
        debs = {p: next((aptdir / "debs").glob(f"{p}_*.deb"), None) for p in PACKAGES}
        if not all(debs.values()):
            raise LabError(f"apt-get download from {suite} gave {sorted(os.listdir(aptdir))}")
        uml_deb, libc_deb = debs["user-mode-linux"], debs["libc6"]
        assert uml_deb and libc_deb
        version = _run(["dpkg-deb", "-f", str(uml_deb), "Version"]).stdout.strip()
        target = root / version
        if (target / COMPLETE_MARK).is_file():
            return _unpacked(target)
        shutil.rmtree(target, ignore_errors=True)
        build = aptdir / "unpacked"
        build.mkdir()
        _run(["dpkg-deb", "-x", str(uml_deb), str(build / "kernel")])
        _run(["dpkg-deb", "-x", str(libc_deb), str(build / "libc")])
        libc_version = _run(["dpkg-deb", "-f", str(libc_deb), "Version"]).stdout.strip()
        interpreter = target / "libc/usr/lib64/ld-linux-x86-64.so.2"
        libdir = target / "libc/usr/lib/x86_64-linux-gnu"
        _run(["patchelf", "--set-interpreter", str(interpreter), "--set-rpath", str(libdir),
              str(build / "kernel/usr/bin/linux.uml")])
        (build / COMPLETE_MARK).write_text(json.dumps(
            {"suite": suite, "user-mode-linux": version, "libc6": libc_version}) + "\n")
        build.rename(target)
        log(f"unpacked user-mode-linux {version} (libc6 {libc_version}) into {target}")
        return _unpacked(target)
    finally:
        shutil.rmtree(aptdir, ignore_errors=True)


def ensure_kernel(log: Log = print) -> UmlKernel:
    """The directors' kernel: the first that boots in seccomp mode, else the first that boots.

    Order: packaged, fetched before, fetched now (a suite at most once a day). A kernel that boots
    only in ptrace mode is kept as the fallback, and the log says why the directors are slower.
    """
    tried: list[str] = []
    fallback: UmlKernel | None = None
    candidates = [k for k in (packaged_kernel(),) if k] + fetched_kernels()

    def consider(kernel: UmlKernel) -> UmlKernel | None:
        nonlocal fallback
        result = selftest(kernel.binary, log)
        if result.ok and result.seccomp:
            return replace(kernel, seccomp=True)
        if result.ok:
            fallback = fallback or kernel
            tried.append(f"{kernel.origin} ({kernel.binary}): boots, in ptrace mode only")
        else:
            tried.append(f"{kernel.origin} ({kernel.binary}): {result.detail}")
        return None

    for kernel in candidates:
        if chosen := consider(kernel):
            return chosen
    if shutil.which("patchelf") is None:
        tried.append("fetching a newer kernel: patchelf is not installed (package patchelf)")
    else:
        for suite in FETCH_SUITES:
            if fetch_tried_recently(suite):
                tried.append(f"Debian {suite}: fetched or tried within the last "
                             f"{FETCH_RETRY_S / 3600:.0f} h (uml-fetches.json)")
                continue
            remember_fetch(suite)
            try:
                kernel = fetch(suite, log)
            except (LabError, OSError) as exc:
                tried.append(f"Debian {suite}: {exc}")
                continue
            if any(kernel.binary == c.binary for c in candidates):
                continue  # already tried above
            if chosen := consider(kernel):
                log(f"using {chosen.origin} in seccomp mode: {chosen.binary}")
                return chosen
    if fallback is not None:
        log(f"using {fallback.origin} in ptrace mode: the directors run 2-4x slower than in "
            "seccomp mode (no kernel with it could be had: " + "; ".join(tried) + ")")
        return fallback
    raise LabError(
        "no user-mode Linux kernel boots on this machine (the LVS directors need one; see "
        "docs/lab.md, 'UML kernel'). Tried:\n  " + "\n  ".join(tried or ["nothing installed"])
    )
