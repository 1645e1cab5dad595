#!/usr/bin/env python3
"""Read or set the EEVDF slice (sched_attr.sched_runtime) of threads, for bench experiments.

    bench/slice.py get TID...
    bench/slice.py set NANOSECONDS TID...     (0 = the kernel's default slice)

Since Linux 6.12 a SCHED_OTHER thread may ask for its own slice (0.1-100 ms); a thread with a shorter
slice than the running one preempts it on wake-up (the scheduler feature PREEMPT_SHORT) instead of
waiting until the running thread's slice is used up. glibc has no wrapper for sched_setattr(2), and
util-linux's chrt only sets a slice from 2.41 on, hence ctypes. x86_64 syscall numbers.
"""
import ctypes
import struct
import sys

SYS_SCHED_SETATTR, SYS_SCHED_GETATTR = 314, 315
# struct sched_attr up to sched_period (SCHED_ATTR_SIZE_VER0 = 48 bytes).
LAYOUT = "IIQiIQQQ"
LIBC = ctypes.CDLL(None, use_errno=True)


def get(tid):
    buf = ctypes.create_string_buffer(56)
    if LIBC.syscall(SYS_SCHED_GETATTR, tid, buf, 56, 0) != 0:
        raise OSError(ctypes.get_errno(), f"sched_getattr({tid})")
    _, policy, _, nice, _, runtime, _, _ = struct.unpack_from(LAYOUT, buf.raw)
    return {"policy": policy, "nice": nice, "slice_ns": runtime}


def set_slice(tid, ns):
    cur = get(tid)
    attr = struct.pack(LAYOUT, 48, cur["policy"], 0, cur["nice"], 0, ns, 0, 0)
    buf = ctypes.create_string_buffer(attr, 48)
    if LIBC.syscall(SYS_SCHED_SETATTR, tid, buf, 0) != 0:
        raise OSError(ctypes.get_errno(), f"sched_setattr({tid})")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "get":
        for tid in sys.argv[2:]:
            print(tid, get(int(tid)))
    elif len(sys.argv) >= 4 and sys.argv[1] == "set":
        for tid in sys.argv[3:]:
            set_slice(int(tid), int(sys.argv[2]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
