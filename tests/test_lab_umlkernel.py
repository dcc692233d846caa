"""Choosing the directors' UML kernel, without root or network: fake binaries and fetches."""

from __future__ import annotations

from pathlib import Path

import pytest

from nornir_k8sha.exceptions import LabError
from nornir_k8sha.lab import rootfs, uml, umlkernel
from nornir_k8sha.lab.umlkernel import SelfTest, UmlKernel

FP_PANIC = (
    "userspace - ptrace set fp regs failed, errno = 14\n"
    "Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n"
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(rootfs, "CACHE_ROOT", tmp_path)
    monkeypatch.setattr(umlkernel.shutil, "which", lambda name: f"/usr/bin/{name}")
    return tmp_path


def _binary(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_judge_needs_the_marker_printed_by_init() -> None:
    ok = umlkernel.judge(f"Linux version 7.2\n{umlkernel.SELFTEST_MARKER}\nKernel panic - x\n")
    assert ok.ok
    bad = umlkernel.judge(FP_PANIC)
    assert not bad.ok and "ptrace set fp regs failed" in bad.detail
    # the marker inside the echoed kernel command line is not init running
    assert not umlkernel.judge(f"Kernel command line: init=/bin/echo {umlkernel.SELFTEST_MARKER}"
                               ).ok


def test_selftest_boots_a_read_only_hostfs_root_with_echo_as_init(tmp_path: Path) -> None:
    cmd = umlkernel.selftest_command(Path("/k/linux.uml"), tmp_path)
    assert cmd[0] == "/k/linux.uml"
    for arg in ("rootfstype=hostfs", "rootflags=/", "ro", "init=/bin/echo",
                umlkernel.SELFTEST_MARKER, f"uml_dir={tmp_path}"):
        assert arg in cmd


def test_the_verdict_is_cached_per_binary(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[Path] = []

    def fake_run(binary: Path) -> SelfTest:
        runs.append(binary)
        return SelfTest(binary.read_bytes() == b"good", "fake")

    monkeypatch.setattr(umlkernel, "run_selftest", fake_run)
    good = _binary(cache / "a/linux", b"good")
    assert umlkernel.selftest(good, print).ok
    assert umlkernel.selftest(good, print).ok
    assert runs == [good]
    good.write_bytes(b"bad")  # another binary at the same path: tested again
    assert not umlkernel.selftest(good, print).ok
    assert runs == [good, good]


def test_a_packaged_kernel_that_boots_in_seccomp_mode_is_kept_without_fetching(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = _binary(cache / "bin/linux", b"good")
    monkeypatch.setattr(uml, "packaged_binary", lambda: str(packaged))
    monkeypatch.setattr(umlkernel, "run_selftest",
                        lambda b: SelfTest(b.read_bytes() == b"good", "fake", seccomp=True))
    monkeypatch.setattr(umlkernel, "fetch", lambda suite, log: pytest.fail("fetched"))
    kernel = umlkernel.ensure_kernel(print)
    assert kernel.binary == packaged and kernel.modules == uml.PACKAGED_MODULES
    assert kernel.seccomp


def _seccomp_selftest(binary: Path) -> SelfTest:
    """Fake boots: b"ptrace" boots in ptrace mode only, b"seccomp" in seccomp mode."""
    content = binary.read_bytes()
    return SelfTest(content in (b"ptrace", b"seccomp"), "fake", content == b"seccomp")


def _fake_fetch(cache: Path, contents: dict[str, bytes], fetched: list[str]):  # noqa: ANN202
    """A fetch that unpacks `contents[suite]` where a real one would, or fails without it."""
    def fetch(suite: str, log: object) -> UmlKernel:
        fetched.append(suite)
        if suite not in contents:
            raise LabError(f"apt-get update from {suite} failed")
        target = cache / "uml" / f"{suite}-1"
        _binary(target / "kernel/usr/bin/linux.uml", contents[suite])
        (target / umlkernel.COMPLETE_MARK).write_text("{}\n")
        return umlkernel._unpacked(target)
    return fetch


def _ptrace_packaged_kernel(cache: Path, monkeypatch: pytest.MonkeyPatch,
                            suites: dict[str, bytes]) -> tuple[Path, list[str]]:
    """A packaged kernel that boots in ptrace mode only; fetches give `suites`' kernels."""
    packaged = _binary(cache / "bin/linux", b"ptrace")
    monkeypatch.setattr(uml, "packaged_binary", lambda: str(packaged))
    monkeypatch.setattr(umlkernel, "run_selftest", _seccomp_selftest)
    fetched: list[str] = []
    monkeypatch.setattr(umlkernel, "fetch", _fake_fetch(cache, suites, fetched))
    return packaged, fetched


def test_a_ptrace_only_packaged_kernel_gives_way_to_a_fetched_seccomp_one(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, fetched = _ptrace_packaged_kernel(cache, monkeypatch, {"sid": b"seccomp"})
    kernel = umlkernel.ensure_kernel(print)
    assert fetched == ["sid"] and kernel.seccomp and "sid-1" in str(kernel.binary)
    # the next `lab up` finds it among the fetched kernels: no download
    again = umlkernel.ensure_kernel(print)
    assert fetched == ["sid"] and again == kernel


def test_without_a_seccomp_kernel_the_ptrace_one_is_used_and_fetches_wait_a_day(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged, fetched = _ptrace_packaged_kernel(cache, monkeypatch, {})
    said: list[str] = []
    kernel = umlkernel.ensure_kernel(said.append)
    assert kernel.binary == packaged and not kernel.seccomp
    assert fetched == ["sid", "trixie"]
    assert "ptrace mode" in said[-1] and "apt-get update from sid failed" in said[-1]
    umlkernel.ensure_kernel(said.append)  # an offline machine does not wait on apt each time
    assert fetched == ["sid", "trixie"]
    later = umlkernel.time.time() + umlkernel.FETCH_RETRY_S + 60
    monkeypatch.setattr(umlkernel.time, "time", lambda: later)
    umlkernel.ensure_kernel(said.append)
    assert fetched == ["sid", "trixie", "sid", "trixie"]


def test_the_selftest_asks_for_seccomp_mode_and_reads_the_answer(tmp_path: Path) -> None:
    cmd = umlkernel.selftest_command(Path("/k/linux.uml"), tmp_path)
    assert uml.SECCOMP_ARG in cmd and "quiet" not in cmd
    boot = f"Checking syscall emulation for ptrace...OK\n{umlkernel.SELFTEST_MARKER}\n"
    assert not umlkernel.judge(boot).seccomp
    seccomp = umlkernel.judge(f"{umlkernel.SECCOMP_OK}\n{umlkernel.SELFTEST_MARKER}\n")
    assert seccomp.ok and seccomp.seccomp


def test_a_kernel_whose_seccomp_boot_fails_is_tried_in_ptrace_mode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    boots: list[bool] = []

    def fake_boot(binary: Path, seccomp: bool) -> SelfTest:
        boots.append(seccomp)
        return SelfTest(not seccomp, "fake", False)

    monkeypatch.setattr(umlkernel, "boot_once", fake_boot)
    result = umlkernel.run_selftest(Path("/k/linux.uml"))
    assert boots == [True, False] and result.ok and not result.seccomp
    assert uml.SECCOMP_ARG not in umlkernel.selftest_command(Path("/k"), Path("/u"), False)


def test_a_verdict_from_before_seccomp_was_asked_is_tested_again(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = _binary(cache / "a/linux", b"seccomp")
    key = f"{umlkernel.binary_digest(binary)}-{umlkernel.host_fingerprint()}"
    (cache / "uml-selftest.json").write_text(
        f'{{"{key}": {{"ok": true, "detail": "init ran", "binary": "{binary}"}}}}')
    monkeypatch.setattr(umlkernel, "run_selftest", _seccomp_selftest)
    assert umlkernel.selftest(binary, print).seccomp


def test_a_failing_packaged_kernel_is_replaced_by_the_first_suite_that_boots(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = _binary(cache / "bin/linux", b"bad-6.1")
    monkeypatch.setattr(uml, "packaged_binary", lambda: str(packaged))
    monkeypatch.setattr(umlkernel, "run_selftest",
                        lambda b: SelfTest(b.read_bytes() == b"good", "fake panic"))
    fetched: list[str] = []

    def fake_fetch(suite: str, log: object) -> UmlKernel:
        fetched.append(suite)
        if suite == "sid":
            raise LabError("apt-get update failed")
        binary = _binary(cache / f"uml/{suite}/linux.uml", b"good")
        return UmlKernel(binary, cache / f"uml/{suite}/modules", suite)

    monkeypatch.setattr(umlkernel, "fetch", fake_fetch)
    kernel = umlkernel.ensure_kernel(print)
    assert fetched == ["sid", "trixie"] and kernel.origin == "trixie"


def test_nothing_boots_names_every_attempt(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = _binary(cache / "bin/linux", b"bad")
    monkeypatch.setattr(uml, "packaged_binary", lambda: str(packaged))
    monkeypatch.setattr(umlkernel, "run_selftest",
                        lambda b: umlkernel.judge(FP_PANIC))

    def fake_fetch(suite: str, log: object) -> UmlKernel:
        binary = _binary(cache / f"uml/{suite}/linux.uml", suite.encode())
        return UmlKernel(binary, cache / f"uml/{suite}/modules", f"{suite} kernel")

    monkeypatch.setattr(umlkernel, "fetch", fake_fetch)
    with pytest.raises(LabError) as err:
        umlkernel.ensure_kernel(print)
    text = str(err.value)
    for tried in ("packaged user-mode-linux", "sid kernel", "trixie kernel",
                  "ptrace set fp regs failed"):
        assert tried in text


def test_fetching_uses_a_private_apt_config(tmp_path: Path) -> None:
    opts = umlkernel.apt_options(tmp_path)
    assert f"Dir::Etc::SourceList={tmp_path / 'sources.list'}" in opts
    assert "Dir::Etc::SourceParts=/dev/null" in opts
    assert f"Dir::State::Lists={tmp_path / 'lists'}" in opts
    assert not any("/etc/apt" in o for o in opts)


def test_the_rootfs_key_follows_the_uml_kernel_modules(tmp_path: Path) -> None:
    (tmp_path / "a/6.1.176").mkdir(parents=True)
    (tmp_path / "b/7.2.7").mkdir(parents=True)
    assert rootfs.cache_key(tmp_path / "a") != rootfs.cache_key(tmp_path / "b")
    assert rootfs.module_releases(tmp_path / "b") == ["7.2.7"]
