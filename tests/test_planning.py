"""Eligibility and plans, as pure functions (SPEC §3, R2, R5, R8)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkreset import ExclusionReason, Member, ResetMode, ResetPolicy, WarningKind
from bulkreset._planning import (
    build_plan,
    codes_match,
    dedupe_selection,
    exclusion_reason,
    new_confirmation_code,
)
from bulkreset.errors import InvalidInputError

NOW = datetime(2026, 11, 30, tzinfo=timezone.utc)
FORCE = ResetPolicy(ResetMode.FORCE_CHANGE, new_password="Correct horse battery").settings()
REQUEST = ResetPolicy(ResetMode.REQUEST_CHANGE).settings()
ADMIN = Member("admin", "admin@x", role="admin")
SUPER = Member("super", "super@x", role="super_admin")


def reason(member: Member | None, **kw: object) -> ExclusionReason | None:
    options = {"actor": ADMIN, "settings": FORCE, "has_password": False} | kw
    return exclusion_reason(member, **options)  # type: ignore[arg-type]


def test_reasons_follow_the_spec_order() -> None:
    """The first reason that applies wins, in the SPEC's order."""
    assert ExclusionReason.UNKNOWN_MEMBER == reason(None)
    assert ExclusionReason.ACTOR == reason(ADMIN)
    pending_super = Member("s2", "s2@x", role="super_admin", status="pending")
    assert ExclusionReason.NOT_PERMITTED == reason(pending_super)
    suspended_pending = Member("p", "p@x", status="pending", sign_in="quick_login")
    assert ExclusionReason.NOT_ACTIVATED == reason(suspended_pending)
    suspended_quick = Member("s", "s@x", status="suspended", sign_in="quick_login")
    assert ExclusionReason.SUSPENDED == reason(suspended_quick)
    assert ExclusionReason.NO_PASSWORD == reason(Member("q", "q@x", sign_in="quick_login"))
    assert reason(Member("m", "m@x")) is None


def test_super_admin_may_reset_super_admin_and_admin() -> None:
    """Only an ADMIN acting on a SUPER_ADMIN is not permitted."""
    other_super = Member("s2", "s2@x", role="super_admin")
    assert reason(other_super, actor=SUPER) is None
    assert reason(ADMIN, actor=SUPER) is None


def test_options_lift_actor_and_suspended_exclusions() -> None:
    """include_actor and include_suspended make those members targets."""
    settings = ResetPolicy(
        ResetMode.REQUEST_CHANGE, include_actor=True, include_suspended=True
    ).settings()
    assert reason(ADMIN, settings=settings) is None
    assert reason(Member("s", "s@x", status="suspended"), settings=settings) is None


def test_quick_login_members_are_excluded_only_from_force_change() -> None:
    """R2: Quick Login without a password: excluded from force, not from request change."""
    quick = Member("q", "q@x", sign_in="quick_login")
    assert ExclusionReason.NO_PASSWORD == reason(quick, settings=FORCE)
    assert reason(quick, settings=REQUEST) is None
    assert reason(quick, settings=FORCE, has_password=True) is None


def test_selection_must_not_be_a_bare_string() -> None:
    """A string is not a selection (it would select its characters)."""
    with pytest.raises(InvalidInputError):
        dedupe_selection("m1")
    with pytest.raises(InvalidInputError):
        dedupe_selection(["m1", None])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError):
        dedupe_selection(["m1", "m\x00"])


def test_confirmation_codes_compare_loosely_but_exactly() -> None:
    """Codes ignore case, spaces and dashes; anything else must match."""
    code = new_confirmation_code()
    assert 9 == len(code)
    assert codes_match(code.lower().replace("-", " "), code)
    assert not codes_match(code[:-1], code)
    assert not codes_match(None, code)
    assert not codes_match("x" * 100, code)


ids = st.text(alphabet="abcdefgh", min_size=1, max_size=3)


@st.composite
def directories(draw: st.DrawFn) -> dict[str, Member]:
    members = {}
    for member_id in draw(st.sets(ids, max_size=25)):
        members[member_id] = Member(
            member_id,
            f"{member_id}@x",
            sign_in=draw(st.sampled_from(["password", "quick_login"])),
            status=draw(st.sampled_from(["active", "suspended", "pending"])),
            role=draw(st.sampled_from(["member", "admin", "super_admin"])),
            mobile_phone=draw(st.sampled_from([None, "+8210"])),
            personal_email=draw(st.sampled_from([None, "me@home"])),
        )
    return members


@given(
    members=directories(),
    selection=st.lists(ids, max_size=40),
    force=st.booleans(),
    actor_role=st.sampled_from(["admin", "super_admin"]),
    with_password=st.sets(ids),
)
def test_every_selected_id_lands_in_exactly_one_place(
    members: dict[str, Member],
    selection: list[str],
    force: bool,
    actor_role: str,
    with_password: set[str],
) -> None:
    """R8: each distinct selected ID is a target or an exclusion, exactly once, in order."""
    actor = Member("actor", "actor@x", role=actor_role)
    members = members | {"actor": actor}
    selected = dedupe_selection([*selection, "actor"])
    plan = build_plan(
        plan_id="plan-x",
        created_at=NOW,
        actor=actor,
        settings=FORCE if force else REQUEST,
        selected=selected,
        members=members,
        with_password=with_password,
        confirmation="AAAA-BBBB",
    )
    placed = [m.member_id for m in plan.targets] + [e.member_id for e in plan.excluded]
    assert sorted(selected) == sorted(placed)
    assert len(placed) == len(set(placed))
    assert [m for m in selected if m in {t.member_id for t in plan.targets}] == [
        t.member_id for t in plan.targets
    ]
    for exclusion in plan.excluded:
        assert exclusion.reason == exclusion_reason(
            members.get(exclusion.member_id),
            actor=actor,
            settings=plan.settings,
            has_password=exclusion.member_id in with_password,
        )
    expected_warnings = [t.member_id for t in plan.targets if force and not t.can_self_recover]
    assert expected_warnings == [w.member_id for w in plan.warnings]
    assert all(w.kind is WarningKind.CANNOT_SELF_RECOVER for w in plan.warnings)
    assert len(selected) == plan.selected
