"""A TouchFile passed to a multiprocessing worker (spawn): prints whether the
worker could take the lock while this process held it, then after release.
(tests/test_api.py::test_a_multiprocessing_worker_gets_a_working_copy)
argv: PATH."""

from __future__ import annotations

import multiprocessing
import sys

from touchfile import LockTimeout, TouchFile


def try_lock(tf: TouchFile) -> bool:
    try:
        tf.acquire(timeout=0)
    except LockTimeout:
        return False
    tf.close()
    return True


if __name__ == "__main__":
    with TouchFile(sys.argv[1]) as tf:
        tf.acquire()
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            print("held:", pool.apply(try_lock, (tf,)), flush=True)
            tf.release()
            print("free:", pool.apply(try_lock, (tf,)), flush=True)
