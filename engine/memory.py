"""glibc malloc settings for a process that makes the same large arrays every frame.

By default glibc hands big freed blocks back to the kernel: a block over the mmap threshold is
unmapped when freed, and the heap's top is trimmed once its free end passes the trim threshold.
A 512 px frame makes several 3 MB temporaries (positions, samples, the composite, the uint8
copy), so each frame faulted its memory in afresh: 2300-3300 minor page faults per PyTorch
render and conversion, which took 9.6-11.0 ms against 6.2-6.6 ms with the settings below
(`dreamtalk bench stages --sizes 512`; `tests/test_memory.py` counts the faults). Fixed
thresholds keep freed memory for the next frame: the process's resident size levels off at
its working set (7 MB more than before, `dreamtalk bench stream`) instead of following each
frame. ONNX Runtime allocates from its own arena and was not affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and return to it (glibc's ceiling for the value).
MMAP_THRESHOLD = 32 << 20
# Free memory at the heap's top that is kept rather than returned to the kernel.
TRIM_THRESHOLD = 256 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Set the thresholds (once per process). False, changing nothing, where the C library
    is not glibc (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no glibc mallopt here (%s): allocator left as it is", name)
        return False
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
    if not done:
        log.debug("mallopt refused the thresholds: allocator left as it is")
    return done
