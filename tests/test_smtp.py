"""Notices by mail (issue 5): the SMTP transport against a real server on 127.0.0.1.

The server is aiosmtpd, started in this process (``tests/smtp_server.py``);
what it received is parsed back and checked: headers, both parts, the
encodings of Korean and Japanese text, and where secrets appear.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import argon2
import attrs
import pytest
from argon2.profiles import CHEAPEST

from bulkreset import ALL, Member, Notice, NoticeKind, ResetMode, ResetPolicy, ResetService
from bulkreset.adapters.smtp import (
    DEFAULT_TEMPLATES,
    MessageTemplate,
    MessageTemplates,
    SmtpTransport,
    message_id,
    notice_email,
)
from bulkreset.adapters.sqlite import open_service
from bulkreset.errors import (
    InvalidInputError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
)

from .conftest import FakeClock
from .smtp_server import PASSWORD as SMTP_PASSWORD
from .smtp_server import USER as SMTP_USER
from .smtp_server import smtp_server

AT = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
TOKEN = "TOKEN-Zq8xV3mK9pLr2WcN7aTy5Hb1JdFg4SeU6oQiE0"
PASSWORD = "PASSWORD-Harbor-42-lanterns"
LINK = "https://accounts.example.com/reset?token={token}"


def request(**changes: Any) -> Notice:
    notice = Notice(
        "m1",
        NoticeKind.CHANGE_REQUEST,
        token=TOKEN,
        expires_at=AT + timedelta(hours=24),
        idempotency_key="plan-1:m1:change_request",
        recipient="mina@corp.example",
        actor="admin",
        issued_at=AT,
        plan_id="plan-1",
        name="Mina Kim",
    )
    return attrs.evolve(notice, **changes)


def reset(**changes: Any) -> Notice:
    notice = Notice(
        "m1",
        NoticeKind.PASSWORD_RESET,
        idempotency_key="plan-1:m1:password_reset",
        recipient="mina@home.example",
        actor="admin",
        issued_at=AT,
        plan_id="plan-1",
        name="Mina Kim",
    )
    return attrs.evolve(notice, **changes)


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    return str(text.get_content()), str(html.get_content())


def subject(message: EmailMessage) -> str:
    return str(make_header(decode_header(str(message["Subject"]))))


# ---------------------------------------------------------------- messages


@pytest.mark.parametrize(
    ("locale", "greeting", "subject_text"),
    [
        ("en", "Hello 김민아,", "Please set a new password"),
        ("ko", "김민아 님, 안녕하세요.", "새 비밀번호를 설정해 주세요"),
        ("ja", "김민아 様", "新しいパスワードを設定してください"),
        ("ko-KR", "김민아 님, 안녕하세요.", "새 비밀번호를 설정해 주세요"),
        ("pt-BR", "Hello 김민아,", "Please set a new password"),  # no Portuguese: English
    ],
)
def test_a_change_request_arrives_in_the_member_language(
    locale: str, greeting: str, subject_text: str
) -> None:
    """Headers, a plain and an HTML part, UTF-8 text, through a real server."""
    notice = request(locale=locale, name="김민아")
    with (
        smtp_server() as box,
        SmtpTransport("127.0.0.1", box.port, sender="it@corp.example", link_template=LINK) as smtp,
    ):
        smtp(notice)
    [message] = box.messages
    assert [("it@corp.example", ["mina@corp.example"])] == box.envelopes
    assert "mina@corp.example" == message["To"]
    assert subject_text == subject(message)
    assert message_id(notice, "it@corp.example") == message["Message-ID"]
    assert message["Date"]
    assert "auto-generated" == message["Auto-Submitted"]
    assert {"ko-KR": "ko", "pt-BR": "en"}.get(locale, locale) == message["Content-Language"]
    text, html = parts(message)
    assert text.startswith(greeting)
    link = LINK.format(token=TOKEN)
    assert link in text
    assert f'<a href="{link}">' in html
    assert "2026-12-01 09:00 UTC" in text  # the expiry, with its time zone
    for part in (message.get_body(("plain",)), message.get_body(("html",))):
        assert part is not None
        assert "utf-8" == part.get_content_charset()


def test_a_password_reset_says_who_and_when_and_carries_the_password_only_if_asked() -> None:
    """R4 / ASVS 2.5.5: who reset it and when; the password only with deliver_password."""
    zone = ZoneInfo("Asia/Seoul")
    with (
        smtp_server() as box,
        SmtpTransport("127.0.0.1", box.port, sender="it@corp.example", zone=zone) as smtp,
    ):
        smtp(reset(locale="ja"))
        smtp(reset(password=PASSWORD, idempotency_key="plan-2:m1:password_reset"))
    without, with_password = box.messages
    text, _ = parts(without)
    assert "パスワードがリセットされました" == subject(without)
    assert "管理者（admin）が 2026-11-30 18:00 KST (UTC+09:00) に" in text
    assert PASSWORD not in without.as_string()
    text, html = parts(with_password)
    assert f"Your temporary password is: {PASSWORD}" in text
    assert PASSWORD in html
    assert "2026-11-30 18:00 KST (UTC+09:00)" in text


@pytest.mark.parametrize("kind", list(NoticeKind))
@pytest.mark.parametrize("language", ["en", "ko", "ja"])
def test_no_template_shows_a_secret_outside_its_place(kind: NoticeKind, language: str) -> None:
    """The token only in the link, the password only in its line; never in a header."""
    notice = (request if kind is NoticeKind.CHANGE_REQUEST else reset)(locale=language)
    if kind is NoticeKind.PASSWORD_RESET:
        notice = attrs.evolve(notice, password=PASSWORD)
    message = notice_email(notice, sender="it@corp.example", link_template=LINK)
    secret = TOKEN if kind is NoticeKind.CHANGE_REQUEST else PASSWORD
    for header, value in message.items():
        assert secret not in str(value), header
    text, html = parts(message)
    assert 1 == text.count(secret)
    assert (2 if kind is NoticeKind.CHANGE_REQUEST else 1) == html.count(secret)  # href + text
    other = PASSWORD if kind is NoticeKind.CHANGE_REQUEST else TOKEN
    assert other not in message.as_string()
    template = DEFAULT_TEMPLATES[kind, language]
    assert "$link" not in template.subject
    assert "$password" not in template.subject


def test_names_are_escaped_in_html_and_odd_fields_still_make_a_mail() -> None:
    """A display name with markup is text in the HTML part; missing fields have fallbacks."""
    message = notice_email(
        request(name='<script>alert("x")</script>', expires_at=None),
        sender="no-domain@localhost",
    )
    text, html = parts(message)
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert TOKEN in text  # without a link template: the bare code
    bare = notice_email(reset(name="", issued_at=None), sender="it@corp.example")
    assert parts(bare)[0].startswith("Hello mina@home.example,")
    with pytest.raises(PermanentDeliveryError, match="no mail address"):
        notice_email(reset(recipient=None), sender="it@corp.example")
    with pytest.raises(PermanentDeliveryError):
        notice_email(reset(recipient="+821000000001"), sender="it@corp.example")
    with pytest.raises(InvalidInputError, match="token"):
        notice_email(request(token=None), sender="it@corp.example")


def test_a_host_replaces_a_template() -> None:
    """MessageTemplates(overrides): a host's own wording; a subject may not carry a secret."""
    own = MessageTemplate(
        subject="Action needed",
        text="Hi $name, open $link before $expires.",
        html="<p>Hi $name, open <a href='$link'>this link</a> before $expires.</p>",
    )
    templates = MessageTemplates({(NoticeKind.CHANGE_REQUEST, "en"): own})
    message = notice_email(request(), sender="it@corp.example", templates=templates)
    assert "Action needed" == message["Subject"]
    assert f"Hi Mina Kim, open {TOKEN} before 2026-12-01 09:00 UTC." == parts(message)[0].strip()
    leaky = attrs.evolve(own, subject="Your code: $link")
    with pytest.raises(InvalidInputError, match="subject"):
        MessageTemplates({(NoticeKind.CHANGE_REQUEST, "en"): leaky})
    broken = attrs.evolve(own, text="Hi ${name")
    with pytest.raises(InvalidInputError, match="placeholder"):
        MessageTemplates({(NoticeKind.CHANGE_REQUEST, "de"): broken})


# ---------------------------------------------------------------- transport


def test_construction_makes_no_connection_and_checks_its_arguments() -> None:
    """No network I/O at import or construction; bad arguments are refused up front."""
    transport = SmtpTransport(
        "mail.invalid", sender="it@corp.example", security="tls", username="u", password="pw"
    )
    assert 465 == transport.port
    assert "pw" not in repr(transport)
    transport.close()  # nothing to close
    for bad in (
        {"security": "ssl"},
        {"port": 0},
        {"port": True},
        {"sender": "nobody"},
        {"username": "u"},
        {"timeout": 0},
        {"link_template": "https://x.example/reset"},
        {"username": "u", "password": "pw"},  # a login in clear text to a remote host
    ):
        options: dict[str, Any] = {"sender": "it@corp.example", **bad}
        with pytest.raises(InvalidInputError):
            SmtpTransport("mail.example", **options)
    with pytest.raises(InvalidInputError):
        SmtpTransport("", sender="it@corp.example")


def test_one_connection_serves_a_batch() -> None:
    """The connection opens with the first message and is reused for the rest."""
    with smtp_server() as box:
        with SmtpTransport("127.0.0.1", box.port, sender="it@corp.example") as smtp:
            for i in range(5):
                smtp(request(idempotency_key=f"plan-1:m{i}:change_request"))
        assert (5, 1) == (len(box.messages), box.sessions)


@pytest.mark.parametrize("security", ["starttls", "tls"])
def test_tls_and_login(security: str) -> None:
    """STARTTLS and implicit TLS with a login; a wrong password stops the run, sends nothing."""
    with smtp_server(security=security, login=True) as box:
        options: dict[str, Any] = {
            "sender": "it@corp.example",
            "security": security,
            "ssl_context": box.client_context,
            "username": SMTP_USER,
        }
        with SmtpTransport("localhost", box.port, password=SMTP_PASSWORD, **options) as smtp:
            smtp(request())
        assert 1 == len(box.messages)
        with (
            SmtpTransport("localhost", box.port, password="wrong", **options) as smtp,
            pytest.raises(TemporaryDeliveryError) as refused,
        ):
            smtp(request())
        assert (535, True) == (refused.value.code, refused.value.stop_run)
        assert 1 == len(box.messages)


def test_an_untrusted_certificate_is_refused() -> None:
    """The default context checks the certificate: a self-made CA is not trusted."""
    with smtp_server(security="tls") as box:
        with (
            SmtpTransport("localhost", box.port, sender="it@corp.example", security="tls") as smtp,
            pytest.raises(TemporaryDeliveryError, match="unreachable") as failed,
        ):
            smtp(request())
        assert failed.value.stop_run
        assert [] == box.messages


def test_replies_sort_into_temporary_and_permanent() -> None:
    """421/451 are temporary, 550 permanent; the message names the code, never the notice."""
    refuse = {
        "gone@corp.example": "550 5.1.1 no such user",
        "busy@corp.example": "451 4.3.0 try later",
        "closing@corp.example": "421 4.3.2 shutting down",
    }
    with smtp_server(refuse=refuse) as box:
        with SmtpTransport("127.0.0.1", box.port, sender="it@corp.example") as smtp:
            with pytest.raises(PermanentDeliveryError) as gone:
                smtp(request(recipient="gone@corp.example"))
            with pytest.raises(TemporaryDeliveryError) as busy:
                smtp(request(recipient="busy@corp.example"))
            with pytest.raises(TemporaryDeliveryError) as closing:
                smtp(request(recipient="closing@corp.example"))
            smtp(request())  # a fresh connection after the 421
        assert (550, 451, 421) == (gone.value.code, busy.value.code, closing.value.code)
        assert all(TOKEN not in str(e.value) for e in (gone, busy, closing))
        assert 1 == len(box.messages)


def test_a_server_that_is_not_there() -> None:
    """Nothing listening: a temporary error that stops the run."""
    with smtp_server() as box:
        port = box.port
    with (
        SmtpTransport("127.0.0.1", port, sender="it@corp.example", timeout=2) as smtp,
        pytest.raises(TemporaryDeliveryError) as down,
    ):
        smtp(request())
    assert down.value.stop_run


# ---------------------------------------------------------------- the outbox, end to end

CHEAP = argon2.PasswordHasher.from_parameters(CHEAPEST)


def outbox_service(path: Path, clock: FakeClock, members: int = 6) -> ResetService:
    service = open_service(path, clock=clock, hasher=CHEAP, chunk_size=2)
    service.store.add_members(  # type: ignore[attr-defined]
        [Member("admin", "admin@corp.example", role="admin")]
        + [
            Member(
                f"m{i}",
                f"user{i}@corp.example",
                f"User {i}",
                personal_email=f"user{i}@home.example",
                locale=("en", "ko", "ja")[i % 3],
            )
            for i in range(members)
        ]
    )
    return service


def test_each_notice_is_sent_once_even_after_a_crash_and_a_retry(
    tmp_path: Path, clock: FakeClock
) -> None:
    """An apply that fails half-way and is applied again, then delivery twice: one mail a key."""
    service = outbox_service(tmp_path / "mail.db", clock)
    plan = service.plan(
        ALL,
        ResetPolicy(ResetMode.FORCE_CHANGE, new_password="Harbor 42 lanterns"),
        actor="admin",
    )
    real_send = service.notifier.send
    calls: list[int] = []

    def crash_once(notices: Any) -> None:
        calls.append(len(notices))
        real_send(notices)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is stopped mid-apply

    service.notifier.send = crash_once  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        service.apply(plan, confirm=plan.confirmation)
    clock.advance(minutes=3)  # the interrupted apply's lease lapses
    service.notifier.send = real_send  # type: ignore[method-assign]
    assert service.apply(plan, confirm=plan.confirmation).ok
    outbox: Any = service.notifier
    with (
        smtp_server() as box,
        SmtpTransport("127.0.0.1", box.port, sender="it@corp.example") as smtp,
    ):
        assert 6 == outbox.deliver(smtp).delivered
        assert 0 == outbox.deliver(smtp).delivered
    ids = sorted(m["Message-ID"] for m in box.messages)
    assert 6 == len(set(ids)) == len(ids)
    assert {f"user{i}@home.example" for i in range(6)} == {m["To"] for m in box.messages}
    languages = {str(m["To"]): str(m["Content-Language"]) for m in box.messages}
    assert "ko" == languages["user1@home.example"]  # each in the member's language
    assert "비밀번호가 재설정되었습니다" == subject(
        next(m for m in box.messages if m["To"] == "user1@home.example")
    )
    assert "ja" == languages["user2@home.example"]
    service.store.close()  # type: ignore[attr-defined]


def test_refused_and_deferred_notices_in_the_outbox(tmp_path: Path, clock: FakeClock) -> None:
    """550: failed for good, the others go; 421: pending, retried after its backoff."""
    service = outbox_service(tmp_path / "mail.db", clock, members=3)
    plan = service.plan(ALL, ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    service.apply(plan, confirm=plan.confirmation)
    outbox: Any = service.notifier
    refuse = {
        "user0@corp.example": "550 5.1.1 no such user",
        "user1@corp.example": "451 4.3.0 try later",
    }
    with smtp_server(refuse=refuse) as box:
        with SmtpTransport("127.0.0.1", box.port, sender="it@corp.example") as smtp:
            report = outbox.deliver(smtp)
        assert (1, [("m0", "SMTP 550")], [("m1", "SMTP 451")]) == (
            report.delivered,
            [(k.split(":")[1], r) for k, r in report.failed],
            [(k.split(":")[1], r) for k, r in report.deferred],
        )
        assert ["m1"] == [n.member_id for n in outbox.pending()]
        box.refuse.clear()
        with SmtpTransport("127.0.0.1", box.port, sender="it@corp.example") as smtp:
            assert 0 == outbox.deliver(smtp).delivered  # not due yet
            clock.advance(minutes=1)
            assert 1 == outbox.deliver(smtp).delivered
    assert ["user2@corp.example", "user1@corp.example"] == [m["To"] for m in box.messages]
    statuses = {row["member_id"]: row["status"] for row in outbox.listing()}
    assert {"m0": "failed", "m1": "delivered", "m2": "delivered"} == statuses
    service.store.close()  # type: ignore[attr-defined]


DELIVER = """
import json, sys
from bulkreset.adapters.smtp import SmtpTransport
from bulkreset.adapters.sqlite import open_service
service = open_service(sys.argv[1])
with SmtpTransport("127.0.0.1", int(sys.argv[2]), sender="it@corp.example") as smtp:
    report = service.notifier.deliver(smtp)
print(json.dumps(report.delivered))
"""


def test_two_processes_delivering_at_once_never_send_a_notice_twice(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Each notice is claimed by one deliverer: every Message-ID arrives once."""
    path = tmp_path / "mail.db"
    service = outbox_service(path, clock, members=60)
    plan = service.plan(ALL, ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    service.apply(plan, confirm=plan.confirmation)
    service.store.close()  # type: ignore[attr-defined]
    with smtp_server() as box:
        children = [
            subprocess.Popen(
                [sys.executable, "-c", DELIVER, str(path), str(box.port)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        counts = []
        for child in children:
            out, err = child.communicate(timeout=120)
            assert 0 == child.returncode, err
            counts.append(json.loads(out))
    ids = [m["Message-ID"] for m in box.messages]
    assert 60 == sum(counts) == len(ids) == len(set(ids))


def test_a_connection_dropped_mid_batch_defers_that_notice_and_the_rest_go(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The server hangs up on one message: it stays pending with a retry time; the
    transport reconnects for the next ones."""
    service = outbox_service(tmp_path / "mail.db", clock, members=3)
    plan = service.plan(ALL, ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    service.apply(plan, confirm=plan.confirmation)
    outbox: Any = service.notifier
    with smtp_server() as box:
        box.drop.add("user1@corp.example")
        with SmtpTransport("127.0.0.1", box.port, sender="it@corp.example") as smtp:
            report = outbox.deliver(smtp)
        assert (2, False) == (report.delivered, report.stopped)
        assert [("m1", "SMTP connection lost (SMTPServerDisconnected)")] == [
            (key.split(":")[1], reason) for key, reason in report.deferred
        ]
        row = next(r for r in outbox.listing() if r["member_id"] == "m1")
        assert ("deferred", clock.now + timedelta(minutes=1)) == (row["status"], row["retry_at"])
        assert TOKEN not in json.dumps(outbox.listing(), default=str)
        assert 2 == box.sessions  # reconnected after the drop
        box.drop.clear()
        clock.advance(minutes=1)
        with SmtpTransport("127.0.0.1", box.port, sender="it@corp.example") as smtp:
            assert 1 == outbox.deliver(smtp).delivered
    assert ["user0@corp.example", "user2@corp.example", "user1@corp.example"] == [
        m["To"] for m in box.messages
    ]
    service.store.close()  # type: ignore[attr-defined]


def test_a_refused_sender_stops_the_run_and_keeps_every_notice(
    tmp_path: Path, clock: FakeClock
) -> None:
    """MAIL FROM refused (here: STARTTLS required) is the server's, not a notice's: the run
    stops, every notice stays pending with its secret, and a corrected run delivers them."""
    service = outbox_service(tmp_path / "mail.db", clock, members=3)
    plan = service.plan(ALL, ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    service.apply(plan, confirm=plan.confirmation)
    outbox: Any = service.notifier
    with smtp_server(security="starttls") as box:
        with SmtpTransport("localhost", box.port, sender="it@corp.example") as smtp:
            report = outbox.deliver(smtp)
        assert (0, (), True) == (report.delivered, report.failed, report.stopped)
        assert [("SMTP 530")] == [reason for _, reason in report.deferred]
        assert 3 == len(outbox.pending())
        clock.advance(minutes=1)
        with SmtpTransport(
            "localhost",
            box.port,
            sender="it@corp.example",
            security="starttls",
            ssl_context=box.client_context,
        ) as smtp:
            assert 3 == outbox.deliver(smtp).delivered
    service.store.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "recipient",
    [
        "victim@home.example, evil@attacker.example",
        "Evil <evil@attacker.example>",
        "ls\u2028x@home.example",
        "x@home.example\r\nBcc: evil@attacker.example",
        "no-at-sign",
    ],
)
def test_a_recipient_must_be_one_address(recipient: str) -> None:
    """Never more (or other) addresses than the one the notice names: refused for good."""
    with smtp_server() as box:
        with (
            SmtpTransport("127.0.0.1", box.port, sender="it@corp.example") as smtp,
            pytest.raises(PermanentDeliveryError, match="mail address"),
        ):
            smtp(reset(recipient=recipient, password=PASSWORD))
        assert [] == box.envelopes


def test_international_addresses() -> None:
    """An IDN domain is sent IDNA-encoded; a Unicode local part needs SMTPUTF8 (offered)."""
    with (
        smtp_server() as box,
        SmtpTransport("127.0.0.1", box.port, sender="it@corp.example") as smtp,
    ):
        smtp(reset(recipient="mina@bücher.example"))
        smtp(reset(recipient="민아@corp.example", idempotency_key="plan-1:m2:password_reset"))
    assert ["mina@xn--bcher-kva.example", "민아@corp.example"] == [
        envelope[1][0] for envelope in box.envelopes
    ]


def test_backoff_never_overflows_and_gives_up_in_the_end(tmp_path: Path, clock: FakeClock) -> None:
    """Retries wait at most max_backoff; after max_attempts the notice fails, secret erased."""
    service = outbox_service(tmp_path / "mail.db", clock, members=1)
    plan = service.plan(ALL, ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    service.apply(plan, confirm=plan.confirmation)
    outbox: Any = service.notifier

    def busy(notice: Notice) -> None:
        raise TemporaryDeliveryError("SMTP 451", code=451)

    reports = []
    for _ in range(4):
        reports.append(outbox.deliver(busy, max_attempts=4))
        clock.advance(hours=7)
    assert [1, 1, 1, 0] == [len(r.deferred) for r in reports]
    report = reports[-1]
    assert 1 == len(report.failed)
    assert "gave up after 4 attempts (SMTP 451)" == report.failed[0][1]
    assert [] == outbox.pending()
    assert "failed" == outbox.listing()[0]["status"]
    service.store.close()  # type: ignore[attr-defined]


def test_a_connection_left_idle_is_checked_before_it_is_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server hung up on an idle client: the transport notices and reconnects."""
    monkeypatch.setattr("bulkreset.adapters.smtp._IDLE_CHECK", 0.2)
    with smtp_server(idle_timeout=0.5) as box:
        with SmtpTransport("127.0.0.1", box.port, sender="it@corp.example") as smtp:
            smtp(request())
            time.sleep(1.0)
            smtp(request(idempotency_key="plan-1:m2:change_request"))
        assert (2, 2) == (len(box.messages), box.sessions)


def test_the_claim_covers_the_send_not_the_wait_before_it(tmp_path: Path, clock: FakeClock) -> None:
    """A deliverer waiting out --rate has not claimed its next notice yet: another
    deliverer meanwhile may send it, and it is not sent twice."""
    service = outbox_service(tmp_path / "mail.db", clock, members=2)
    plan = service.plan(ALL, ResetPolicy(ResetMode.REQUEST_CHANGE), actor="admin")
    service.apply(plan, confirm=plan.confirmation)
    outbox: Any = service.notifier
    sent: list[str] = []

    def other_deliverer_runs(seconds: float) -> None:
        clock.advance(minutes=6)  # longer than a claim lasts
        outbox.deliver(lambda n: sent.append(n.idempotency_key))

    outbox.deliver(
        lambda n: sent.append(n.idempotency_key), rate=1 / 400, sleep=other_deliverer_runs
    )
    assert 2 == len(sent) == len(set(sent))
    service.store.close()  # type: ignore[attr-defined]
