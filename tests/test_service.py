"""The contract suite: ResetService behaviour over every shipped store (SPEC R1-R8, §3, §5).

Each test runs once per store (ids ``memory`` and ``sqlite``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import argon2
import pytest
from argon2.profiles import CHEAPEST

from bulkreset import (
    ALL,
    AuditEvent,
    ExclusionReason,
    Member,
    Notice,
    NoticeKind,
    Outcome,
    ResetMode,
    ResetPlan,
    ResetPolicy,
    ResetService,
    WarningKind,
)
from bulkreset.errors import (
    ApprovalRequiredError,
    AuthorizationError,
    ConfirmationError,
    InvalidCredentialsError,
    InvalidInputError,
    InvalidTokenError,
    PasswordPolicyError,
    PlanInProgressError,
    PlanNotFoundError,
    StalePlanError,
    TemporaryPasswordExpiredError,
)

from .conftest import FakeClock, ServiceFactory, directory, writes_fail_for

PW = "Harbor 42 lanterns"
OWN = "my own secret passphrase 7"
MEMBERS = ["m1", "m2", "m3", "q1", "p1", "s1", "boss", "admin", "nobody"]


def force(**options: Any) -> ResetPolicy:
    return ResetPolicy(ResetMode.FORCE_CHANGE, new_password=PW, **options)


def request(**options: Any) -> ResetPolicy:
    return ResetPolicy(ResetMode.REQUEST_CHANGE, **options)


def run(service: ResetService, selection: Any, policy: ResetPolicy, actor: str = "admin") -> Any:
    plan = service.plan(selection, policy, actor=actor)
    return plan, service.apply(plan, confirm=plan.confirmation)


def sent(service: ResetService) -> list[Notice]:
    notifier: Any = service.notifier
    return list(notifier.sent) if hasattr(notifier, "sent") else list(notifier.pending())


def tokens_of(service: ResetService) -> dict[str, str]:
    return {
        n.member_id: n.token
        for n in sent(service)
        if n.kind is NoticeKind.CHANGE_REQUEST and n.token is not None
    }


# --------------------------------------------------------------------- planning


def test_r7_plan_changes_nothing(service: ResetService) -> None:
    """R7: planning is a dry run: no credential, session, notice or effect event."""
    session = service.sessions.create("m1")  # type: ignore[attr-defined]
    plan = service.plan(MEMBERS, force(follow_with_request=True), actor="admin")
    assert {} == service.store.get_credentials(MEMBERS)
    assert [] == sent(service)
    assert service.sessions.is_active(session)  # type: ignore[attr-defined]
    assert ["plan.created"] == [e.action for e in service.audit_events()]
    assert plan == service.load_plan(plan.plan_id)


def test_r8_every_selected_id_is_reported_once_with_a_reason(service: ResetService) -> None:
    """R8: duplicates collapse, unknown IDs and non-resettable members are reported, never fatal."""
    plan = service.plan([*MEMBERS, "m1", "m1"], force(), actor="admin")
    assert ["m1", "m2", "m3"] == [m.member_id for m in plan.targets]
    assert {
        "q1": ExclusionReason.NO_PASSWORD,
        "p1": ExclusionReason.NOT_ACTIVATED,
        "s1": ExclusionReason.SUSPENDED,
        "boss": ExclusionReason.NOT_PERMITTED,
        "admin": ExclusionReason.ACTOR,
        "nobody": ExclusionReason.UNKNOWN_MEMBER,
    } == {e.member_id: e.reason for e in plan.excluded}
    result = service.apply(plan, confirm=plan.confirmation)
    assert sorted(set(MEMBERS)) == sorted(result.outcomes)
    assert 6 == result.count(Outcome.EXCLUDED)
    assert "no_password" == result.outcomes["q1"].reason
    assert "quick@corp.example" == result.outcomes["q1"].login_id
    assert "" == result.outcomes["nobody"].login_id


def test_all_selects_the_whole_directory(service: ResetService) -> None:
    """ALL selects every member; the actor is excluded by default, included on request."""
    plan = service.plan(ALL, request(), actor="admin")
    assert 9 == plan.selected
    assert ExclusionReason.ACTOR in {e.reason for e in plan.excluded}
    plan = service.plan(ALL, request(include_actor=True), actor="admin")
    assert "admin" in {m.member_id for m in plan.targets}


def test_r2_quick_login_members_get_change_requests(service: ResetService) -> None:
    """R2: a Quick Login member is excluded from force change but gets a change request."""
    plan = service.plan(["q1"], request(), actor="admin")
    assert ["q1"] == [m.member_id for m in plan.targets]


def test_r2_quick_login_member_with_a_password_can_be_forced(service: ResetService) -> None:
    """R2: a Quick Login member who registered a password is a force-change target."""
    service.set_password("q1", OWN)
    plan = service.plan(["q1"], force(), actor="admin")
    assert ["q1"] == [m.member_id for m in plan.targets]


@pytest.mark.parametrize("actor", ["m1", "nobody", "s1", "", "x" * 300, None])
def test_only_active_administrators_may_plan(service: ResetService, actor: Any) -> None:
    """A non-admin, unknown, suspended or malformed actor gets AuthorizationError."""
    with pytest.raises(AuthorizationError):
        service.plan(["m1"], request(), actor=actor)
    assert [] == service.audit_events()


def test_a_super_admin_may_reset_admins_and_super_admins(make_service: ServiceFactory) -> None:
    """NOT_PERMITTED applies only to an ADMIN acting on a SUPER_ADMIN."""
    service = make_service()
    plan = service.plan(["admin", "boss"], request(include_actor=True), actor="boss")
    assert ["admin", "boss"] == [m.member_id for m in plan.targets]


def test_a_bad_force_password_is_refused_and_nothing_is_kept(service: ResetService) -> None:
    """The shared password must pass the rules, incl. not equal to any target's login ID."""
    for password, violation in [
        ("password1234", "common_password"),
        ("shortpw", "too_short"),
        ("jun@corp.example", "same_as_login_id"),
        (PW + "\r", "control_character"),
    ]:
        policy = ResetPolicy(ResetMode.FORCE_CHANGE, new_password=password)
        with pytest.raises(PasswordPolicyError) as caught:
            service.plan(["m1", "m2"], policy, actor="admin")
        assert violation in caught.value.violations
        assert password not in str(caught.value)
    assert [] == service.audit_events()


@pytest.mark.parametrize("selection", ["m1", ["m1", 7], [b"m1"], ["m\x00"], None, 5])
def test_a_malformed_selection_is_refused(service: ResetService, selection: Any) -> None:
    """A bare string or a non-ID item is an InvalidInputError, and nothing is kept."""
    with pytest.raises(InvalidInputError):
        service.plan(selection, request(), actor="admin")
    assert [] == service.audit_events()


def test_policy_must_be_a_reset_policy(service: ResetService) -> None:
    """A policy of another type is an InvalidInputError."""
    with pytest.raises(InvalidInputError):
        service.plan(["m1"], {"mode": "force"}, actor="admin")  # type: ignore[arg-type]


def test_r5_targets_who_cannot_self_recover_are_flagged_and_counted(service: ResetService) -> None:
    """R5: a force plan warns per target with no mobile and no personal email, and counts them."""
    plan = service.plan(["m1", "m2", "m3"], force(), actor="admin")
    assert [("m3", WarningKind.CANNOT_SELF_RECOVER)] == [
        (w.member_id, w.kind) for w in plan.warnings
    ]
    assert any("1 target has no mobile phone" in p for p in plan.precautions)
    assert any("Deliver the new password" in p for p in plan.precautions)  # R4
    assert {WarningKind.CANNOT_SELF_RECOVER: 1} == plan.warning_counts()


def test_r6_request_plan_precautions_say_to_force_first(service: ResetService) -> None:
    """R6: a request plan's precautions say a request alone does not stop the old password."""
    plan = service.plan(["m1"], request(), actor="admin")
    assert any("force a change first" in p for p in plan.precautions)
    assert () == plan.warnings


def test_plan_html_and_repr_are_readable(service: ResetService) -> None:
    """Notebooks get a summary repr and HTML tables; member text is escaped."""
    service.store.add_members([Member("x1", "x1@corp.example", "<b>bold</b>")])  # type: ignore[attr-defined]
    plan = service.plan(["m1", "m3", "nobody", "x1"], force(), actor="admin")
    assert "3 target(s), 1 excluded, 2 warning(s)" in repr(plan)
    page = plan._repr_html_()
    assert "<table>" in page
    assert "unknown_member" in page
    assert PW not in page + repr(plan)
    assert {ExclusionReason.UNKNOWN_MEMBER: 1} == plan.exclusion_counts()


def test_load_plan_of_an_unknown_id_fails_clearly(service: ResetService) -> None:
    """load_plan raises PlanNotFoundError for IDs that are not plans."""
    for plan_id in ["plan-0000", "", "\ud800", 42]:
        with pytest.raises(PlanNotFoundError):
            service.load_plan(plan_id)  # type: ignore[arg-type]


# --------------------------------------------------------------------- force change


def test_r1_force_change_gives_every_target_the_same_password(service: ResetService) -> None:
    """R1: every target signs in with the one new password and must change it."""
    service.set_password("m1", OWN)
    _, result = run(service, ["m1", "m2", "m3"], force())
    assert 3 == result.count(Outcome.RESET)
    for login in ["mina.kim@corp.example", "JUN@corp.example", "norecover@corp.example"]:
        auth = service.authenticate(login, PW)
        assert auth.ok
        assert auth.must_change_password
    assert not service.authenticate("mina.kim@corp.example", OWN).ok


def test_force_change_stores_one_hash_per_plan(service: ResetService) -> None:
    """SPEC §5: the targets' credentials point to the plan's one shared credential."""
    plan, _ = run(service, ["m1", "m2", "m3"], force())
    credentials = service.store.get_credentials(["m1", "m2", "m3"])
    assert {plan.plan_id} == {c.shared_plan_id for c in credentials.values()}
    assert 1 == len({c.password_hash for c in credentials.values()})
    assert all(c.password_hash.startswith("$argon2id$") for c in credentials.values())


def test_force_change_can_skip_the_must_change_flag(service: ResetService) -> None:
    """require_change_at_next_login=False leaves the flag off."""
    run(service, ["m1"], force(require_change_at_next_login=False))
    assert not service.authenticate("mina.kim@corp.example", PW).must_change_password


def test_r3_sessions_before_the_change_end(service: ResetService, clock: FakeClock) -> None:
    """R3: sessions issued before a force change end; the not-before check agrees."""
    before = service.sessions.create("m1")  # type: ignore[attr-defined]
    other = service.sessions.create("m2")  # type: ignore[attr-defined]
    issued = clock()
    clock.advance(1)
    _, result = run(service, ["m1"], force())
    assert result.outcomes["m1"].sessions_revoked
    assert not service.sessions.is_active(before)  # type: ignore[attr-defined]
    assert service.sessions.is_active(other)  # type: ignore[attr-defined]
    assert not service.session_is_valid("m1", issued)
    clock.advance(1)
    assert service.session_is_valid("m1", clock())
    assert service.session_is_valid("m2", issued)
    assert not service.session_is_valid("nobody", clock())
    assert not service.session_is_valid("s1", clock())


def test_session_validity_needs_an_aware_time(service: ResetService) -> None:
    """A naive issued_at is refused: its instant is unknown."""
    with pytest.raises(InvalidInputError):
        service.session_is_valid("m1", datetime(2026, 1, 1))


class FlakySessions:
    """A session port that fails its first *failures* calls."""

    def __init__(self, inner: Any, failures: int) -> None:
        self.inner, self.failures, self.calls = inner, failures, 0

    def revoke(self, member_ids: Sequence[str], issued_before: datetime) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("session store down")
        self.inner.revoke(member_ids, issued_before)


def test_r3_failed_revocation_is_retried_until_the_deadline(service: ResetService) -> None:
    """R3: a failing session port is retried (with backoff) and the sessions end."""
    session = service.sessions.create("m1")  # type: ignore[attr-defined]
    flaky = FlakySessions(service.sessions, failures=3)
    service.sessions = flaky
    _, result = run(service, ["m1", "m2"], force())
    assert result.outcomes["m1"].sessions_revoked
    assert not flaky.inner.is_active(session)
    assert () == result.unfinished


def test_r3_unconfirmed_revocation_is_reported_then_resumed(service: ResetService) -> None:
    """Members not confirmed signed out by the deadline are reported; a later apply retries them."""
    flaky = FlakySessions(service.sessions, failures=10_000)
    service.sessions = flaky
    plan, result = run(service, ["m1", "m2"], force())
    assert Outcome.RESET == result.outcomes["m1"].outcome
    assert not result.outcomes["m1"].sessions_revoked
    assert result.outcomes["m1"].attempted_at is not None
    assert ("m1", "m2") == result.unfinished
    assert not service.session_is_valid("m1", plan.created_at)  # lazily invalid all the same
    flaky.failures = 0
    again = service.apply(plan, confirm=plan.confirmation)
    assert () == again.unfinished


def test_r4_each_target_gets_a_password_reset_notice(service: ResetService) -> None:
    """R4: a PASSWORD_RESET notice per target, to the personal email (or the phone: the
    member is signed out of the work account), no password; a target with neither gets
    none and is reported (no_channel), and the plan's precautions counted them (R5)."""
    plan, result = run(service, ["m1", "m2", "m3"], force())
    notices = {n.member_id: n for n in sent(service)}
    assert {"m1", "m2"} == set(notices)
    assert NoticeKind.PASSWORD_RESET == notices["m1"].kind
    assert ("mina@home.example", None) == (notices["m1"].recipient, notices["m1"].phone)
    assert (None, "+821000000002") == (notices["m2"].recipient, notices["m2"].phone)
    assert notices["m1"].password is None
    assert "admin" == notices["m1"].actor
    assert f"{plan.plan_id}:m1:password_reset" == notices["m1"].idempotency_key
    m3 = result.outcomes["m3"]
    assert (Outcome.RESET, False, "no_channel") == (m3.outcome, m3.notified, m3.reason)
    assert result.ok  # nothing left to retry: the administrator hands the news over
    assert ["m3"] == [w.member_id for w in plan.warnings]
    assert any("1 target has no mobile phone" in p for p in plan.precautions)
    again = service.apply(plan, confirm=plan.confirmation)
    assert "no_channel" == again.outcomes["m3"].reason
    assert 2 == len(sent(service))


def test_r4_password_is_delivered_only_when_asked(service: ResetService) -> None:
    """deliver_password puts the password in the notice, and the precautions warn."""
    plan, _ = run(service, ["m1"], force(deliver_password=True))
    assert [PW] == [n.password for n in sent(service)]
    assert any("ASVS 2.5.1" in p for p in plan.precautions)


def test_r6_follow_with_request_sends_both(service: ResetService) -> None:
    """R6: force first, then a change request the member can redeem."""
    _, result = run(service, ["m1"], force(follow_with_request=True))
    assert [NoticeKind.PASSWORD_RESET, NoticeKind.CHANGE_REQUEST] == [n.kind for n in sent(service)]
    assert Outcome.RESET == result.outcomes["m1"].outcome
    assert "m1" == service.redeem(tokens_of(service)["m1"], OWN)
    assert service.authenticate("mina.kim@corp.example", OWN).ok
    assert not service.authenticate("mina.kim@corp.example", PW).ok


def test_applying_twice_repeats_nothing(service: ResetService) -> None:
    """Applying a finished plan again sends no notice again and returns the same result."""
    plan, first = run(service, ["m1", "m2", "q1"], force(follow_with_request=True))
    before = len(sent(service))
    events = len(service.audit_events())
    second = service.apply(plan, confirm=plan.confirmation)
    assert first.outcomes == second.outcomes
    assert before == len(sent(service))
    assert events == len(service.audit_events())


# --------------------------------------------------------------------- apply guards


def test_r7_apply_needs_the_confirmation_code(service: ResetService) -> None:
    """R7: a missing or wrong code changes nothing."""
    plan = service.plan(["m1"], force(), actor="admin")
    for code in [None, "", "WRONG-CODE", 1234]:
        with pytest.raises(ConfirmationError):
            service.apply(plan, confirm=code)  # type: ignore[arg-type]
    assert {} == service.store.get_credentials(["m1"])
    result = service.apply(plan.plan_id, confirm=plan.confirmation.lower())
    assert Outcome.RESET == result.outcomes["m1"].outcome


def test_a_plan_not_started_within_its_ttl_is_stale(
    service: ResetService, clock: FakeClock
) -> None:
    """A plan older than plan_ttl cannot start; a started one can always resume."""
    stale = service.plan(["m1"], force(follow_with_request=True), actor="admin")
    started = service.plan(["m2"], force(), actor="admin")
    service.apply(started, confirm=started.confirmation)
    clock.advance(hours=2)
    with pytest.raises(StalePlanError):
        service.apply(stale, confirm=stale.confirmation)
    assert service.store.load_plan(stale.plan_id).token_key is None  # type: ignore[union-attr]
    assert (
        Outcome.RESET == service.apply(started, confirm=started.confirmation).outcomes["m2"].outcome
    )


def test_an_apply_in_progress_elsewhere_is_reported(
    service: ResetService, clock: FakeClock
) -> None:
    """While another apply holds the plan's lease, apply raises PlanInProgressError."""
    plan = service.plan(["m1"], force(), actor="admin")
    assert service.store.claim_plan(plan.plan_id, "other", clock(), clock() + timedelta(minutes=1))
    with pytest.raises(PlanInProgressError):
        service.apply(plan, confirm=plan.confirmation)
    clock.advance(120)  # the other's lease expired: take over
    assert 1 == service.apply(plan, confirm=plan.confirmation).count(Outcome.RESET)


def test_members_changed_since_planning_are_rechecked(service: ResetService) -> None:
    """A target suspended or deleted-in-effect after planning is reported, not reset."""
    plan = service.plan(["m1", "m2"], force(), actor="admin")
    service.store.add_members([Member("m2", "jun@corp.example", status="suspended")])  # type: ignore[attr-defined]
    result = service.apply(plan, confirm=plan.confirmation)
    assert Outcome.EXCLUDED == result.outcomes["m2"].outcome
    assert "suspended" == result.outcomes["m2"].reason
    assert not service.authenticate("jun@corp.example", PW).ok


class FailingNotifier:
    """A notifier that refuses any batch holding a notice for *member_id*."""

    def __init__(self, inner: Any, member_id: str) -> None:
        self.inner, self.member_id, self.sent = inner, member_id, inner_sent(inner)

    def send(self, notices: Sequence[Notice]) -> None:
        if any(n.member_id == self.member_id for n in notices):
            raise ConnectionError("mail server said no")
        self.inner.send(notices)


def inner_sent(inner: Any) -> Any:
    return inner.sent if hasattr(inner, "sent") else None


def test_a_notifier_failing_for_one_member_fails_only_that_notice(
    make_service: ServiceFactory,
) -> None:
    """The others are notified once each; the failing one is retried alone next time."""
    service = make_service(
        [Member(f"u{i}", f"u{i}@x", role="admin" if i == 0 else "member") for i in range(6)]
    )
    inner = service.notifier
    service.notifier = FailingNotifier(inner, "u3")
    plan, result = run(service, ["u1", "u2", "u3", "u4", "u5"], request(), actor="u0")
    assert 5 == result.count(Outcome.REQUESTED)
    assert not result.outcomes["u3"].notified
    assert "ConnectionError" in (result.outcomes["u3"].reason or "")
    service.notifier = inner
    delivered = sent(service)
    assert ["u1", "u2", "u4", "u5"] == sorted(n.member_id for n in delivered)
    again = service.apply(plan, confirm=plan.confirmation)
    assert () == again.unfinished
    assert ["u1", "u2", "u3", "u4", "u5"] == sorted(n.member_id for n in sent(service))


def test_a_store_failing_for_one_member_fails_only_that_member(service: ResetService) -> None:
    """A failed credential write fails that member only; a re-apply fixes it."""
    with writes_fail_for(service, "m2"):
        plan, result = run(service, ["m1", "m2", "m3"], force())
    assert {"m1": Outcome.RESET, "m2": Outcome.FAILED, "m3": Outcome.RESET} == {
        k: o.outcome for k, o in result.outcomes.items()
    }
    assert "error: OSError" == result.outcomes["m2"].reason
    assert not any(n.member_id == "m2" for n in sent(service))  # no notice without the effect
    assert not result.ok
    again = service.apply(plan, confirm=plan.confirmation)
    assert 3 == again.count(Outcome.RESET)
    assert ["m1", "m2"] == sorted(n.member_id for n in sent(service))  # m3: no channel


def test_progress_is_reported_per_chunk(make_service: ServiceFactory) -> None:
    """The progress callback sees (done, total) after each chunk."""
    service = make_service(chunk_size=2)
    seen: list[tuple[int, int]] = []
    plan = service.plan(["m1", "m2", "m3"], force(), actor="admin")
    service.apply(plan, confirm=plan.confirmation, progress=lambda d, t: seen.append((d, t)))
    assert [(2, 3), (3, 3)] == seen


# --------------------------------------------------------------------- change requests


def test_request_change_sends_single_use_tokens(service: ResetService) -> None:
    """Tokens are ≥ 256 bits, go to the login address, and keep the old password working."""
    service.set_password("m1", OWN)
    plan, result = run(service, ["m1", "q1"], request())
    assert 2 == result.count(Outcome.REQUESTED)
    notices = {n.member_id: n for n in sent(service)}
    assert "Mina.Kim@corp.example" == notices["m1"].recipient
    assert NoticeKind.CHANGE_REQUEST == notices["m1"].kind
    assert notices["m1"].expires_at == plan.created_at + timedelta(hours=24)
    token = tokens_of(service)["m1"]
    assert len(token) >= 43  # 256 bits in URL-safe Base64
    assert service.authenticate("mina.kim@corp.example", OWN).ok  # still works
    assert "m1" == service.check_token(token)
    assert "m1" == service.check_token(token)  # opening the link does not use it
    assert "m1" == service.redeem(token, "brand new passphrase 9")
    with pytest.raises(InvalidTokenError):
        service.redeem(token, "another new passphrase 10")
    with pytest.raises(InvalidTokenError):
        service.check_token(token)
    assert "q1" == service.redeem(tokens_of(service)["q1"], "quick member passphrase")
    assert service.authenticate("quick@corp.example", "quick member passphrase").ok


def test_tokens_expire(service: ResetService, clock: FakeClock) -> None:
    """A token is dead at request_ttl."""
    run(service, ["m1"], request(request_ttl=timedelta(hours=1)))
    token = tokens_of(service)["m1"]
    clock.advance(hours=1)
    with pytest.raises(InvalidTokenError):
        service.redeem(token, "brand new passphrase 9")


def test_a_newer_request_supersedes_the_older_token(service: ResetService) -> None:
    """Only the newest change request of a member is live."""
    run(service, ["m1"], request())
    first = tokens_of(service)["m1"]
    run(service, ["m1"], request())
    second = [n.token for n in sent(service) if n.token and n.token != first]
    with pytest.raises(InvalidTokenError):
        service.check_token(first)
    assert "m1" == service.check_token(second[0])


def test_a_password_change_in_the_same_tick_kills_the_token(service: ResetService) -> None:
    """A token is dead once the password changed after issue, even within one clock tick."""
    service.set_password("m1", OWN)
    run(service, ["m1"], request())
    token = tokens_of(service)["m1"]
    service.change_password("m1", OWN, "changed it myself 42")  # same fake-clock instant
    with pytest.raises(InvalidTokenError):
        service.check_token(token)


def test_a_rejected_new_password_leaves_the_token_usable(service: ResetService) -> None:
    """redeem checks the new password before using the token."""
    run(service, ["m1"], request())
    token = tokens_of(service)["m1"]
    with pytest.raises(PasswordPolicyError):
        service.redeem(token, "password1234")
    assert "m1" == service.redeem(token, "brand new passphrase 9")


@pytest.mark.parametrize("token", ["", "x" * 43, "x" * 10_000, "\ud800" * 43, None, 42])
def test_every_bad_token_gets_the_same_error(service: ResetService, token: Any) -> None:
    """Unknown, malformed or absurd tokens raise one InvalidTokenError with one message."""
    with pytest.raises(InvalidTokenError, match="invalid or has expired"):
        service.redeem(token, "brand new passphrase 9")


def test_redeem_ends_the_members_sessions(service: ResetService, clock: FakeClock) -> None:
    """ASVS 3.3.3: redeeming a token ends the member's other sessions."""
    session = service.sessions.create("m1")  # type: ignore[attr-defined]
    run(service, ["m1"], request())
    clock.advance(1)
    service.redeem(tokens_of(service)["m1"], "brand new passphrase 9")
    assert not service.sessions.is_active(session)  # type: ignore[attr-defined]


def test_a_suspended_members_token_is_dead(service: ResetService) -> None:
    """A token of a member suspended after issue does not redeem."""
    run(service, ["m1"], request())
    service.store.add_members([Member("m1", "Mina.Kim@corp.example", status="suspended")])  # type: ignore[attr-defined]
    with pytest.raises(InvalidTokenError):
        service.check_token(tokens_of(service)["m1"])


# --------------------------------------------------------------------- sign-in


class CountingHasher(argon2.PasswordHasher):
    """The cheap hasher, counting verifications."""

    verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        type(self).verifications += 1
        return super().verify(hash, password)


def test_authenticate_matches_logins_by_case_folding(make_service: ServiceFactory) -> None:
    """Login IDs match case-insensitively; rina and rına stay two members."""
    service = make_service([*directory(), Member("r1", "rina@x"), Member("r2", "rına@x")])
    service.set_password("r1", "rina first passphrase")
    service.set_password("r2", "rına second passphrase")
    assert "r1" == service.authenticate("RINA@X", "rina first passphrase").member_id
    assert "r2" == service.authenticate("rına@x", "rına second passphrase").member_id
    assert not service.authenticate("rina@x", "rına second passphrase").ok


def test_unknown_logins_cost_one_verification(service: ResetService) -> None:
    """No user enumeration by timing: an unknown login still verifies one hash."""
    service.hasher = CountingHasher.from_parameters(CHEAPEST)
    CountingHasher.verifications = 0
    assert not service.authenticate("nobody@corp.example", PW).ok
    assert not service.authenticate("quick@corp.example", PW).ok  # no password at all
    assert 2 == CountingHasher.verifications


def test_overlong_passwords_are_refused_before_hashing(service: ResetService) -> None:
    """Input too long to be a password is refused without any Argon2 work."""
    service.hasher = CountingHasher.from_parameters(CHEAPEST)
    CountingHasher.verifications = 0
    result = service.authenticate("mina.kim@corp.example", "x" * 1_000_000)
    assert (False, "too_long") == (result.ok, result.reason)
    assert not service.authenticate("x" * 5000, PW).ok
    assert not service.authenticate(None, PW).ok  # type: ignore[arg-type]
    assert 0 == CountingHasher.verifications


def test_inactive_members_cannot_sign_in(service: ResetService) -> None:
    """Suspended and pending members get ok=False even with the right password."""
    service.set_password("s1", OWN)
    service.set_password("p1", OWN)
    assert "inactive" == service.authenticate("suspended@corp.example", OWN).reason
    assert not service.authenticate("pending@corp.example", OWN).ok


def test_outdated_hashes_are_rehashed_on_sign_in(service: ResetService) -> None:
    """RFC 9106: a hash with old parameters is replaced after a successful sign-in."""
    service.set_password("m1", OWN)
    old = service.store.get_credentials(["m1"])["m1"].password_hash
    service.hasher = argon2.PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    assert service.authenticate("mina.kim@corp.example", OWN).ok
    new = service.store.get_credentials(["m1"])["m1"]
    assert old != new.password_hash
    assert "t=2" in new.password_hash
    assert service.authenticate("mina.kim@corp.example", OWN).ok


def test_change_password_clears_the_must_change_flag(
    service: ResetService, clock: FakeClock
) -> None:
    """The must-change flow: new password, flag cleared, sessions ended."""
    run(service, ["m1"], force())
    session = service.sessions.create("m1")  # type: ignore[attr-defined]
    clock.advance(1)
    service.change_password("m1", PW, OWN)
    auth = service.authenticate("mina.kim@corp.example", OWN)
    assert (True, False) == (auth.ok, auth.must_change_password)
    assert not service.sessions.is_active(session)  # type: ignore[attr-defined]


def test_change_password_refuses_same_and_wrong(service: ResetService) -> None:
    """Same password again: same_as_current; wrong current password: InvalidCredentialsError."""
    service.set_password("m1", OWN)
    with pytest.raises(PasswordPolicyError) as caught:
        service.change_password("m1", OWN, OWN)
    assert ("same_as_current",) == caught.value.violations
    with pytest.raises(InvalidCredentialsError):
        service.change_password("m1", "not the password 1", "brand new passphrase 9")
    with pytest.raises(InvalidCredentialsError):
        service.change_password("nobody", OWN, "brand new passphrase 9")
    with pytest.raises(InvalidCredentialsError):
        service.change_password("m1", "x" * 100_000, "brand new passphrase 9")


def test_set_password_checks_member_and_rules(service: ResetService) -> None:
    """set_password needs a known member and a good password; must_change is honoured."""
    with pytest.raises(InvalidInputError):
        service.set_password("nobody", OWN)
    with pytest.raises(PasswordPolicyError):
        service.set_password("m1", "password1234")
    service.set_password("m1", OWN, must_change=True)
    assert service.authenticate("mina.kim@corp.example", OWN).must_change_password


def test_a_lost_race_on_the_credential_is_refused(service: ResetService) -> None:
    """A write whose generation moved on is refused, not silently applied."""
    service.set_password("m1", OWN)
    store: Any = service.store
    real = store.write_credential
    store.write_credential = lambda write, *, expected_generation, audit: real(
        write, expected_generation=expected_generation + 5, audit=audit
    )
    with pytest.raises(InvalidCredentialsError):
        service.change_password("m1", OWN, "brand new passphrase 9")


# --------------------------------------------------------------------- clock, audit, secrets


def test_a_naive_clock_is_refused(make_service: ServiceFactory) -> None:
    """The clock must return aware datetimes; a naive one is a clear error."""
    service = make_service()
    service.clock = lambda: datetime(2026, 1, 1)
    with pytest.raises(InvalidInputError, match="timezone-aware"):
        service.plan(["m1"], request(), actor="admin")


def test_a_clock_with_any_offset_compares_instants(service: ResetService, clock: FakeClock) -> None:
    """Expiry compares aware instants, whatever their UTC offset."""
    seoul = timezone(timedelta(hours=9))
    service.clock = lambda: clock().astimezone(seoul)
    run(service, ["m1"], request(request_ttl=timedelta(hours=1)))
    token = tokens_of(service)["m1"]
    clock.advance(minutes=59)
    assert "m1" == service.check_token(token)
    clock.advance(minutes=1)
    with pytest.raises(InvalidTokenError):
        service.check_token(token)


def test_audit_events_record_plan_apply_and_member_effects(make_service: ServiceFactory) -> None:
    """Audit events name actor, time, plan, member and action; a sink sees each one."""
    forwarded: list[AuditEvent] = []
    service = make_service(audit=forwarded.append)
    plan, _ = run(service, ["m1", "q1"], force())
    events = service.audit_events(plan_id=plan.plan_id)
    steps = [(step, e.member_id) for e in events for step in e.steps]
    assert [
        ("plan.created", None),
        ("member.reset", "m1"),
        ("sessions.revoked", "m1"),
        ("notice.sent", "m1"),
    ] == steps
    assert events == forwarded
    assert all(e.actor == "admin" for e in events)
    assert 3 == sum(len(e.steps) for e in service.audit_events(member_id="m1"))
    # each step has its own event, or all three are one event (set-based apply)
    assert len(service.audit_events(member_id="m1")) in (1, 3)


def test_an_effect_event_names_the_steps_committed_with_it() -> None:
    """``AuditEvent.steps`` reads an effect's folded detail, and nothing else's."""
    at = datetime(2026, 11, 30, tzinfo=timezone.utc)
    detail = AuditEvent.folded_detail(
        sessions_revoked=True, notices=["password_reset", "change_request"]
    )
    assert "sessions revoked; notice sent: password_reset, change_request" == detail
    reset = AuditEvent(at, "member.reset", detail=detail)
    assert ("member.reset", "sessions.revoked", "notice.sent") == reset.steps
    requested = AuditEvent(
        at,
        "member.requested",
        detail=AuditEvent.folded_detail(sessions_revoked=False, notices=["change_request"]),
    )
    assert ("member.requested", "notice.sent") == requested.steps
    assert ("member.reset",) == AuditEvent(at, "member.reset").steps
    assert ("member.excluded",) == AuditEvent(at, "member.excluded", detail=detail).steps
    assert "" == AuditEvent.folded_detail(sessions_revoked=False, notices=[])


def test_secrets_never_leak_into_reprs_errors_logs_or_audit(
    service: ResetService, caplog: pytest.LogCaptureFixture
) -> None:
    """Passwords, tokens and hashes appear in no repr, str, error, log record or audit event."""
    caplog.set_level(logging.DEBUG, logger="bulkreset")
    texts: list[str] = []
    service.set_password("m2", OWN)
    plan, result = run(service, ["m1", "m2", "q1"], force(follow_with_request=True))
    texts += [repr(plan), str(plan), plan._repr_html_(), repr(result), result._repr_html_()]
    texts += [repr(n) for n in sent(service)] + [repr(service), repr(service.store)]
    texts += [repr(e) for e in service.audit_events()]
    texts += [repr(service.store.get_credentials(["m1", "m2"]))]
    token = tokens_of(service)["m1"]
    for bad in [
        lambda: service.redeem(token, PW + "\x00"),
        lambda: service.change_password("m2", OWN, PW),
    ]:
        with pytest.raises(Exception) as caught:  # noqa: PT011
            bad()
        texts.append(repr(caught.value) + str(caught.value))
    texts += [record.getMessage() for record in caplog.records]
    hashes = [c.password_hash for c in service.store.get_credentials(["m1", "m2"]).values()]
    secrets = [PW, OWN, token, *hashes]
    leaked = [(secret[:6], text[:80]) for text in texts for secret in secrets if secret in text]
    assert [] == leaked


def test_naive_service_defaults_use_argon2_defaults() -> None:
    """Without a hasher the service uses argon2-cffi's defaults (RFC 9106 low memory)."""
    from bulkreset.adapters.memory import open_service

    service = open_service([Member("m1", "m1@x")])
    assert argon2.PasswordHasher().memory_cost == service.hasher.memory_cost
    assert "MemoryStorage" in repr(service)
    service.set_password("m1", OWN)
    assert service.authenticate("M1@x", OWN).ok
    now = datetime.now(timezone.utc)
    assert service.session_is_valid("m1", now + timedelta(seconds=1))


def test_chunk_size_must_be_positive() -> None:
    """A chunk size below 1 is a configuration error."""
    from bulkreset.adapters.memory import open_service

    with pytest.raises(InvalidInputError):
        open_service(chunk_size=0)


def test_lease_must_be_a_second_or_more() -> None:
    """A lease that is not a timedelta of at least 1 second is a configuration error."""
    from bulkreset.adapters.memory import open_service

    for bad in (timedelta(milliseconds=500), 120, None):
        with pytest.raises(InvalidInputError):
            open_service(lease=bad)


def test_a_short_lease_frees_a_dead_applys_plan_sooner(
    make_service: ServiceFactory, clock: FakeClock
) -> None:
    """With lease=10 s, a plan held by an apply that died is free again 10 s later."""
    service = make_service(lease=timedelta(seconds=10))
    plan = service.plan(["m1"], force(), actor="admin")
    now = clock()
    assert service.store.claim_plan(plan.plan_id, "dead", now, now + timedelta(seconds=10))
    with pytest.raises(PlanInProgressError, match="10 second"):
        service.apply(plan, confirm=plan.confirmation)
    clock.advance(seconds=11)
    assert 1 == service.apply(plan, confirm=plan.confirmation).count(Outcome.RESET)


def test_plans_compare_equal_after_loading(service: ResetService) -> None:
    """load_plan returns the same plan as plan() did."""
    plan = service.plan(MEMBERS, force(follow_with_request=True), actor="admin")
    loaded: ResetPlan = service.load_plan(plan.plan_id)
    assert plan == loaded
    assert plan.expires_at == loaded.created_at + timedelta(hours=1)


def test_a_demoted_actor_cannot_apply_their_plan(service: ResetService) -> None:
    """The plan's actor is re-checked at apply: no longer an admin, no apply."""
    plan = service.plan(["m1"], force(), actor="admin")
    service.store.add_members([Member("admin", "admin@corp.example", role="member")])  # type: ignore[attr-defined]
    with pytest.raises(AuthorizationError):
        service.apply(plan, confirm=plan.confirmation)
    assert {} == service.store.get_credentials(["m1"])


def test_a_failed_member_can_still_get_its_request_later(service: ResetService) -> None:
    """The plan keeps its token key while a member failed, so a re-apply can still send it."""
    with writes_fail_for(service, "m2", "tokens"):
        plan, result = run(service, ["m1", "m2"], request())
    assert Outcome.FAILED == result.outcomes["m2"].outcome
    again = service.apply(plan, confirm=plan.confirmation)
    assert Outcome.REQUESTED == again.outcomes["m2"].outcome
    assert "m2" == service.check_token(tokens_of(service)["m2"])


def test_a_member_renamed_twice_in_one_batch_keeps_only_the_last_login(
    service: ResetService,
) -> None:
    """add_members: only a member's latest login ID finds them."""
    service.store.add_members(  # type: ignore[attr-defined]
        [Member("m9", "first@x"), Member("m9", "second@x"), Member("m9", "third@x")]
    )
    assert service.store.find_member_by_login("first@x") is None
    assert service.store.find_member_by_login("second@x") is None
    found = service.store.find_member_by_login("third@x")
    assert found is not None
    assert "m9" == found.member_id


def test_a_long_apply_renews_its_lease(make_service: ServiceFactory, clock: FakeClock) -> None:
    """The lease is renewed per chunk, so a slow apply is not taken over mid-way."""
    service = make_service(chunk_size=1)
    plan = service.plan(["m1", "m2", "m3"], force(), actor="admin")
    rivals: list[bool] = []

    def slow(done: int, total: int) -> None:
        clock.advance(minutes=1.5)  # each chunk takes longer than half the lease
        rivals.append(service.store.claim_plan(plan.plan_id, "rival", clock(), clock()))

    result = service.apply(plan, confirm=plan.confirmation, progress=slow)
    assert [False, False, False] == rivals
    assert 3 == result.count(Outcome.RESET)


def test_an_apply_that_lost_its_lease_stops(make_service: ServiceFactory, clock: FakeClock) -> None:
    """When another apply took the plan over, this one stops at its next chunk."""
    service = make_service(chunk_size=1)
    plan = service.plan(["m1", "m2"], force(), actor="admin")

    def stalled(done: int, total: int) -> None:
        clock.advance(minutes=3)
        assert service.store.claim_plan(
            plan.plan_id, "rival", clock(), clock() + timedelta(minutes=2)
        )

    with pytest.raises(PlanInProgressError, match="taken over"):
        service.apply(plan, confirm=plan.confirmation, progress=stalled)
    assert ["m1"] == list(service.store.get_credentials(["m1", "m2"]))


def test_re_applying_a_finished_plan_keeps_its_first_completion_time(
    service: ResetService, clock: FakeClock
) -> None:
    """Applying a finished plan again changes nothing stored, not even the finish time."""
    plan, _ = run(service, ["m1"], force())
    finished = service.store.load_plan(plan.plan_id).finished_at  # type: ignore[union-attr]
    assert finished is not None
    clock.advance(60)
    service.apply(plan, confirm=plan.confirmation)
    assert finished == service.store.load_plan(plan.plan_id).finished_at  # type: ignore[union-attr]


# ----------------------------------------------------------------- temporary password ttl


def test_a_temporary_password_expires_after_its_ttl(
    service: ResetService, clock: FakeClock
) -> None:
    """A force change's password signs in for temporary_password_ttl (24 h by default), then
    no longer: authenticate says why, change_password refuses it; a new reset revives."""
    plan = service.plan(["m1"], force(), actor="admin")
    service.apply(plan, confirm=plan.confirmation)
    clock.advance(hours=23, minutes=59)
    assert service.authenticate("mina.kim@corp.example", PW).ok
    clock.advance(minutes=1)
    expired = service.authenticate("mina.kim@corp.example", PW)
    assert (False, None, "temporary_password_expired") == (
        expired.ok,
        expired.member_id,
        expired.reason,
    )
    assert "invalid" == service.authenticate("mina.kim@corp.example", "wrong guess 12345").reason
    with pytest.raises(TemporaryPasswordExpiredError):
        service.change_password("m1", PW, OWN)
    with pytest.raises(InvalidCredentialsError):  # a subclass: old handlers still catch it
        service.change_password("m1", PW, OWN)
    again = service.plan(["m1"], force(), actor="admin")
    service.apply(again, confirm=again.confirmation)
    assert service.authenticate("mina.kim@corp.example", PW).ok


def test_a_changed_password_never_expires(service: ResetService, clock: FakeClock) -> None:
    """Once the member changes the temporary password, theirs has no expiry."""
    plan = service.plan(["m1"], force(), actor="admin")
    service.apply(plan, confirm=plan.confirmation)
    service.change_password("m1", PW, OWN)
    clock.advance(days=400)
    assert service.authenticate("mina.kim@corp.example", OWN).ok


@pytest.mark.parametrize(
    ("options", "signs_in"),
    [
        ({"temporary_password_ttl": None}, True),
        ({"require_change_at_next_login": False}, True),  # not a temporary password
        ({"temporary_password_ttl": timedelta(hours=1)}, False),
    ],
)
def test_temporary_password_ttl_options(
    make_service: ServiceFactory, clock: FakeClock, options: dict[str, Any], signs_in: bool
) -> None:
    """ttl=None never expires; without must-change the password is not temporary; a shorter
    ttl expires sooner. Checked two days after the reset."""
    service = make_service()
    plan = service.plan(["m1"], force(**options), actor="admin")
    service.apply(plan, confirm=plan.confirmation)
    clock.advance(days=2)
    assert signs_in == service.authenticate("mina.kim@corp.example", PW).ok


def test_temporary_password_ttl_is_checked() -> None:
    """A ttl that is not a positive timedelta of at most 30 days is refused."""
    for bad in (timedelta(0), timedelta(days=31), 3600):
        with pytest.raises(InvalidInputError):
            force(temporary_password_ttl=bad)
    assert timedelta(hours=24) == force().temporary_password_ttl
    assert timedelta(hours=24) == force().settings().temporary_password_ttl


# ----------------------------------------------------------------- outstanding change requests


def request_plan(service: ResetService, ids: list[str]) -> tuple[ResetPlan, list[Notice]]:
    """Plan and apply a request change; the notices it sent (tokens inside)."""
    plan = service.plan(ids, ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    service.apply(plan, confirm=plan.confirmation)
    notifier: Any = service.notifier
    sent = notifier.sent if hasattr(notifier, "sent") else notifier.pending()
    return plan, [n for n in sent if n.plan_id == plan.plan_id and n.token]


def test_change_requests_are_listed_without_their_tokens(
    service: ResetService, clock: FakeClock
) -> None:
    """A member's and a plan's requests are listed with their times and status; no token."""
    first, notices = request_plan(service, ["m1", "m2"])
    clock.advance(minutes=5)
    second, _ = request_plan(service, ["m1"])  # supersedes m1's first request
    listed = service.change_requests(member_id="m1")
    assert [(first.plan_id, "revoked"), (second.plan_id, "live")] == [
        (c.plan_id, c.status) for c in listed
    ]
    assert clock() + timedelta(hours=24) == listed[1].expires_at
    assert ["m1", "m2"] == sorted(
        c.member_id for c in service.change_requests(plan_id=first.plan_id)
    )
    assert ["m2"] == [
        c.member_id for c in service.change_requests(plan_id=first.plan_id, live_only=True)
    ]
    assert 3 == len(service.change_requests())
    text = repr(service.change_requests())
    assert not any(n.token in text for n in notices if n.token)
    m2 = next(n for n in notices if n.member_id == "m2")
    assert m2.token is not None
    service.redeem(m2.token, OWN)
    assert ["used"] == [c.status for c in service.change_requests(member_id="m2")]
    clock.advance(hours=25)
    assert ["expired"] == [c.status for c in service.change_requests(plan_id=second.plan_id)]


def test_cancelled_requests_fail_to_redeem(service: ResetService) -> None:
    """Cancelling a member's, a plan's or every live request kills their tokens, is audited
    with the actor, and counts only live ones."""
    plan, notices = request_plan(service, ["m1", "m2", "m3"])
    tokens = {n.member_id: n.token for n in notices}
    assert 1 == service.cancel_change_requests(actor="admin", member_id="m1")
    assert 0 == service.cancel_change_requests(actor="admin", member_id="m1")  # already dead
    with pytest.raises(InvalidTokenError):
        service.redeem(tokens["m1"] or "", OWN)
    assert 2 == service.cancel_change_requests(actor="admin2", plan_id=plan.plan_id)
    with pytest.raises(InvalidTokenError):
        service.check_token(tokens["m2"] or "")
    events = [
        e for e in service.audit_events(plan_id=plan.plan_id) if e.action == "request.cancelled"
    ]
    assert [("admin", "m1"), ("admin2", "m2"), ("admin2", "m3")] == sorted(
        (e.actor or "", e.member_id or "") for e in events
    )
    request_plan(service, ["m1", "m2"])
    assert 2 == service.cancel_change_requests(actor="admin", everyone=True)
    assert [] == service.change_requests(live_only=True)


def test_cancelling_needs_a_filter_and_an_administrator(service: ResetService) -> None:
    """No filter without everyone=True, and only an active administrator, may cancel."""
    request_plan(service, ["m1"])
    with pytest.raises(InvalidInputError):
        service.cancel_change_requests(actor="admin")
    with pytest.raises(AuthorizationError):
        service.cancel_change_requests(actor="m2", member_id="m1")
    with pytest.raises(InvalidInputError):
        service.change_requests(member_id=42)  # type: ignore[arg-type]
    assert 1 == len(service.change_requests(live_only=True))


# ----------------------------------------------------------------- staged (canary) apply


def test_a_staged_apply_does_the_first_n_then_continues(
    make_service: ServiceFactory, clock: FakeClock
) -> None:
    """limit=N applies the first N targets; the rest are PENDING; a later apply continues;
    the plan finishes (and erases its secrets) only when every target is done."""
    members = [Member("admin", "admin@corp.example", role="admin")] + [
        Member(f"u{i}", f"u{i}@corp.example", personal_email=f"u{i}@home.example") for i in range(7)
    ]
    service = make_service(members, chunk_size=2)
    plan = service.plan(ALL, force(deliver_password=True), actor="admin")
    canary = service.apply(plan, confirm=plan.confirmation, limit=3)
    assert (3, 4, False) == (canary.count(Outcome.RESET), canary.remaining, canary.ok)
    assert ["reset"] * 3 + ["pending"] * 4 == [
        canary.outcomes[f"u{i}"].outcome.value for i in range(7)
    ]
    assert "pending=4" in repr(canary)
    assert service.authenticate("u2@corp.example", PW).ok
    assert not service.authenticate("u3@corp.example", PW).ok
    record = service.store.load_plan(plan.plan_id)
    assert record is not None
    assert (None, PW) == (record.finished_at, record.password)  # still open, secret kept
    clock.advance(hours=2)  # past plan_ttl: a started plan always continues
    second = service.apply(plan, confirm=plan.confirmation, limit=2)
    assert (5, 2) == (second.count(Outcome.RESET), second.remaining)
    rest = service.apply(plan, confirm=plan.confirmation)
    assert (7, 0, True) == (rest.count(Outcome.RESET), rest.remaining, rest.ok)
    assert "pending" not in repr(rest)
    record = service.store.load_plan(plan.plan_id)
    assert record is not None
    assert record.finished_at is not None
    assert record.password is None
    notifier: Any = service.notifier
    sent = notifier.sent if hasattr(notifier, "sent") else notifier.pending()
    assert 7 == len([n for n in sent if n.kind is NoticeKind.PASSWORD_RESET])  # once each


def test_a_staged_apply_needs_a_positive_limit(service: ResetService) -> None:
    """limit must be a whole number of at least 1; nothing is applied otherwise."""
    plan = service.plan(["m1"], force(), actor="admin")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidInputError):
            service.apply(plan, confirm=plan.confirmation, limit=bad)  # type: ignore[arg-type]
    assert service.authenticate("mina.kim@corp.example", PW).ok is False


# ----------------------------------------------------------------- two-person approval


def test_a_big_plan_needs_a_second_administrator(make_service: ServiceFactory) -> None:
    """Above approval_threshold, apply (and split) refuse until another active
    administrator approves; the planner may not; the approval is audited once."""
    service = make_service(approval_threshold=2)
    small = service.plan(["m1", "m2"], force(), actor="admin")
    assert not any("approve" in p for p in small.precautions)
    service.apply(small, confirm=small.confirmation)  # at the threshold: no approval needed
    big = service.plan(["m1", "m2", "m3"], force(), actor="admin")
    assert any("second administrator's approval" in p for p in big.precautions)
    with pytest.raises(ApprovalRequiredError, match="approve"):
        service.apply(big, confirm=big.confirmation)
    with pytest.raises(AuthorizationError, match="made a plan"):
        service.approve(big, approver="admin")
    with pytest.raises(AuthorizationError):
        service.approve(big, approver="m1")  # not an administrator
    service.approve(big.plan_id, approver="admin2")
    service.approve(big.plan_id, approver="boss")  # already approved: nothing changes
    record = service.store.load_plan(big.plan_id)
    assert record is not None
    assert "admin2" == record.approved_by
    approvals = [
        e for e in service.audit_events(plan_id=big.plan_id) if e.action == "plan.approved"
    ]
    assert ["admin2"] == [e.actor for e in approvals]
    assert 3 == service.apply(big, confirm=big.confirmation).count(Outcome.RESET)


def test_a_super_administrators_plan_needs_a_super_administrator(
    make_service: ServiceFactory,
) -> None:
    """An ADMIN may not approve a SUPER_ADMIN's plan; zero makes every plan need approval."""
    service = make_service(approval_threshold=0)
    plan = service.plan(["m1"], force(), actor="boss")
    with pytest.raises(ApprovalRequiredError):
        service.apply(plan, confirm=plan.confirmation)
    with pytest.raises(AuthorizationError, match="super administrator"):
        service.approve(plan, approver="admin")
    with pytest.raises(InvalidInputError):
        make_service(approval_threshold=-1)


def test_a_plan_may_ask_for_approval_itself(make_service: ServiceFactory) -> None:
    """ResetPolicy(approval_threshold=N) asks for approval above N even when the service
    does not; the stricter of the two wins; a bad threshold is refused."""
    service = make_service()
    plan = service.plan(["m1", "m2"], force(approval_threshold=1), actor="admin")
    assert 1 == service.load_plan(plan.plan_id).settings.approval_threshold
    with pytest.raises(ApprovalRequiredError):
        service.apply(plan, confirm=plan.confirmation)
    service.approve(plan, approver="admin2")
    assert 2 == service.apply(plan, confirm=plan.confirmation).count(Outcome.RESET)
    strict = make_service(approval_threshold=0)
    lenient = strict.plan(["m3"], force(approval_threshold=50), actor="admin")
    with pytest.raises(ApprovalRequiredError):  # the service's 0 wins over the plan's 50
        strict.apply(lenient, confirm=lenient.confirmation)
    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidInputError):
            force(approval_threshold=bad)


# ----------------------------------------------------------------- audit export


def test_the_audit_log_exports_as_json_lines_and_formula_safe_csv(
    make_service: ServiceFactory, clock: FakeClock
) -> None:
    """A plan's audit log as JSON Lines and CSV, filtered by member and time; a cell that
    a spreadsheet would run as a formula is quoted; nothing secret is in either."""
    import csv
    import io
    import json

    members = [*directory(), Member("=cmd", "evil@corp.example", personal_email="e@x.example")]
    service = make_service(members)
    plan = service.plan(["m1", "m2", "=cmd"], force(), actor="admin")
    clock.advance(minutes=1)
    middle = clock()
    service.apply(plan, confirm=plan.confirmation)
    out = io.StringIO()
    count = service.export_audit(out, plan_id=plan.plan_id)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert count == len(lines) >= 4  # plan.created, then each member (folded steps or not)
    assert ["at", "action", "actor", "plan_id", "member_id", "detail"] == list(lines[0])
    assert "plan.created" == lines[0]["action"]
    assert PW not in out.getvalue()
    out = io.StringIO()
    service.export_audit(out, plan_id=plan.plan_id, member_id="=cmd", format="csv")
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert ["at", "action", "actor", "plan_id", "member_id", "detail"] == rows[0]
    assert rows[1:]
    assert {"'=cmd"} == {row[4] for row in rows[1:]}
    out = io.StringIO()
    assert 1 == service.export_audit(out, plan_id=plan.plan_id, until=middle)  # plan.created
    everything = service.export_audit(io.StringIO(), plan_id=plan.plan_id, since=middle)
    assert count - 1 == everything
    for bad in (
        {"format": "xml"},
        {"since": datetime(2026, 1, 1)},
        {"since": middle, "until": middle},
        {"until": "yesterday"},
    ):
        with pytest.raises(InvalidInputError):
            service.export_audit(io.StringIO(), **bad)


# ----------------------------------------------------------------- controls, after a review


def test_the_services_approval_threshold_travels_with_the_plan(
    make_service: ServiceFactory,
) -> None:
    """A plan made under approval_threshold keeps it: a process built without the setting
    (the command line, a worker) still refuses to apply it unapproved."""
    strict = make_service(approval_threshold=0)
    plan = strict.plan(["m1"], force(), actor="admin")
    assert 0 == strict.load_plan(plan.plan_id).settings.approval_threshold
    lax = ResetService(strict.store, strict.notifier, strict.sessions, hasher=strict.hasher)
    with pytest.raises(ApprovalRequiredError):
        lax.apply(plan.plan_id, confirm=plan.confirmation)


def test_an_approval_lapses_when_the_approver_stops_being_an_administrator(
    make_service: ServiceFactory,
) -> None:
    """Approved by admin2, who is then demoted: apply refuses until another approves."""
    service = make_service(approval_threshold=0)
    plan = service.plan(["m1"], force(), actor="admin")
    service.approve(plan, approver="admin2")
    service.store.add_members(  # type: ignore[attr-defined]
        [Member("admin2", "admin2@corp.example", "Second Admin", role="member")]
    )
    with pytest.raises(ApprovalRequiredError, match="no longer"):
        service.apply(plan, confirm=plan.confirmation)
    with pytest.raises(AuthorizationError, match="approve a plan"):
        service.approve(plan, approver="admin2")
    service.approve(plan, approver="boss")
    assert 1 == service.apply(plan, confirm=plan.confirmation).count(Outcome.RESET)


def test_a_cancelled_request_is_never_sent_by_a_later_apply(
    make_service: ServiceFactory,
) -> None:
    """Requests whose notices failed are cancelled; applying the plan again sends neither,
    whatever the notifier, and the plan counts them finished."""
    service = make_service()
    real = service.notifier.send
    service.notifier.send = lambda notices: (_ for _ in ()).throw(OSError("mail down"))  # type: ignore[method-assign]
    plan = service.plan(["m1", "m2"], ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    first = service.apply(plan, confirm=plan.confirmation)
    assert 2 == len(first.unfinished)
    assert 2 == service.cancel_change_requests(actor="admin", plan_id=plan.plan_id)
    sent: list[Notice] = []
    service.notifier.send = lambda notices: (sent.extend(notices), real(notices))  # type: ignore[method-assign]
    again = service.apply(plan, confirm=plan.confirmation)
    assert [] == sent
    assert () == again.unfinished
    assert "request_cancelled" in (again.outcomes["m1"].reason or "")


def test_an_admin_cannot_cancel_a_super_admins_request(service: ResetService) -> None:
    """A SUPER_ADMIN's change request is out of an ADMIN's reach, as their password is."""
    for target in ("admin2", "boss"):
        policy = ResetPolicy(ResetMode.REQUEST_CHANGE, include_actor=True)
        plan = service.plan([target], policy, actor="boss")
        service.apply(plan, confirm=plan.confirmation)
    assert 0 == service.cancel_change_requests(actor="admin", member_id="boss")
    assert 1 == service.cancel_change_requests(actor="admin", everyone=True)  # admin2's only
    assert ["boss"] == [c.member_id for c in service.change_requests(live_only=True)]
    assert 1 == service.cancel_change_requests(actor="boss", member_id="boss")


def test_filters_are_checked(service: ResetService) -> None:
    """Non-string IDs, non-bool flags and unknown plans are refused, not read as 'none'."""
    import io

    with pytest.raises(InvalidInputError):
        service.cancel_change_requests(actor="admin", member_id=123)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        service.cancel_change_requests(actor="admin", everyone="no")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        service.change_requests(live_only="no")  # type: ignore[arg-type]
    with pytest.raises(PlanNotFoundError):
        service.cancel_change_requests(actor="admin", plan_id="plan-nope")
    with pytest.raises(PlanNotFoundError):
        service.export_audit(io.StringIO(), plan_id="plan-nope")
    with pytest.raises(InvalidInputError):
        service.export_audit(io.StringIO(), member_id=123)  # type: ignore[arg-type]
    far = datetime.min.replace(tzinfo=timezone(timedelta(hours=5)))
    with pytest.raises(InvalidInputError):
        service.export_audit(io.StringIO(), since=far)


def test_ascii_only_json_lines_escape_and_stay_valid(make_service: ServiceFactory) -> None:
    """ascii_only=True writes \\u escapes: valid JSON on a stream that is not UTF-8."""
    import io
    import json

    service = make_service([*directory(), Member("ü-😀", "u@corp.example", "Zoë")])
    service.set_password("ü-😀", OWN)
    out = io.StringIO()
    service.export_audit(out, member_id="ü-😀", ascii_only=True)
    assert out.getvalue().isascii()
    assert ["ü-😀"] == [json.loads(line)["member_id"] for line in out.getvalue().splitlines()]
