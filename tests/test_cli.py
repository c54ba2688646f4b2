"""The job entry point's process set-up: glibc's malloc keeps freed memory for the next step.
What that saves in page faults is measured by bench/page_faults.py (BENCHMARKS.md)."""

import os
import subprocess
import sys

import pytest

from tokendrift.core.utils import user_malloc_settings

# Tunes malloc as a job's start does; prints whether it applied and whether a 4 MiB block then
# got a fresh mmap (mallinfo2's hblkhd grows): it does under glibc's starting threshold (128 KiB,
# raised only as mmapped blocks are freed), not under the tuned one (32 MiB).
TUNE = """
import ctypes
from tokendrift.core.utils import tune_allocator
class M(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype, libc.malloc.restype = M, ctypes.c_void_p
applied = tune_allocator()
before = libc.mallinfo2().hblkhd
p = libc.malloc(4 << 20)
print(applied, libc.mallinfo2().hblkhd > before)
libc.free(ctypes.c_void_p(p))
"""


def tune(**env) -> tuple[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in user_malloc_settings()}
    out = subprocess.run([sys.executable, "-c", TUNE], capture_output=True, text=True, check=True, env={**clean, **env})
    applied, mmapped = out.stdout.split()
    return applied, mmapped


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_malloc_is_tuned_unless_the_user_tuned_it():
    assert tune() == ("True", "False")  # tuned: a 4 MiB block no longer gets its own mmap
    assert tune(MALLOC_ARENA_MAX="2") == ("False", "True")  # the user's malloc settings are left alone
    assert tune(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1") == ("False", "True")
