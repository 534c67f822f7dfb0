"""Per-member temporary passwords: generate them, and hash many at once across cores.

A policy with per-member random passwords (issue 4) gives every target its
own password, so a bulk reset costs one Argon2id hash per member instead of
one per plan. This module holds the two building blocks: a strong random
password (:func:`generate_password`) and a parallel hasher
(:func:`hash_many`) that keeps every core busy (SPEC §7: near-linear speed-up
from 1 to 2 cores).

Threads, not processes
----------------------

argon2-cffi releases the GIL while it hashes, so threads hash in parallel.
Measured on 2026-11-30 on the project's 2-vCPU machine ("Intel(R) Xeon(R)
Processor", x86-64 Linux, Python 3.11.7, argon2-cffi 25.1.0): 40 passwords
per run, 5 interleaved repeats, each run timed only while no other process
used the CPU, pool start-up included; median times, and the speed-up from 1
to 2 workers as the median of the paired per-repeat ratios::

    parameters                  loop     threads 1 / 2        processes 1 / 2
    t=2 m=19 MiB p=1 (OWASP)    0.860 s  0.862 / 0.447 1.92x  0.886 / 0.471 1.92x
    t=3 m=64 MiB p=4 (default)  4.044 s  3.953 / 3.528 1.12x  3.938 / 3.483 1.13x

    hash_many (this module)     workers 1 / 2
    t=2 m=19 MiB p=1 (OWASP)    0.856 / 0.459 s  1.85x (1.99x best of 5)
    t=3 m=64 MiB p=4 (default)  3.992 / 3.556 s  1.15x

Threads are as fast as processes (2 process workers took 1.03x the time of 2
threads with single-lane parameters, 0.99x with 4 lanes: noise), and they
need no pickling, no worker processes to start and no second interpreter,
and they work where ``fork`` is unavailable or unsafe; so :func:`hash_many`
uses a :class:`~concurrent.futures.ThreadPoolExecutor`. With single-lane
parameters 2 workers hash 1.85x to 1.99x as fast as 1 (target >= 1.8x,
SPEC §7). On a machine busy with other work the speed-up shrinks, as any
parallel speed-up does.

A pool also with multi-lane parameters
--------------------------------------

With argon2-cffi's default 4 lanes one hash already runs on several threads
(RFC 9106: ``p`` lanes computed in parallel, synchronized at the end of each
of the 4 slices of every pass), but on 2 cores one hash took 0.10 to 0.11 s
of wall time and only 0.15 to 0.16 s of CPU time (two quiet measurements of
10 and 20 hashes): the lanes wait for each other at every slice boundary, so
one hash keeps the 2 cores only 70 to 85 % busy. A pool of 2 fills
those gaps: it was 1.12x to 1.15x *faster* than hashing one at a time, never
slower. So :func:`effective_workers` keeps the pool whatever the hasher's
parallelism. Each hash in flight holds ``memory_cost`` KiB, so ``workers``
hashes need ``workers * memory_cost`` KiB at once (128 MiB for 2 workers at
the defaults).

Reproduce on another machine with ``python benchmarks/run.py --hashing``.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import argon2

from ._passwords import normalize_password
from .errors import InvalidInputError

__all__ = [
    "ALPHABET",
    "DEFAULT_LENGTH",
    "MAX_LENGTH",
    "MIN_LENGTH",
    "available_cores",
    "effective_workers",
    "entropy_bits",
    "generate_password",
    "hash_many",
]

ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
"""The 57 symbols of a generated password: ASCII letters and digits without
the look-alikes ``0``, ``O``, ``1``, ``l`` and ``I``, so that a password read
off a screen or a printout is typed right. log2(57) = 5.83 bits a symbol."""

DEFAULT_LENGTH = 20
"""Random symbols in a generated password by default: 116.7 bits of entropy."""

MIN_LENGTH = 16
"""Fewest random symbols :func:`generate_password` accepts: 93.3 bits."""

MAX_LENGTH = 128
"""Most random symbols :func:`generate_password` accepts (with separators it
stays well under :class:`~bulkreset.PasswordRules`' default maximum of 256)."""

_SEPARATOR = "-"
_CHUNK_MAX = 256
"""Most passwords one pool task hashes: bounds the tasks' number for huge
inputs while keeping enough tasks (4 a worker) to balance the load."""


def entropy_bits(length: int = DEFAULT_LENGTH) -> float:
    """The entropy of a password from :func:`generate_password`.

    Args:
        length: Random symbols in the password (separators add nothing).

    Returns:
        ``length * log2(57)`` bits: 93.3 for 16 symbols, 116.7 for 20.
    """
    return length * math.log2(len(ALPHABET))


def generate_password(length: int = DEFAULT_LENGTH, *, group: int = 5) -> str:
    """Return a strong random temporary password, for example ``Kq7fz-aT3Mx-9hRbw-e4NpY``.

    Every symbol is drawn independently and uniformly from :data:`ALPHABET`
    with :func:`secrets.choice` (the operating system's CSPRNG), so the
    password has exactly :func:`entropy_bits` bits of entropy: 116.7 bits by
    default, beyond the 112 bits NIST SP 800-131A asks of a key, so it is
    never worth guessing even against a fast hash. There are no composition
    rules (NIST SP 800-63B §3.1.1.2 advises against them; they only lower the
    entropy of random passwords). The password passes the default
    :class:`~bulkreset.PasswordRules`: it is ASCII (NFKC leaves it
    unchanged), at least 16 characters, without spaces or control
    characters, and never starts with a character a spreadsheet would run as
    a formula.

    Args:
        length: Random symbols, from :data:`MIN_LENGTH` (16) to
            :data:`MAX_LENGTH` (128); separators are not counted.
        group: Put a ``-`` between groups of this many symbols so the
            password is easier to read out and type (``0`` for none). The
            separators are fixed, so they add no entropy and take none away.

    Returns:
        The password: ``length`` symbols plus ``(length - 1) // group``
        separators (23 characters by default).

    Raises:
        InvalidInputError: ``length`` is out of range, or ``group`` is
            negative or not an integer.
    """
    if not _is_int(length) or not MIN_LENGTH <= length <= MAX_LENGTH:
        raise InvalidInputError(
            f"a generated password needs {MIN_LENGTH} to {MAX_LENGTH} symbols, got {length!r}"
        )
    if not _is_int(group) or group < 0:
        raise InvalidInputError(f"group must be a whole number >= 0, got {group!r}")
    symbols = "".join(secrets.choice(ALPHABET) for _ in range(length))
    if group == 0:
        return symbols
    return _SEPARATOR.join(symbols[i : i + group] for i in range(0, length, group))


def available_cores() -> int:
    """The number of CPU cores this process may run on (at least 1).

    The process's CPU affinity where the platform reports it (so a process
    pinned to 2 of 8 cores, or a container given 2 cores with ``--cpuset-cpus``,
    counts 2), else :func:`os.cpu_count`. On the reference machine both are 2.
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)  # pragma: no cover - platforms without affinity


def effective_workers(hasher: argon2.PasswordHasher, workers: int | None = None) -> int:
    """How many hashes :func:`hash_many` runs at once (``1``: no pool at all).

    Decided by measurement (see the module's notes): a pool of one worker a
    core is fastest for single-lane parameters (1.85x to 1.99x on 2 cores),
    and with multi-lane parameters (``hasher.parallelism`` >= cores, where
    one hash already spreads over the cores) the pool was still 1.12x to
    1.15x faster than hashing one at a time, never slower. So the hasher's
    parallelism does not lower the default; *hasher* is taken so that the
    decision stays in one place if a future measurement changes it.

    Args:
        hasher: The hasher that will be used.
        workers: Hashes at once, ``>= 1``; an explicit number is honoured
            as given. ``None``: one per available core
            (:func:`available_cores`).

    Returns:
        The number of workers, ``>= 1``.

    Raises:
        InvalidInputError: ``workers`` is not a whole number ``>= 1``.
    """
    if workers is None:
        return available_cores()
    if not _is_int(workers) or workers < 1:
        raise InvalidInputError(f"workers must be a whole number >= 1 or None, got {workers!r}")
    return workers


def hash_many(
    passwords: Sequence[str],
    *,
    hasher: argon2.PasswordHasher,
    workers: int | None = None,
) -> list[str]:
    """Hash *passwords* with Argon2id in parallel; return their PHC strings in order.

    Each password is NFKC-normalized first
    (:func:`~bulkreset._passwords.normalize_password`, NIST SP 800-63B
    §3.1.1.2), exactly as a single password is, and gets its own random salt
    (one salt per credential: NIST SP 800-63B §5.1.1.2, OWASP Password Storage
    Cheat Sheet). The work is split into contiguous chunks of at most 256
    passwords (about 4 a worker, to balance the load) run on a thread pool;
    argon2-cffi releases the GIL while hashing, so the threads use every core.
    With ``workers`` of 1, or a single password, no pool is created.

    Memory: each hash in flight holds ``hasher.memory_cost`` KiB, so up to
    ``workers * memory_cost`` KiB at once, plus the returned strings (about
    100 bytes each). Hash a huge selection a chunk at a time.

    Args:
        passwords: The passwords, as chosen or generated; never logged.
        hasher: The Argon2id hasher (shared by the threads: it is
            stateless). Its parameters should be at or above the OWASP
            Password Storage Cheat Sheet's Argon2id minimum (``time_cost=2,
            memory_cost=19456`` KiB, ``parallelism=1``) or RFC 9106's
            recommendations.
        workers: Hashes at once (see :func:`effective_workers`); ``None``:
            one per available core.

    Returns:
        One PHC string (``$argon2id$v=19$m=...,t=...,p=...$salt$hash``) per
        password, in the order of *passwords*; empty for no passwords.

    Raises:
        InvalidInputError: ``workers`` is not a whole number ``>= 1``, or
            *passwords* is a single string rather than a sequence of them.
        TypeError: a password is not a string.
        argon2.exceptions.HashingError: Argon2 failed (out of memory, for
            example); the tasks not yet started are cancelled.
    """
    if isinstance(passwords, str):
        raise InvalidInputError("hash_many takes a sequence of passwords, not one string")
    count = effective_workers(hasher, workers)
    total = len(passwords)
    if count == 1 or total <= 1:
        return [hasher.hash(normalize_password(password)) for password in passwords]
    size = min(_CHUNK_MAX, max(1, math.ceil(total / (count * 4))))
    chunks = [passwords[start : start + size] for start in range(0, total, size)]

    def hash_chunk(chunk: Sequence[str]) -> list[str]:
        return [hasher.hash(normalize_password(password)) for password in chunk]

    pool = ThreadPoolExecutor(
        max_workers=min(count, len(chunks)), thread_name_prefix="bulkreset-hash"
    )
    try:
        hashes: list[str] = []
        for part in pool.map(hash_chunk, chunks):
            hashes.extend(part)
        return hashes
    finally:
        # On an error (or Ctrl-C) do not start the chunks still queued.
        pool.shutdown(wait=True, cancel_futures=True)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
