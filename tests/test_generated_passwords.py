"""Per-member random temporary passwords (issue 4), over every shipped store."""

from __future__ import annotations

import csv
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from bulkreset import NoticeKind, Outcome, ResetMode, ResetPolicy, ResetService
from bulkreset._tokens import derive_password
from bulkreset.errors import InvalidInputError
from bulkreset.ports import EffectBatch

from .test_service import run, sent

TARGETS = ["m1", "m2", "m3"]


class Crash(BaseException):
    """Stands for the process being killed."""


LOGINS = {"m1": "Mina.Kim@corp.example", "m2": "jun@corp.example", "m3": "norecover@corp.example"}


def generated(**options: Any) -> ResetPolicy:
    return ResetPolicy(ResetMode.FORCE_CHANGE, generate_passwords=True, **options)


def test_each_target_gets_its_own_password_in_its_notice(service: ResetService) -> None:
    """Generated passwords: one per member, own salt, delivered only in that member's notice."""
    reachable = ["m1", "m2"]  # m3 has no personal email and no phone: no notice
    _, result = run(service, reachable, generated(deliver_password=True))
    assert 2 == result.count(Outcome.RESET)
    notices = {n.member_id: n for n in sent(service) if n.kind is NoticeKind.PASSWORD_RESET}
    passwords = {m: notices[m].password for m in reachable}
    assert 2 == len(set(passwords.values()))
    for member_id, password in passwords.items():
        assert password is not None
        assert 23 == len(password)  # 20 symbols in groups of 5
        auth = service.authenticate(LOGINS[member_id], password)
        assert (True, True) == (auth.ok, auth.must_change_password)
        assert not service.authenticate(LOGINS["m1" if member_id != "m1" else "m2"], password).ok
    credentials = service.store.get_credentials(reachable)
    assert 2 == len({c.password_hash for c in credentials.values()})  # one salt each
    assert {None} == {c.shared_plan_id for c in credentials.values()}


def test_a_hand_off_file_is_owner_only_and_lists_every_reset(
    service: ResetService, tmp_path: Path
) -> None:
    """Without delivery in notices, a new 0600 hand-off file carries the passwords."""
    plan = service.plan([*TARGETS, "q1"], generated(), actor="admin")
    path = tmp_path / "handoff.csv"
    result = service.apply(plan, confirm=plan.confirmation, handoff=path)
    assert 3 == result.count(Outcome.RESET)
    assert 0o600 == stat.S_IMODE(os.stat(path).st_mode)
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert TARGETS == [r["member_id"] for r in rows]
    for row in rows:
        assert service.authenticate(row["login_id"], row["temporary_password"]).ok
    assert all(n.password is None for n in sent(service))


def test_generated_passwords_need_a_way_to_reach_members(
    service: ResetService, tmp_path: Path
) -> None:
    """No delivery and no hand-off file, or an existing file: refused before any change."""
    plan = service.plan(TARGETS, generated(), actor="admin")
    with pytest.raises(InvalidInputError, match="hand-off"):
        service.apply(plan, confirm=plan.confirmation)
    taken = tmp_path / "taken.csv"
    taken.write_text("keep me", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="already exists"):
        service.apply(plan, confirm=plan.confirmation, handoff=taken)
    with pytest.raises(InvalidInputError, match="no directory"):
        service.apply(plan, confirm=plan.confirmation, handoff=tmp_path / "no" / "h.csv")
    assert "keep me" == taken.read_text(encoding="utf-8")
    assert {} == service.store.get_credentials(TARGETS)
    shared = service.plan(
        TARGETS, ResetPolicy(ResetMode.FORCE_CHANGE, new_password="Harbor 42 lanterns"),
        actor="admin",
    )  # fmt: skip
    with pytest.raises(InvalidInputError, match="generate"):
        service.apply(shared, confirm=shared.confirmation, handoff=tmp_path / "h.csv")


def test_a_resumed_apply_delivers_the_password_it_set(service: ResetService) -> None:
    """Crash after the passwords were set, before the notices: the resend has the same ones."""
    store: Any = service.store
    real_commit = store.commit

    def crash_after_effects(batch: EffectBatch) -> None:
        real_commit(batch)
        if batch.credentials:
            raise Crash  # the process dies: no handler of the library runs

    plan = service.plan(TARGETS, generated(deliver_password=True), actor="admin")
    store.commit = crash_after_effects
    with pytest.raises(Crash):
        service.apply(plan, confirm=plan.confirmation)
    store.commit = real_commit
    assert [] == sent(service)
    service.apply(plan, confirm=plan.confirmation)
    for notice in sent(service):
        assert notice.password is not None
        assert service.authenticate(LOGINS[notice.member_id], notice.password).ok


def test_policy_options_for_generated_passwords_are_checked() -> None:
    """generate_passwords is force-only and excludes a shared password."""
    with pytest.raises(InvalidInputError):
        ResetPolicy(ResetMode.FORCE_CHANGE, generate_passwords=True, new_password="x" * 20)
    with pytest.raises(InvalidInputError):
        ResetPolicy(ResetMode.REQUEST_CHANGE, generate_passwords=True)
    with pytest.raises(InvalidInputError):
        ResetPolicy(ResetMode.FORCE_CHANGE)


def test_derived_passwords_are_uniform_strong_and_stable() -> None:
    """Derivation is deterministic per plan and member, and passes the password rules."""
    from bulkreset import PasswordRules
    from bulkreset._hashing import ALPHABET

    key = bytes(range(32))
    first = derive_password(key, "plan-1", "m1")
    assert first == derive_password(key, "plan-1", "m1")
    assert first != derive_password(key, "plan-1", "m2")
    assert first != derive_password(key, "plan-2", "m1")
    assert () == PasswordRules().violations(first)
    symbols = "".join(derive_password(key, "p", f"m{i}", group=0) for i in range(300))
    assert set(symbols) <= set(ALPHABET)
    assert len(set(symbols)) == len(ALPHABET)  # every symbol shows up
    assert 40 == len(derive_password(key, "p", "m", length=40, group=0))


def test_generated_password_progress_comes_in_small_steps(make_service: Any) -> None:
    """Hashing one password a member is slow: progress is reported every few members."""
    service = make_service(hash_workers=1)
    selection = [*TARGETS, "q1", "admin", "admin2"]
    plan = service.plan(selection, generated(deliver_password=True), actor="boss")
    seen: list[int] = []
    service.apply(plan, confirm=plan.confirmation, progress=lambda done, total: seen.append(done))
    assert [4, 5] == seen  # chunks of 4 * workers targets (q1 is excluded: no password)


def test_a_finished_plan_has_no_passwords_left_to_hand_over(
    service: ResetService, tmp_path: Path
) -> None:
    """Once handed over, a plan's key is erased: a second hand-off is refused, no file made."""
    plan = service.plan(TARGETS, generated(), actor="admin")
    service.apply(plan, confirm=plan.confirmation, handoff=tmp_path / "first.csv")
    assert service.store.load_plan(plan.plan_id).token_key is None  # type: ignore[union-attr]
    with pytest.raises(InvalidInputError, match="erased"):
        service.apply(plan, confirm=plan.confirmation, handoff=tmp_path / "second.csv")
    assert not (tmp_path / "second.csv").exists()


@pytest.mark.parametrize("name", ["x" * 300, "a\x00b", "/proc/handoff.csv"])
def test_an_uncreatable_hand_off_file_is_refused_before_any_change(
    service: ResetService, tmp_path: Path, name: str
) -> None:
    """A name too long, with a NUL, or in a place files cannot be made: refused, nothing reset."""
    plan = service.plan(TARGETS, generated(), actor="admin")
    path = name if name.startswith("/") else str(tmp_path / name)
    with pytest.raises(InvalidInputError):
        service.apply(plan, confirm=plan.confirmation, handoff=path)
    assert {} == service.store.get_credentials(TARGETS)
    assert ["plan.created"] == [e.action for e in service.audit_events()]


def test_precautions_of_generated_passwords_say_so(service: ResetService) -> None:
    """The administrator confirms against what will really happen."""
    plan = service.plan(TARGETS, generated(deliver_password=True), actor="admin")
    assert any("own random temporary password" in p for p in plan.precautions)
    assert any("temporary password will be sent" in p for p in plan.precautions)
    assert not any("the same new password" in p for p in plan.precautions)
