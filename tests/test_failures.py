"""Failing ports, back-pressure and fencing (SPEC §6), over every shipped store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from bulkreset import Member, Notice, NoticeKind, Outcome, ResetMode, ResetPolicy, ResetService
from bulkreset.errors import PartialResetError, PlanInProgressError, RetryLaterError
from bulkreset.ports import ChunkRequest, EffectBatch

from .conftest import FakeClock, ServiceFactory, port_by_port
from .test_service import FlakySessions, run, sent, tokens_of

PW = "Harbor 42 lanterns"


def force(**options: Any) -> ResetPolicy:
    return ResetPolicy(ResetMode.FORCE_CHANGE, new_password=PW, **options)


def request(**options: Any) -> ResetPolicy:
    return ResetPolicy(ResetMode.REQUEST_CHANGE, **options)


class RateLimited:
    """A notifier that accepts *budget* notices, then asks to retry later."""

    def __init__(self, inner: Any, budget: int) -> None:
        self.inner, self.budget, self.calls = inner, budget, 0

    def send(self, notices: Sequence[Notice]) -> None:
        self.calls += 1
        if len(notices) > self.budget:
            raise RetryLaterError("429 too many", retry_after=30)
        self.budget -= len(notices)
        self.inner.send(notices)


def test_back_pressure_keeps_notices_pending_and_named(make_service: ServiceFactory) -> None:
    """A rate-limited notifier: the rest stay pending, are named, and go out on the next apply."""
    service = make_service(chunk_size=2)
    inner = service.notifier
    limited = RateLimited(inner, budget=2)
    service.notifier = limited
    plan, result = run(service, ["m1", "m2", "m3", "q1"], request())
    service.notifier = inner
    assert 4 == result.count(Outcome.REQUESTED)  # every request is stored
    assert ["m1", "m2"] == sorted(n.member_id for n in sent(service))
    waiting = [o.member_id for o in result if not o.notified and o.outcome is Outcome.REQUESTED]
    assert ["m3", "q1"] == waiting
    assert all("retry later" in (result.outcomes[m].reason or "") for m in waiting)
    assert 2 == limited.calls  # no per-member hammering after "retry later"
    with pytest.raises(PartialResetError) as caught:
        result.raise_for_failures()
    assert ("m3", "q1") == caught.value.member_ids
    again = service.apply(plan, confirm=plan.confirmation)
    assert again.ok
    assert ["m1", "m2", "m3", "q1"] == sorted(n.member_id for n in sent(service))


def test_retry_later_in_the_middle_of_isolating_failures(make_service: ServiceFactory) -> None:
    """A notifier that fails one member, then asks to wait, defers the rest of the batch."""
    service = make_service()
    inner = service.notifier

    class Mixed:
        def send(self, notices: Sequence[Notice]) -> None:
            ids = {n.member_id for n in notices}
            if len(ids) > 1 or "m1" in ids:
                raise ConnectionError("boom")
            raise RetryLaterError

    service.notifier = Mixed()
    _, result = run(service, ["m1", "m2", "m3"], request())
    assert "ConnectionError" in (result.outcomes["m1"].reason or "")
    assert all("retry later" in (result.outcomes[m].reason or "") for m in ["m2", "m3"])
    service.notifier = inner


def test_an_apply_that_lost_the_plan_cannot_write(service: ResetService, clock: FakeClock) -> None:
    """Fencing: a batch written under a lease the plan no longer has is refused whole."""
    plan = service.plan(["m1"], force(), actor="admin")
    store: Any = service.store
    assert store.claim_plan(plan.plan_id, "first", clock(), clock())
    assert store.claim_plan(plan.plan_id, "second", clock(), clock())  # first's lapsed
    with pytest.raises(PlanInProgressError):
        store.commit(EffectBatch(plan.plan_id, owner="first"))
    store.commit(EffectBatch(plan.plan_id, owner="second"))


def test_a_rival_taking_over_mid_batch_stops_the_apply(
    make_service: ServiceFactory, clock: FakeClock
) -> None:
    """If another apply took the plan between two writes, this one stops without writing."""
    service = make_service()
    store: Any = service.store
    real_commit = store.commit
    real_chunk = getattr(store, "apply_chunk", None)
    plan = service.plan(["m1", "m2"], force(), actor="admin")

    def rival_claims() -> None:
        now = clock.advance(minutes=3)  # this apply stalled; its lease lapsed
        assert store.claim_plan(plan.plan_id, "rival", now, now.replace(year=now.year + 1))

    def hijacked(batch: EffectBatch) -> None:
        rival_claims()
        real_commit(batch)

    def hijacked_chunk(request: ChunkRequest) -> Any:
        rival_claims()
        assert real_chunk is not None
        return real_chunk(request)

    store.commit = hijacked
    if real_chunk is not None:
        store.apply_chunk = hijacked_chunk
    with pytest.raises(PlanInProgressError):
        service.apply(plan, confirm=plan.confirmation)
    assert {} == store.get_credentials(["m1", "m2"])


def test_reasons_keep_both_problems_until_each_is_solved(make_service: ServiceFactory) -> None:
    """A member not signed out and not notified shows both; each clears on its own."""
    service = make_service()
    inner_sessions, inner_notifier = service.sessions, service.notifier
    flaky = FlakySessions(inner_sessions, failures=10_000)
    service.sessions = flaky

    class Down:
        def send(self, notices: Sequence[Notice]) -> None:
            raise ConnectionError("mail down")

    service.notifier = Down()
    plan, result = run(service, ["m1"], force())
    reason = result.outcomes["m1"].reason or ""
    assert "sessions not yet revoked" in reason
    assert "notice not delivered" in reason
    flaky.failures = 0
    result = service.apply(plan, confirm=plan.confirmation)
    assert "notice not delivered (error: ConnectionError)" == result.outcomes["m1"].reason
    service.notifier = inner_notifier
    result = service.apply(plan, confirm=plan.confirmation)
    assert result.outcomes["m1"].reason is None
    assert result.ok


# ----------------------------------------------------------------- small cases (issue 3)


def test_a_password_with_spaces_at_both_ends_must_be_typed_exactly(
    service: ResetService,
) -> None:
    """' Harbor 42 lanterns ' is accepted as is; the trimmed form does not sign in."""
    padded = " Harbor 42 lanterns "
    run(service, ["m1"], ResetPolicy(ResetMode.FORCE_CHANGE, new_password=padded))
    assert service.authenticate("mina.kim@corp.example", padded).ok
    assert not service.authenticate("mina.kim@corp.example", padded.strip()).ok
    assert not service.authenticate("mina.kim@corp.example", padded + " ").ok


def test_a_member_who_changed_their_password_is_not_reset_again(service: ResetService) -> None:
    """Force change, the member sets their own password, the plan is applied again: kept."""
    plan, _ = run(service, ["m1", "m2"], force())
    service.change_password("m1", PW, "my very own passphrase")
    again = service.apply(plan, confirm=plan.confirmation)
    assert Outcome.RESET == again.outcomes["m1"].outcome
    assert service.authenticate("mina.kim@corp.example", "my very own passphrase").ok
    assert not service.authenticate("mina.kim@corp.example", PW).ok
    assert 1 == sum(e.action == "member.reset" for e in service.audit_events(member_id="m1"))


@pytest.mark.parametrize("mode", ["force", "request"])
def test_outcome_counts_add_up_to_the_selection(make_service: ServiceFactory, mode: str) -> None:
    """Four members, one with no contact channel and one Quick Login: no silent skips."""
    service = make_service(
        [
            Member("a", "a@x", role="admin"),
            Member("w1", "w1@x", personal_email="w1@home"),
            Member("w2", "w2@x", mobile_phone="+8210"),
            Member("none", "none@x"),
            Member("quick", "quick@x", sign_in="quick_login", personal_email="q@home"),
        ]
    )
    policy = force() if mode == "force" else request()
    plan, result = run(service, ["w1", "w2", "none", "quick"], policy, actor="a")
    assert 4 == sum(result.counts().values()) == plan.selected
    assert {"w1", "w2", "none", "quick"} == set(result.outcomes)
    if mode == "force":
        assert (3, 1) == (result.count(Outcome.RESET), result.count(Outcome.EXCLUDED))
        assert "no_password" == result.outcomes["quick"].reason
    else:
        assert 4 == result.count(Outcome.REQUESTED)
        assert {n.member_id for n in sent(service) if n.kind is NoticeKind.CHANGE_REQUEST} == {
            "w1",
            "w2",
            "none",
            "quick",
        }


def test_a_resumed_request_change_resends_the_same_live_token(service: ResetService) -> None:
    """Crash before the notices' progress was recorded: the resent notice has the same token.

    (The port-by-port path: a set-based chunk commits notices with the effects.)
    """
    store: Any = port_by_port(service).store
    real_commit = store.commit

    def crash_after_effects(batch: EffectBatch) -> None:
        real_commit(batch)
        if not batch.tokens:
            raise OSError("process died after sending")  # progress of notices not recorded

    plan = service.plan(["m1"], request(), actor="admin")
    store.commit = crash_after_effects
    with pytest.raises(OSError, match="died"):
        service.apply(plan, confirm=plan.confirmation)
    store.commit = real_commit
    first = tokens_of(service)["m1"]
    service.apply(plan, confirm=plan.confirmation)
    tokens = [n.token for n in sent(service) if n.kind is NoticeKind.CHANGE_REQUEST]
    assert {first} == set(tokens)  # sent again at most, always the same token
    assert "m1" == service.check_token(first)
