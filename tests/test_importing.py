"""Reading member files: the native format and Google Workspace exports (SPEC §8)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from bulkreset import Member, MemberStatus, Role, SignInMethod
from bulkreset._importing import NATIVE_COLUMNS, load_members, parse_members
from bulkreset.errors import ImportFormatError

from .conftest import shared_data_file

HEADER = ",".join(NATIVE_COLUMNS)

GOOGLE_HEADER = (
    "First Name [Required],Last Name [Required],Email Address [Required],"
    "Password [Required],Status [READ ONLY],Recovery Email,Home Secondary Email,"
    "Recovery Phone [MUST BE IN THE E.164 FORMAT],Mobile Phone,Home Address,Employee ID"
)


def native(*rows: str) -> bytes:
    return ("\n".join([HEADER, *rows]) + "\n").encode("utf-8")


def google(*rows: str) -> bytes:
    return ("\n".join([GOOGLE_HEADER, *rows]) + "\n").encode("utf-8")


def import_error(data: bytes | str, **options: object) -> ImportFormatError:
    with pytest.raises(ImportFormatError) as caught:
        parse_members(data, **options)  # type: ignore[arg-type]
    return caught.value


def test_native_row_becomes_member() -> None:
    """Every native column lands in the Member field of the same name."""
    data = native("m1,ada@corp.example,Ada,quick_login,+821000,ada@home.example,suspended,admin")
    expected = [
        Member(
            "m1",
            "ada@corp.example",
            "Ada",
            sign_in=SignInMethod.QUICK_LOGIN,
            mobile_phone="+821000",
            personal_email="ada@home.example",
            status=MemberStatus.SUSPENDED,
            role=Role.ADMIN,
        )
    ]
    assert expected == parse_members(data)


def test_blank_optional_cells_take_defaults() -> None:
    """Blank name, sign_in, contacts, status and role cells take Member's defaults."""
    assert [Member("m1", "a@x")] == parse_members(native("m1,a@x,,,,,,"))


def test_short_row_is_padded_with_blanks() -> None:
    """A row with fewer cells than the header reads the missing ones as blank."""
    assert [Member("m1", "a@x")] == parse_members(native("m1,a@x"))


def test_byte_order_mark_is_accepted() -> None:
    """A UTF-8 byte order mark before the header is ignored, in bytes and in text."""
    data = native("m1,a@x,Zoë,,,,,")
    expected = [Member("m1", "a@x", "Zoë")]
    assert expected == parse_members(b"\xef\xbb\xbf" + data)
    assert expected == parse_members("\ufeff" + data.decode("utf-8"))


def test_every_field_and_header_is_trimmed() -> None:
    """Surrounding whitespace is removed from header names and every cell."""
    header = ", ".join(f" {c} " for c in NATIVE_COLUMNS)
    data = f"{header}\n  m1 , a@x ,\tAda ,  password , +8210 , ,  active , member \n"
    expected = [Member("m1", "a@x", "Ada", mobile_phone="+8210")]
    assert expected == parse_members(data.encode())


def test_login_ids_differing_only_in_case_are_duplicates() -> None:
    """A@x and a@x are one login ID (case folding): the second row is refused."""
    error = import_error(native("m1,A@x,,,,,,", "m2,a@x,,,,,,"))
    assert 3 == error.row
    assert "already used in row 2" in str(error)


def test_nfkc_equivalent_login_ids_are_duplicates() -> None:
    """A full-width login ID equals its ASCII form after NFKC."""
    assert 3 == import_error(native("m1,ab@x,,,,,,", "m2,ａｂ@x,,,,,,")).row


def test_dotless_i_is_a_different_login_id() -> None:
    """rina@x and rına@x stay apart under case folding, so both are imported."""
    members = parse_members(native("m1,rina@x,,,,,,", "m2,rına@x,,,,,,"))
    assert ["rina@x", "rına@x"] == [m.login_id for m in members]


def test_duplicate_member_id_is_refused() -> None:
    """Two rows with one member_id are an error naming the second row."""
    error = import_error(native("m1,a@x,,,,,,", "m1,b@x,,,,,,"))
    assert 3 == error.row


def test_unknown_enum_value_names_its_row() -> None:
    """An unknown status is refused with the row number a spreadsheet shows."""
    error = import_error(native("m1,a@x,,,,,active,", "m2,b@x,,,,,deleted,"))
    assert 3 == error.row
    assert str(error).startswith("row 3: status must be one of active, suspended, pending")


@pytest.mark.parametrize(
    ("cells", "column"),
    [("password,,,active,boss", "role"), ("sso,,,active,member", "sign_in")],
)
def test_unknown_role_or_sign_in_is_refused(cells: str, column: str) -> None:
    """Unknown sign_in and role values are refused too, naming the column."""
    error = import_error(native(f"m1,a@x,,{cells}"))
    assert (2, True) == (error.row, column in str(error))


def test_enum_values_are_case_sensitive() -> None:
    """The native format's values are lower case, as written in the spec."""
    assert 2 == import_error(native("m1,a@x,,,,,Active,")).row


def test_multi_line_cell_counts_as_one_spreadsheet_row() -> None:
    """A quoted cell spanning lines is one row, so later rows keep their spreadsheet number."""
    data = (
        f"{HEADER},note\n"
        'm1,a@x,Ada,,,,,,"first line\nsecond line\nthird line"\n'
        "m2,b@x,Bo,,,,nope,,\n"
    ).encode()
    assert 3 == import_error(data).row


def test_blank_lines_keep_their_row_numbers() -> None:
    """A blank line is skipped, but it still takes a row number, as in a spreadsheet."""
    data = f"{HEADER}\nm1,a@x,,,,,,\n\n,,,,,,,\nm2,b@x,,,,,bad,\n".encode()
    assert 5 == import_error(data).row


def test_missing_column_is_a_file_error() -> None:
    """A header without a native column is refused for the whole file (no row)."""
    data = b"member_id,login_id,name\nm1,a@x,Ada\n"
    error = import_error(data)
    assert error.row is None
    assert "sign_in" in str(error)


def test_repeated_column_is_refused() -> None:
    """A header naming a column twice is refused at row 1."""
    assert 1 == import_error(f"{HEADER},role\n".encode()).row


@pytest.mark.parametrize("row", [",a@x,,,,,,", "m1, ,,,,,,"])
def test_empty_required_cell_is_refused(row: str) -> None:
    """An empty member_id or login_id cell is refused with its row."""
    assert 2 == import_error(native(row)).row


def test_extra_cells_are_refused() -> None:
    """A row with more cells than the header is refused."""
    assert 2 == import_error(native("m1,a@x,,,,,,,surprise")).row


def test_value_member_refuses_is_reported_with_row() -> None:
    """A value Member refuses (a control character in a name) becomes an ImportFormatError."""
    error = import_error(native("m1,a@x,Ada\x07,,,,,"))
    assert 2 == error.row
    assert "control character" in str(error)


def test_invalid_utf8_is_refused() -> None:
    """Bytes that are not UTF-8 are refused for the whole file."""
    error = import_error(native("m1,a@x,Zo\xeb,,,,,").replace(b"\xc3\xab", b"\xeb"))
    assert "not UTF-8" in str(error)


def test_latin1_file_is_refused() -> None:
    """A Latin-1 file is not silently misread."""
    data = (HEADER + "\nm1,a@x,Zoë,,,,,\n").encode("latin-1")
    assert "line 2" in str(import_error(data))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\n\n", "blank"),
        (HEADER.encode() + b"\nm1,a\x00@x,,,,,,\n", "NUL"),
        (HEADER.encode() + b'\nm1,"a"x,,,,,,\n', "malformed"),
    ],
)
def test_unreadable_files_are_refused(data: bytes, message: str) -> None:
    """Empty files, blank headers, NUL bytes and broken quoting are refused."""
    assert message in str(import_error(data))


def test_unknown_format_is_refused() -> None:
    """Only the named formats are read."""
    assert "unknown format" in str(import_error(native(), format="excel"))


def test_header_only_file_imports_nothing() -> None:
    """A file with only a header is valid and holds no members."""
    assert [] == parse_members(native())


def test_google_export_maps_columns() -> None:
    """Google columns map to Member: Employee ID, names, recovery contacts, status."""
    data = google(
        "Haeun,Cho,haeun@corp.example,****,Suspended,haeun@home.example,,+8210,,,E1",
        "Jiwoo,,jiwoo@corp.example,****,Active,,jiwoo@alt.example,,+8299,,",
    )
    expected = [
        Member(
            "E1",
            "haeun@corp.example",
            "Haeun Cho",
            mobile_phone="+8210",
            personal_email="haeun@home.example",
            status=MemberStatus.SUSPENDED,
        ),
        Member(
            "jiwoo@corp.example",
            "jiwoo@corp.example",
            "Jiwoo",
            mobile_phone="+8299",
            personal_email="jiwoo@alt.example",
        ),
    ]
    assert expected == parse_members(data, format="google-workspace")


def test_google_export_without_optional_columns() -> None:
    """Only the name, email and status columns are needed."""
    data = b"First Name [Required],Last Name [Required],Email Address [Required],"
    data += b"Status [READ ONLY]\nAda,Lee,ada@x,Active\n"
    expected = [Member("ada@x", "ada@x", "Ada Lee")]
    assert expected == parse_members(data, format="google-workspace")


def test_google_unknown_status_names_row_after_multi_line_address() -> None:
    """An unknown Google status is refused with its spreadsheet row, past a multi-line address."""
    data = google(
        'Ada,Lee,ada@x,****,Active,,,,,"1 Main St\nSpringfield",E1',
        "Bo,Kim,bo@x,****,Archived,,,,,,E2",
    )
    error = import_error(data, format="google-workspace")
    assert 3 == error.row
    assert "Status [READ ONLY]" in str(error)


def test_google_missing_email_column() -> None:
    """A Google export without its email column is refused for the whole file."""
    data = b"First Name [Required],Last Name [Required],Status [READ ONLY]\nA,B,Active\n"
    error = import_error(data, format="google-workspace")
    assert (None, True) == (error.row, "Email Address [Required]" in str(error))


def test_google_native_header_is_refused() -> None:
    """A native file read as a Google export is refused, not misread."""
    assert import_error(native("m1,a@x,,,,,,"), format="google-workspace").row is None


def test_admin_option_promotes_by_login_or_id() -> None:
    """--admin marks members found by member ID or case-folded login ID as admins."""
    data = google("Ada,Lee,Ada@x,****,Active,,,,,,E1", "Bo,Kim,bo@x,****,Active,,,,,,E2")
    members = parse_members(data, format="google-workspace", admins=["ADA@X", " E2 "])
    assert [Role.ADMIN, Role.ADMIN] == [m.role for m in members]


def test_admin_option_keeps_super_admin() -> None:
    """A super admin named by --admin stays a super admin."""
    members = parse_members(native("m1,a@x,,,,,,super_admin"), admins=["m1"])
    assert Role.SUPER_ADMIN == members[0].role


def test_admin_option_must_match_a_member() -> None:
    """An --admin value that matches no imported member is refused."""
    assert "matches no imported member" in str(import_error(native("m1,a@x,,,,,,"), admins=["x"]))


def test_load_members_reads_a_path(tmp_path: Path) -> None:
    """load_members reads the file at a path."""
    path = tmp_path / "members.csv"
    path.write_bytes(native("m1,a@x,,,,,,"))
    assert [Member("m1", "a@x")] == load_members(path)


def _shared(name: str) -> Path:
    return shared_data_file(name)


def test_shared_members_file_imports_whole() -> None:
    """The invented 2,000-member directory imports row for row."""
    path = _shared("members.csv")
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    members = load_members(path)
    assert [r["member_id"] for r in rows] == [m.member_id for m in members]
    assert [r["role"] for r in rows] == [m.role.value for m in members]


def test_shared_google_export_imports_whole() -> None:
    """The invented 600-user Google export imports, suspended users included."""
    path = _shared("google-workspace-users.csv")
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    members = load_members(path, format="google-workspace")
    assert [r["Employee ID"] for r in rows] == [m.member_id for m in members]
    suspended = sum(r["Status [READ ONLY]"] == "Suspended" for r in rows)
    assert suspended == sum(m.status is MemberStatus.SUSPENDED for m in members)


def test_a_google_export_read_as_native_suggests_the_format() -> None:
    """The missing-columns error names the format the header does match."""
    from bulkreset._importing import GOOGLE_COLUMNS, parse_members
    from bulkreset.errors import ImportFormatError

    header = ",".join(GOOGLE_COLUMNS)
    with pytest.raises(ImportFormatError, match="--format google-workspace"):
        parse_members(header + "\n", format="native")


def test_an_optional_locale_column_sets_each_member_language() -> None:
    """The native header may end with locale; blank is English, ko_KR reads as ko-KR."""
    text = (
        "member_id,login_id,name,sign_in,mobile_phone,personal_email,status,role,locale\n"
        "k1,k1@x,김민아,,,,,,ko\n"
        "j1,j1@x,山田,,,,,,ja\n"
        "e1,e1@x,Eve,,,,,,\n"
        "b1,b1@x,Bia,,,,,,pt_BR\n"
    )
    assert ["ko", "ja", "en", "pt-BR"] == [m.locale for m in parse_members(text)]
    found = import_error(text.replace("pt_BR", "Portuguese (Brazil)"))
    assert ("locale" in str(found), 5) == (True, found.row)
