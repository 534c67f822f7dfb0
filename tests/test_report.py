"""Apply reports: CSV formula safety, JSON shape, no secrets (SPEC §8)."""

from __future__ import annotations

import csv
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import argon2
import pytest

from bulkreset import ALL, MemberOutcome, Outcome, ResetMode, ResetPolicy, ResetResult
from bulkreset._report import (
    COLUMNS,
    check_report_path,
    report_rows,
    safe_cell,
    write_report,
)
from bulkreset.adapters.memory import open_service
from bulkreset.errors import InvalidInputError

from .conftest import directory

AT = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
PASSWORD = "Harbor 42 lanterns"


def result(*outcomes: MemberOutcome) -> ResetResult:
    return ResetResult(
        plan_id="plan-1",
        outcomes={o.member_id: o for o in outcomes},
        started_at=AT,
        finished_at=AT,
    )


def read_csv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx"])
def test_formula_like_cells_get_a_quote(cell: str) -> None:
    """Cells starting with = + - @ tab or CR are prefixed with a single quote (OWASP)."""
    assert "'" + cell == safe_cell(cell)


@pytest.mark.parametrize("cell", ["", "m1", "a=b", "'quoted", " =x"])
def test_other_cells_are_unchanged(cell: str) -> None:
    """Any other cell is written as it is."""
    assert cell == safe_cell(cell)


def test_csv_report_is_formula_safe(tmp_path: Path) -> None:
    """Every text cell of a CSV report is neutralized; flags are true/false."""
    outcomes = result(
        MemberOutcome("=cmd|' /C calc'!A0", Outcome.RESET, None, True, True, "+x@corp"),
        MemberOutcome("m2", Outcome.FAILED, "-error", False, False, "@home"),
    )
    path = write_report(tmp_path / "r.csv", outcomes)
    expected = [
        list(COLUMNS),
        ["'=cmd|' /C calc'!A0", "'+x@corp", "reset", "", "true", "true"],
        ["m2", "'@home", "failed", "'-error", "false", "false"],
    ]
    assert expected == read_csv(path)


def test_csv_report_fills_login_ids(tmp_path: Path) -> None:
    """Login IDs missing from outcomes come from the given mapping."""
    outcomes = result(MemberOutcome("s1", Outcome.EXCLUDED, "suspended"))
    path = write_report(tmp_path / "r.csv", outcomes, login_ids={"s1": "sus@corp"})
    assert ["s1", "sus@corp", "excluded", "suspended", "false", "false"] == read_csv(path)[1]


def test_json_report_shape(tmp_path: Path) -> None:
    """A JSON report holds the plan ID, times, outcome counts (zeros too) and one row each."""
    outcomes = result(
        MemberOutcome("=m1", Outcome.REQUESTED, None, False, True, "a@x"),
        MemberOutcome("x", Outcome.EXCLUDED, "unknown_member"),
    )
    path = write_report(tmp_path / "r.JSON", outcomes)
    expected = {
        "plan_id": "plan-1",
        "started_at": AT.isoformat(),
        "finished_at": AT.isoformat(),
        "outcomes": {"reset": 0, "requested": 1, "excluded": 1, "failed": 0},
        "rows": [
            {
                "member_id": "=m1",
                "login_id": "a@x",
                "outcome": "requested",
                "reason": None,
                "sessions_revoked": False,
                "notified": True,
            },
            {
                "member_id": "x",
                "login_id": "",
                "outcome": "excluded",
                "reason": "unknown_member",
                "sessions_revoked": False,
                "notified": False,
            },
        ],
    }
    assert expected == json.loads(path.read_text(encoding="utf-8"))


def test_report_of_a_real_apply_has_no_secret(
    tmp_path: Path, cheap_hasher: argon2.PasswordHasher
) -> None:
    """A report of a force change that delivers its password holds no password or hash."""
    service = open_service(directory(), hasher=cheap_hasher)
    policy = ResetPolicy(ResetMode.FORCE_CHANGE, new_password=PASSWORD, deliver_password=True)
    plan = service.plan(ALL, policy, actor="admin")
    applied = service.apply(plan, confirm=plan.confirmation)
    logins = {m.member_id: m.login_id for m in directory()}
    for name in ("r.csv", "r.json"):
        text = write_report(tmp_path / name, applied, plan=plan, login_ids=logins).read_text()
        assert (False, False) == (PASSWORD in text, "$argon2" in text)
    rows = list(report_rows(applied, plan=plan, login_ids=logins))
    assert sorted(logins) == sorted(r["member_id"] for r in rows)
    assert all(r["login_id"] for r in rows)


def test_existing_report_is_replaced_without_leftovers(tmp_path: Path) -> None:
    """Writing over a report replaces it and leaves no temporary file."""
    path = tmp_path / "r.csv"
    path.write_text("old")
    write_report(path, result(MemberOutcome("m1", Outcome.RESET, login_id="a@x")))
    assert (["r.csv"], "member_id") == (os.listdir(tmp_path), read_csv(path)[0][0])


def test_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the final rename fails the error propagates and the temporary file is removed."""

    def refuse(source: str, target: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        write_report(tmp_path / "r.json", result())
    assert [] == os.listdir(tmp_path)


@pytest.mark.parametrize("name", ["r.txt", "r", "r.csv.gz"])
def test_report_suffix_must_be_csv_or_json(tmp_path: Path, name: str) -> None:
    """Only .csv and .json reports are written."""
    with pytest.raises(InvalidInputError, match=r"\.csv or \.json"):
        check_report_path(tmp_path / name)


def test_report_directory_must_exist(tmp_path: Path) -> None:
    """A report in a missing directory is refused before anything is written."""
    with pytest.raises(InvalidInputError, match="no directory"):
        check_report_path(tmp_path / "missing" / "r.csv")
