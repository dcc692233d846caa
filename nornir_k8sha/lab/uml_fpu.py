"""Start user-mode Linux on hosts whose CPU has AMX: hide the XSTATE regset from it.

Debian 12's UML (6.1) moves its guests' FPU state with PTRACE_GETREGSET/SETREGSET(NT_X86_XSTATE)
through a fixed-size buffer. The host kernel refuses a SETREGSET shorter than its full XSTATE
size (EFAULT), and with AMX (8 KiB of tile data) UML's buffer is shorter: every guest's init dies
with "ptrace set fp regs failed, errno = 14". When GETREGSET(NT_X86_XSTATE) fails at boot, UML
uses the FXSR regset (x87/SSE state) instead, which works on any x86-64 host. Run as a program
(`python3 uml_fpu.py linux ...`), this installs a seccomp filter that makes exactly that call fail
with EIO, allows everything else, and execs the command (same PID). Standard library only.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from pathlib import Path

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
AUDIT_ARCH_X86_64 = 0xC000003E
NR_PTRACE = 101
PTRACE_GETREGSET = 0x4204
NT_X86_XSTATE = 0x202
EIO = 5
# BPF opcodes and seccomp return values
LD_ABS_W, JEQ_K, RET_K = 0x20, 0x15, 0x06
ALLOW, ERRNO = 0x7FFF0000, 0x00050000


def needs_filter(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the host CPU has AMX (its XSTATE is larger than UML 6.1 can pass)."""
    try:
        return any(line.startswith("flags") and " amx_tile" in line
                   for line in cpuinfo.read_text().splitlines())
    except OSError:
        return False


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def program() -> bytes:
    """seccomp_data: nr at 0, arch at 4, args[0] at 16, args[2] at 32 (low words)."""
    return b"".join([
        _insn(LD_ABS_W, 4), _insn(JEQ_K, AUDIT_ARCH_X86_64, 0, 7),
        _insn(LD_ABS_W, 0), _insn(JEQ_K, NR_PTRACE, 0, 5),
        _insn(LD_ABS_W, 16), _insn(JEQ_K, PTRACE_GETREGSET, 0, 3),
        _insn(LD_ABS_W, 32), _insn(JEQ_K, NT_X86_XSTATE, 0, 1),
        _insn(RET_K, ERRNO | EIO), _insn(RET_K, ALLOW),
    ])


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> None:
    code = program()
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(code) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.prctl(
            PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter for user-mode Linux: {os.strerror(err)}")


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: uml_fpu.py COMMAND [ARG...]")
    install()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
