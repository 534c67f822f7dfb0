"""Per-member temporary passwords: generation and parallel Argon2id hashing (issue 4)."""

from __future__ import annotations

import math
import threading
from typing import Any

import argon2
import pytest
from argon2.exceptions import HashingError
from argon2.profiles import CHEAPEST

from bulkreset import PasswordRules
from bulkreset._hashing import (
    ALPHABET,
    DEFAULT_LENGTH,
    MAX_LENGTH,
    MIN_LENGTH,
    available_cores,
    effective_workers,
    entropy_bits,
    generate_password,
    hash_many,
)
from bulkreset.errors import InvalidInputError

HASHER = argon2.PasswordHasher.from_parameters(CHEAPEST)
PASSWORDS = [f"Harbor {i} lanterns" for i in range(23)]


# generate_password


def test_alphabet_has_no_look_alikes_and_57_symbols() -> None:
    """The alphabet is letters and digits without 0 O 1 l I, each once."""
    assert 57 == len(ALPHABET) == len(set(ALPHABET))
    assert not set("0O1lI") & set(ALPHABET)
    assert ALPHABET.isascii()
    assert ALPHABET.isalnum()


def test_entropy_is_documented_bits() -> None:
    """20 symbols of 57 carry 116.7 bits; 16 symbols 93.3."""
    assert 116.7 == round(entropy_bits(), 1) == round(DEFAULT_LENGTH * math.log2(57), 1)
    assert 93.3 == round(entropy_bits(MIN_LENGTH), 1)


def test_default_password_is_four_groups_of_five() -> None:
    """By default: 20 symbols from the alphabet in groups of 5 joined by '-'."""
    password = generate_password()
    groups = password.split("-")
    assert 23 == len(password)
    assert [5, 5, 5, 5] == [len(group) for group in groups]
    assert set("".join(groups)) <= set(ALPHABET)


@pytest.mark.parametrize(
    ("length", "group", "expected"),
    [(16, 0, 16), (16, 4, 19), (17, 5, 20), (MAX_LENGTH, 8, MAX_LENGTH + 15), (20, 25, 20)],
)
def test_length_and_grouping(length: int, group: int, expected: int) -> None:
    """length counts random symbols; separators come between whole groups only."""
    password = generate_password(length, group=group)
    assert expected == len(password)
    assert length == len(password.replace("-", ""))
    assert not password.startswith("-")
    assert not password.endswith("-")


def test_passwords_are_unique_and_pass_the_default_rules() -> None:
    """2,000 samples: all distinct, all accepted by PasswordRules(), none formula-like."""
    rules = PasswordRules()
    samples = [generate_password() for _ in range(1000)]
    samples += [generate_password(MIN_LENGTH, group=0) for _ in range(1000)]
    assert len(samples) == len(set(samples))
    for password in samples:
        assert () == rules.violations(password)
        assert password[0] in ALPHABET


def test_symbols_are_spread_over_the_whole_alphabet() -> None:
    """Every symbol shows up, none wildly over-represented (a coarse uniformity check)."""
    text = "".join(generate_password(MAX_LENGTH, group=0) for _ in range(200))
    counts = {symbol: text.count(symbol) for symbol in ALPHABET}
    expected = len(text) / len(ALPHABET)  # about 449
    assert len(text) == sum(counts.values())
    assert all(0.7 * expected < count < 1.3 * expected for count in counts.values())


@pytest.mark.parametrize(
    "arguments",
    [
        {"length": MIN_LENGTH - 1},
        {"length": MAX_LENGTH + 1},
        {"length": 0},
        {"length": 20.0},
        {"length": True},
        {"group": -1},
        {"group": 2.5},
    ],
)
def test_bad_generation_arguments_are_refused(arguments: dict[str, Any]) -> None:
    """Too short, too long, or non-integer lengths and groups raise InvalidInputError."""
    with pytest.raises(InvalidInputError):
        generate_password(**arguments)


# hash_many


@pytest.mark.parametrize("workers", [None, 1, 2, 3, 64])
def test_hashes_verify_in_order(workers: int | None) -> None:
    """Every hash is Argon2id and verifies against the password at the same index."""
    hashes = hash_many(PASSWORDS, hasher=HASHER, workers=workers)
    assert len(PASSWORDS) == len(hashes)
    for password, encoded in zip(PASSWORDS, hashes, strict=True):
        assert encoded.startswith("$argon2id$v=19$")
        assert HASHER.verify(encoded, password)
    with pytest.raises(argon2.exceptions.VerifyMismatchError):
        HASHER.verify(hashes[0], PASSWORDS[1])


def test_every_hash_has_its_own_salt() -> None:
    """Same password twice still gives two salts and two hashes (one salt per credential)."""
    hashes = hash_many(["Harbor 42 lanterns"] * 12, hasher=HASHER, workers=2)
    salts = {encoded.split("$")[4] for encoded in hashes}
    assert 12 == len(set(hashes)) == len(salts)


def test_hashes_use_the_hashers_parameters() -> None:
    """The PHC string carries the hasher's m, t and p; no rehash is needed."""
    hasher = argon2.PasswordHasher(time_cost=2, memory_cost=64, parallelism=2)
    for encoded in hash_many(["Harbor 42 lanterns", "Quiet 7 meadows"], hasher=hasher, workers=2):
        assert "$m=64,t=2,p=2$" in encoded
        assert not hasher.check_needs_rehash(encoded)


def test_passwords_are_nfkc_normalized_before_hashing() -> None:
    """A full-width password verifies with its NFKC form, like a single password does."""
    [encoded] = hash_many(["Ｈａｒｂｏｒ 42 lanterns"], hasher=HASHER)
    assert HASHER.verify(encoded, "Harbor 42 lanterns")


def test_empty_input_gives_an_empty_list() -> None:
    """No passwords: no hashes, no pool."""
    assert [] == hash_many([], hasher=HASHER)
    assert [] == hash_many((), hasher=HASHER, workers=2)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_invalid_workers_are_refused(workers: Any) -> None:
    """workers must be a whole number >= 1 (or None); checked before any hashing."""
    with pytest.raises(InvalidInputError):
        hash_many(PASSWORDS, hasher=HASHER, workers=workers)
    with pytest.raises(InvalidInputError):
        effective_workers(HASHER, workers)


class _RecordingHasher(argon2.PasswordHasher):
    """A cheap hasher that remembers which threads hashed."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1, hash_len=4, salt_len=8)
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        with self.lock:
            self.threads.add(threading.current_thread().name)
        return super().hash(password, salt=salt)


def test_one_worker_hashes_on_the_calling_thread() -> None:
    """workers=1 creates no pool: every hash runs on the caller's thread."""
    hasher = _RecordingHasher()
    hash_many(PASSWORDS, hasher=hasher, workers=1)
    assert {threading.current_thread().name} == hasher.threads


def test_several_workers_hash_on_pool_threads() -> None:
    """workers=2 hashes on the pool's threads, never on the caller's."""
    hasher = _RecordingHasher()
    hash_many(PASSWORDS, hasher=hasher, workers=2)
    assert hasher.threads
    assert all(name.startswith("bulkreset-hash") for name in hasher.threads)


def test_a_single_password_needs_no_pool() -> None:
    """One password is hashed on the caller's thread whatever the workers."""
    hasher = _RecordingHasher()
    hash_many(["Harbor 42 lanterns"], hasher=hasher, workers=4)
    assert {threading.current_thread().name} == hasher.threads


class _FailingHasher(argon2.PasswordHasher):
    """Fails on one password, as an out-of-memory Argon2 would."""

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        if password == "Harbor 5 lanterns":
            raise HashingError("out of memory")
        return super().hash(password, salt=salt)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_hashing_error_propagates(workers: int) -> None:
    """A failing hash raises out of hash_many, from the pool as without it."""
    hasher = _FailingHasher.from_parameters(CHEAPEST)
    with pytest.raises(HashingError):
        hash_many(PASSWORDS, hasher=hasher, workers=workers)


def test_a_single_string_is_not_a_sequence_of_passwords() -> None:
    """One string would be hashed character by character, so it is refused."""
    with pytest.raises(InvalidInputError):
        hash_many("Harbor 42 lanterns", hasher=HASHER)


def test_a_non_string_password_is_a_type_error() -> None:
    """A password that is not a string cannot be normalized."""
    with pytest.raises(TypeError):
        hash_many(["Harbor 42 lanterns", None], hasher=HASHER, workers=1)  # type: ignore[list-item]


# effective_workers


def test_default_workers_is_one_per_available_core() -> None:
    """None means one worker per core this process may use, whatever the lanes."""
    cores = available_cores()
    assert cores >= 1
    assert cores == effective_workers(HASHER)
    four_lanes = argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=max(4, cores))
    assert cores == effective_workers(four_lanes, None)


@pytest.mark.parametrize("workers", [1, 2, 7])
def test_explicit_workers_are_honoured(workers: int) -> None:
    """An explicit number is used as given, also for multi-lane hashers."""
    four_lanes = argon2.PasswordHasher(time_cost=1, memory_cost=64, parallelism=4)
    assert workers == effective_workers(HASHER, workers) == effective_workers(four_lanes, workers)
