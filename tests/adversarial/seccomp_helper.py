"""Install a seccomp filter that fails given syscalls (x86-64) with an errno; child-side."""

import ctypes


class _Filter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Filter))]


NR = {
    "memfd_secret": 447,
    "ftruncate": 77,
    "mmap": 9,
    "madvise": 28,
    "mlock": 149,
    "mlock2": 325,
    "mprotect": 10,
}


def deny(rules: dict[str, int]) -> None:
    """rules: {syscall_name: errno}; optional ("mmap_shared", errno) denies mmap with MAP_SHARED."""
    ins = [(0x20, 0, 0, 0)]  # ld nr
    for name, err in rules.items():
        if name == "mmap_shared":
            # if nr == mmap: ld args[3] (flags, low word at offset 16+3*8) & MAP_SHARED -> errno
            ins += [
                (0x15, 0, 4, NR["mmap"]),
                (0x20, 0, 0, 40),
                (0x45, 0, 1, 0x01),
                (0x06, 0, 0, 0x00050000 | err),
                (0x20, 0, 0, 0),
            ]
        else:
            ins += [(0x15, 0, 1, NR[name]), (0x06, 0, 0, 0x00050000 | err)]
    ins.append((0x06, 0, 0, 0x7FFF0000))
    arr = (_Filter * len(ins))(*[_Filter(*i) for i in ins])
    prog = _Prog(len(ins), arr)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "no_new_privs")
    if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "seccomp")
