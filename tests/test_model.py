"""The domain's value objects: validation, secrets kept out of reprs, summaries."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bulkreset import (
    ALL,
    Exclusion,
    ExclusionReason,
    Member,
    MemberOutcome,
    MemberStatus,
    Notice,
    NoticeKind,
    Outcome,
    PlanSettings,
    ResetMode,
    ResetPolicy,
    ResetResult,
    Role,
    SignInMethod,
    fold_login,
)
from bulkreset.errors import InvalidInputError, PartialResetError

NOW = datetime(2026, 11, 30, tzinfo=timezone.utc)


def test_member_defaults_follow_the_contract() -> None:
    """A Member defaults to a password sign-in, active, plain member."""
    member = Member("m1", "a@x")
    assert (SignInMethod.PASSWORD, MemberStatus.ACTIVE, Role.MEMBER) == (
        member.sign_in,
        member.status,
        member.role,
    )
    assert member.mobile_phone is None
    assert member.personal_email is None


def test_member_accepts_enum_values_as_strings() -> None:
    """Enum fields take their lower-case values, as files write them."""
    member = Member("m1", "a@x", sign_in="quick_login", status="pending", role="super_admin")
    assert member.sign_in is SignInMethod.QUICK_LOGIN
    assert member.status is MemberStatus.PENDING
    assert member.role is Role.SUPER_ADMIN


@pytest.mark.parametrize(
    ("field", "value"),
    [("sign_in", "sso"), ("status", "deleted"), ("role", "owner")],
)
def test_member_rejects_unknown_enum_values(field: str, value: str) -> None:
    """An unknown sign-in, status or role is a clear InvalidInputError naming the choices."""
    with pytest.raises(InvalidInputError, match="must be one of"):
        Member("m1", "a@x", **{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("member_id", "login_id"),
    [("", "a@x"), ("m1", "  "), ("m\x00", "a@x"), ("m1", "a\r"), ("m" * 257, "a@x"), (1, "a@x")],
)
def test_member_rejects_malformed_ids(member_id: object, login_id: str) -> None:
    """Empty, over-long, non-string or control-character IDs are refused."""
    with pytest.raises(InvalidInputError):
        Member(member_id, login_id)  # type: ignore[arg-type]


def test_member_rejects_a_contact_that_is_not_text() -> None:
    """A contact is a string or None."""
    with pytest.raises(InvalidInputError):
        Member("m1", "a@x", mobile_phone=12345)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        Member("m1", "a@x", personal_email="a\x00b@x")


def test_blank_contacts_become_none_and_decide_self_recovery() -> None:
    """R5: a member with neither a mobile phone nor a personal email cannot self-recover."""
    assert not Member("m1", "a@x", mobile_phone="  ", personal_email="").can_self_recover
    assert Member("m1", "a@x", mobile_phone="+8210").can_self_recover
    assert Member("m1", "a@x", personal_email="me@home").can_self_recover


def test_login_ids_fold_by_unicode_case_folding() -> None:
    """Login IDs compare by NFKC and case folding; a dotless i stays distinct."""
    assert fold_login("Rina@X") == fold_login("rina@x")
    assert fold_login("ＲＩＮＡ@x") == fold_login("rina@x")
    assert fold_login("rına@x") != fold_login("rina@x")
    assert Member("m1", "Straße@x").login_key == Member("m2", "STRASSE@x").login_key


def test_force_policy_needs_a_password_and_hides_it() -> None:
    """R1: force change needs new_password; repr never shows it."""
    with pytest.raises(InvalidInputError):
        ResetPolicy(ResetMode.FORCE_CHANGE)
    policy = ResetPolicy(ResetMode.FORCE_CHANGE, new_password="Correct horse battery")
    assert "Correct horse" not in repr(policy)
    assert "Correct horse" not in str(policy)


def test_request_policy_refuses_force_only_options() -> None:
    """Request change takes no password and no force-only options."""
    with pytest.raises(InvalidInputError):
        ResetPolicy(ResetMode.REQUEST_CHANGE, new_password="Correct horse battery")
    with pytest.raises(InvalidInputError):
        ResetPolicy(ResetMode.REQUEST_CHANGE, follow_with_request=True)
    with pytest.raises(InvalidInputError):
        ResetPolicy("nothing")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        {"session_deadline": timedelta(minutes=6)},
        {"session_deadline": timedelta(0)},
        {"request_ttl": timedelta(seconds=-1)},
        {"plan_ttl": 3600},
        {"rules": "strict"},
    ],
)
def test_policy_rejects_bad_durations_and_rules(options: dict[str, object]) -> None:
    """R3: the session deadline is at most 5 minutes; durations are positive timedeltas."""
    with pytest.raises(InvalidInputError):
        ResetPolicy(ResetMode.REQUEST_CHANGE, **options)  # type: ignore[arg-type]


def test_plan_settings_round_trip_through_json() -> None:
    """A plan's settings survive JSON, durations as seconds."""
    settings = ResetPolicy(
        ResetMode.FORCE_CHANGE,
        new_password="Correct horse battery",
        follow_with_request=True,
        request_ttl=timedelta(hours=2),
    ).settings()
    assert settings == PlanSettings.from_json(settings.to_json())
    assert 7200 == settings.to_json()["request_ttl"]


def test_notice_repr_hides_token_and_password() -> None:
    """Secrets never appear in a notice's repr; without_secrets erases them."""
    notice = Notice("m1", NoticeKind.CHANGE_REQUEST, token="tok-SECRET", password="pw-SECRET")
    assert "SECRET" not in repr(notice)
    assert (None, None) == (notice.without_secrets().token, notice.without_secrets().password)


def result_of(*outcomes: MemberOutcome) -> ResetResult:
    return ResetResult("plan-1", {o.member_id: o for o in outcomes}, NOW, NOW)


def test_result_counts_and_failures() -> None:
    """Counts add up; raise_for_failures raises only when asked, listing IDs."""
    result = result_of(
        MemberOutcome("a", Outcome.RESET, sessions_revoked=True, notified=True),
        MemberOutcome("b", Outcome.FAILED, "error: OSError"),
        MemberOutcome("c", Outcome.EXCLUDED, "actor"),
        MemberOutcome("d", Outcome.REQUESTED, notified=False),
    )
    assert {Outcome.RESET: 1, Outcome.REQUESTED: 1, Outcome.EXCLUDED: 1, Outcome.FAILED: 1} == (
        result.counts()
    )
    assert ("b", "d") == result.unfinished
    assert not result.ok
    with pytest.raises(PartialResetError) as caught:
        result.raise_for_failures()
    assert ("b", "d") == caught.value.member_ids
    assert ["a", "b", "c", "d"] == [o.member_id for o in result]
    assert "failed=1" in repr(result)
    assert "<table>" in result._repr_html_()


def test_result_without_failures_does_not_raise() -> None:
    """A clean result is ok and raise_for_failures is silent."""
    result = result_of(MemberOutcome("a", Outcome.RESET, sessions_revoked=True, notified=True))
    result.raise_for_failures()
    assert result.ok
    assert () == result.unfinished


def test_partial_reset_error_shortens_long_lists() -> None:
    """A long failure list is summarized, not dumped."""
    error = PartialResetError([f"m{i}" for i in range(25)])
    assert "and 15 more" in str(error)


def test_all_has_a_readable_repr() -> None:
    """ALL reads as ALL in a notebook."""
    assert "ALL" == repr(ALL)


def test_exclusion_and_enum_reprs_are_readable() -> None:
    """Enums print their values and repr as Class.NAME."""
    assert "no_password" == str(ExclusionReason.NO_PASSWORD)
    assert "Exclusion(member_id='x', reason=ExclusionReason.ACTOR)" == repr(
        Exclusion("x", ExclusionReason.ACTOR)
    )


def test_members_read_back_from_a_store_equal_validated_ones() -> None:
    """The fast path for stored rows builds the same Member, and falls back on odd rows."""
    from bulkreset._model import member_from_store

    expected = Member("m1", "a@x", "A", "quick_login", "+82", None, "pending", "admin")
    assert expected == member_from_store(
        "m1", "a@x", "A", "quick_login", "+82", "", "pending", "admin"
    )
    assert hash(expected) == hash(
        member_from_store("m1", "a@x", "A", "quick_login", "+82", None, "pending", "admin")
    )
    with pytest.raises(InvalidInputError):
        member_from_store("m1", "a@x", "A", "password", None, None, "deleted", "member")
    with pytest.raises(InvalidInputError):
        member_from_store(7, "a@x", "A", "password", None, None, "active", "member")  # type: ignore[arg-type]


def test_a_member_locale_is_a_language_tag() -> None:
    """locale defaults to English, takes BCP 47 tags (_ read as -), refuses anything else."""
    assert "en" == Member("m", "m@x").locale
    assert "ko" == Member("m", "m@x", locale="ko").locale
    assert "zh-Hant-TW" == Member("m", "m@x", locale=" zh_Hant_TW ").locale
    assert "en" == Member("m", "m@x", locale="").locale
    for bad in ("k", "korean!", "x" * 40, "ko--KR", 7):
        with pytest.raises(InvalidInputError):
            Member("m", "m@x", locale=bad)  # type: ignore[arg-type]
