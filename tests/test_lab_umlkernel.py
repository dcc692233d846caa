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


def test_a_packaged_kernel_that_boots_is_kept_without_fetching(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = _binary(cache / "bin/linux", b"good")
    monkeypatch.setattr(uml, "packaged_binary", lambda: str(packaged))
    monkeypatch.setattr(umlkernel, "run_selftest",
                        lambda b: SelfTest(b.read_bytes() == b"good", "fake"))
    monkeypatch.setattr(umlkernel, "fetch", lambda suite, log: pytest.fail("fetched"))
    kernel = umlkernel.ensure_kernel(print)
    assert kernel.binary == packaged and kernel.modules == uml.PACKAGED_MODULES


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
