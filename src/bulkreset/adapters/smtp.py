"""Deliver notices by mail: an SMTP transport on the standard library.

:class:`SmtpTransport` turns each :class:`~bulkreset.Notice` into a MIME
message (plain text and HTML, in the member's language) and sends it through
one SMTP server with plain SMTP, STARTTLS (RFC 3207) or implicit TLS (RFC
8314), optional login, one connection reused across a batch, and timeouts.
Nothing touches the network at import or construction: the connection opens
with the first message. Hand it to the SQLite outbox::

    from bulkreset.adapters.smtp import SmtpTransport

    with SmtpTransport("smtp.example.com", 587, security="starttls",
                       username="bulkreset", password=secret,
                       sender="it@example.com",
                       link_template="https://accounts.example.com/reset?token={token}") as smtp:
        report = service.notifier.deliver(smtp, rate=10)

Failures are sorted the way RFC 5321 §4.2.1 sorts reply codes: a 4xx reply,
a dropped connection or a timeout raises
:class:`~bulkreset.errors.TemporaryDeliveryError` (the outbox retries later,
with exponential backoff); a 5xx reply or a refused recipient raises
:class:`~bulkreset.errors.PermanentDeliveryError` (the outbox marks that
notice failed and goes on with the others). Neither message quotes the
notice or the server's text, only the reply code.

The messages come from :class:`MessageTemplates` (English, Korean and
Japanese built in); a host replaces any of them. A change request shows
the link (or the bare code without a ``link_template``) and its expiry time
with its time zone; a password-reset notice says who reset the password and
when, and carries the password only when the policy asked for it
(``deliver_password``; OWASP ASVS 4.0.3 2.5.1 advises against it).
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import html
import ipaddress
import re
import smtplib
import ssl
import string
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone, tzinfo
from email.message import EmailMessage
from types import TracebackType
from typing import Literal
from urllib.parse import quote

import attrs

from .._clock import system_clock
from .._model import Notice, NoticeKind
from ..errors import InvalidInputError, PermanentDeliveryError, TemporaryDeliveryError

__all__ = [
    "DEFAULT_TEMPLATES",
    "MessageTemplate",
    "MessageTemplates",
    "SmtpTransport",
    "is_link_template",
    "is_loopback",
    "message_id",
    "notice_email",
]

Security = Literal["none", "starttls", "tls"]
_DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}


@attrs.frozen
class MessageTemplate:
    """One message's subject and bodies, as :class:`string.Template` text.

    Placeholders (``$name`` style; values are HTML-escaped in ``html``):

    - every message: ``$name`` (the member's display name, else their
      address), ``$recipient``;
    - ``PASSWORD_RESET``: ``$actor`` (who reset it), ``$when`` (when, with
      its time zone), ``$password_line`` (the sentence carrying the
      password when the policy delivers it, else one telling how to get it);
    - ``CHANGE_REQUEST``: ``$link`` (the link, or the bare code), ``$expires``
      (the expiry time with its time zone).

    The token and the password reach a message only through ``$link`` and
    ``$password_line``; ``subject`` may use neither.
    """

    subject: str
    text: str
    html: str


_PASSWORD_LINES = {
    "en": (
        "Your temporary password is: $password",
        "Your administrator will give you the new password, or tell you how to get it.",
    ),
    "ko": (
        "임시 비밀번호: $password",
        "새 비밀번호는 관리자가 직접 알려 주거나, 확인하는 방법을 안내해 드립니다.",
    ),
    "ja": (
        "仮パスワード: $password",
        "新しいパスワードは管理者から直接お知らせするか、確認方法をご案内します。",
    ),
}

DEFAULT_TEMPLATES: Mapping[tuple[NoticeKind, str], MessageTemplate] = {
    (NoticeKind.PASSWORD_RESET, "en"): MessageTemplate(
        subject="Your password was reset",
        text=(
            "Hello $name,\n\n"
            "An administrator ($actor) reset your password on $when and signed you out "
            "of every session.\n\n"
            "$password_line\n\n"
            "You will be asked to choose a new password when you next sign in.\n"
            "If you did not expect this, contact your administrator.\n"
        ),
        html=(
            "<p>Hello <bdi>$name</bdi>,</p>\n"
            "<p>An administrator ($actor) reset your password on $when and signed you out "
            "of every session.</p>\n"
            "<p>$password_line</p>\n"
            "<p>You will be asked to choose a new password when you next sign in.<br>\n"
            "If you did not expect this, contact your administrator.</p>\n"
        ),
    ),
    (NoticeKind.CHANGE_REQUEST, "en"): MessageTemplate(
        subject="Please set a new password",
        text=(
            "Hello $name,\n\n"
            "You are asked to set a new password. Use this once, before $expires:\n\n"
            "    $link\n\n"
            "Your current password keeps working until you do.\n"
        ),
        html=(
            "<p>Hello <bdi>$name</bdi>,</p>\n"
            "<p>You are asked to set a new password. Use this once, before $expires:</p>\n"
            '<p><a href="$link">$link</a></p>\n'
            "<p>Your current password keeps working until you do.</p>\n"
        ),
    ),
    (NoticeKind.PASSWORD_RESET, "ko"): MessageTemplate(
        subject="비밀번호가 재설정되었습니다",
        text=(
            "$name 님, 안녕하세요.\n\n"
            "관리자($actor)가 $when에 비밀번호를 재설정하고 모든 세션에서 로그아웃했습니다.\n\n"
            "$password_line\n\n"
            "다음에 로그인할 때 새 비밀번호를 정해야 합니다.\n"
            "요청한 적이 없다면 관리자에게 문의하세요.\n"
        ),
        html=(
            "<p><bdi>$name</bdi> 님, 안녕하세요.</p>\n"
            "<p>관리자($actor)가 $when에 비밀번호를 재설정하고 모든 세션에서 "
            "로그아웃했습니다.</p>\n"
            "<p>$password_line</p>\n"
            "<p>다음에 로그인할 때 새 비밀번호를 정해야 합니다.<br>\n"
            "요청한 적이 없다면 관리자에게 문의하세요.</p>\n"
        ),
    ),
    (NoticeKind.CHANGE_REQUEST, "ko"): MessageTemplate(
        subject="새 비밀번호를 설정해 주세요",
        text=(
            "$name 님, 안녕하세요.\n\n"
            "새 비밀번호를 설정해 주세요. 아래 링크는 $expires까지 한 번만 쓸 수 있습니다.\n\n"
            "    $link\n\n"
            "새 비밀번호를 정하기 전까지는 지금 비밀번호를 계속 쓸 수 있습니다.\n"
        ),
        html=(
            "<p><bdi>$name</bdi> 님, 안녕하세요.</p>\n"
            "<p>새 비밀번호를 설정해 주세요. 아래 링크는 $expires까지 한 번만 쓸 수 "
            "있습니다.</p>\n"
            '<p><a href="$link">$link</a></p>\n'
            "<p>새 비밀번호를 정하기 전까지는 지금 비밀번호를 계속 쓸 수 있습니다.</p>\n"
        ),
    ),
    (NoticeKind.PASSWORD_RESET, "ja"): MessageTemplate(
        subject="パスワードがリセットされました",
        text=(
            "$name 様\n\n"
            "管理者（$actor）が $when にパスワードをリセットし、すべてのセッションから"
            "サインアウトしました。\n\n"
            "$password_line\n\n"
            "次回サインイン時に新しいパスワードを設定してください。\n"
            "心当たりがない場合は管理者にお問い合わせください。\n"
        ),
        html=(
            "<p><bdi>$name</bdi> 様</p>\n"
            "<p>管理者（$actor）が $when にパスワードをリセットし、すべてのセッションから"
            "サインアウトしました。</p>\n"
            "<p>$password_line</p>\n"
            "<p>次回サインイン時に新しいパスワードを設定してください。<br>\n"
            "心当たりがない場合は管理者にお問い合わせください。</p>\n"
        ),
    ),
    (NoticeKind.CHANGE_REQUEST, "ja"): MessageTemplate(
        subject="新しいパスワードを設定してください",
        text=(
            "$name 様\n\n"
            "新しいパスワードを設定してください。次のリンクは $expires まで、"
            "一度だけ使えます。\n\n"
            "    $link\n\n"
            "新しいパスワードを設定するまで、今のパスワードはそのまま使えます。\n"
        ),
        html=(
            "<p><bdi>$name</bdi> 様</p>\n"
            "<p>新しいパスワードを設定してください。次のリンクは $expires まで、"
            "一度だけ使えます。</p>\n"
            '<p><a href="$link">$link</a></p>\n'
            "<p>新しいパスワードを設定するまで、今のパスワードはそのまま使えます。</p>\n"
        ),
    ),
}
"""The built-in messages: every :class:`~bulkreset.NoticeKind` in ``en``, ``ko`` and ``ja``."""


class MessageTemplates:
    """The messages a transport renders, by notice kind and language.

    Args:
        overrides: Templates that replace (or add to) the built-in ones,
            keyed by ``(NoticeKind, language)``; a language is a BCP 47 tag
            such as ``"ko"`` or ``"pt-BR"``.
        password_lines: Per language, the sentence carrying the password
            (``$password``) and the one used when no password is delivered.

    A notice in a language without a template falls back to its primary
    language (``ko-KR`` to ``ko``), then to English.
    """

    def __init__(
        self,
        overrides: Mapping[tuple[NoticeKind, str], MessageTemplate] | None = None,
        *,
        password_lines: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        self._templates = {**DEFAULT_TEMPLATES, **(overrides or {})}
        self._password_lines = {**_PASSWORD_LINES, **(password_lines or {})}
        for (kind, language), template in self._templates.items():
            if _SECRET_PLACEHOLDER.search(template.subject):
                raise InvalidInputError(
                    f"the {kind.value} subject for {language!r} may not carry a secret"
                )
            for part in (template.subject, template.text, template.html):
                _check_template(part, kind=kind, language=language)

    def language(self, kind: NoticeKind, locale: str | None) -> str:
        """The language whose template a notice in *locale* gets."""
        tag = (locale or "en").strip()
        for candidate in (tag, tag.split("-")[0].split("_")[0].lower()):
            if (kind, candidate) in self._templates:
                return candidate
        return "en"

    def render(
        self,
        notice: Notice,
        *,
        link_template: str | None = None,
        zone: tzinfo = timezone.utc,
    ) -> tuple[str, str, str]:
        """``(subject, text, html)`` of *notice*, in its member's language.

        Raises:
            InvalidInputError: a ``CHANGE_REQUEST`` without its token.
        """
        language = self.language(notice.kind, notice.locale)
        template = self._templates[notice.kind, language]
        values = {
            "name": notice.name or notice.recipient or "",
            "recipient": notice.recipient or "",
        }
        secret: dict[str, str] = {}
        if notice.kind is NoticeKind.PASSWORD_RESET:
            with_password, without = self._password_lines.get(language, _PASSWORD_LINES["en"])
            values["actor"] = notice.actor or ""
            values["when"] = _local_time(notice.issued_at or system_clock(), zone)
            if notice.password:
                secret["password_line"] = string.Template(with_password).safe_substitute(
                    password=notice.password
                )
            else:
                values["password_line"] = without
        else:
            if not notice.token:
                raise InvalidInputError("a change request needs its token")
            values["expires"] = _local_time(notice.expires_at, zone) if notice.expires_at else ""
            token = quote(notice.token, safe="")
            secret["link"] = (
                link_template.replace("{token}", token) if link_template else notice.token
            )
        subject = string.Template(template.subject).safe_substitute(values)
        text = string.Template(template.text).safe_substitute({**values, **secret})
        escaped = {k: html.escape(v) for k, v in {**values, **secret}.items()}
        body = string.Template(template.html).safe_substitute(escaped)
        return subject, text, body


_SECRET_PLACEHOLDER = re.compile(r"\$\{?(link|password_line|password)\b")


@functools.cache
def _default_templates() -> MessageTemplates:
    """The built-in templates, checked once."""
    return MessageTemplates()


def _check_template(text: str, *, kind: NoticeKind, language: str) -> None:
    try:
        string.Template(text).substitute({})
    except KeyError:
        return  # placeholders are expected
    except ValueError as exc:
        raise InvalidInputError(
            f"the {kind.value} template for {language!r} has a malformed placeholder"
        ) from exc


def _local_time(moment: datetime, zone: tzinfo) -> str:
    """``2026-12-01 18:00 KST (UTC+09:00)``: a time a member reads, with its zone."""
    local = moment.astimezone(zone)
    offset = local.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    name = local.tzname() or ""
    utc = f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    if minutes == 0 and name in ("", "UTC", "UTC+00:00"):
        label = "UTC"
    elif not name or name.startswith(("UTC", "GMT")) or name[0] in "+-":
        label = utc  # a fixed offset has no name of its own
    else:
        label = f"{name} ({utc})"
    return f"{local:%Y-%m-%d %H:%M} {label}"


def message_id(notice: Notice, sender: str) -> str:
    """The ``Message-ID`` of a notice's mail, derived from its idempotency key.

    A resent notice gets the same ``Message-ID``, so a mail system that drops
    duplicates by ``Message-ID`` drops it (RFC 5322 §3.6.4).
    """
    digest = hashlib.sha256(notice.idempotency_key.encode("utf-8")).hexdigest()[:40]
    domain = sender.rpartition("@")[2] if "@" in sender else "bulkreset.invalid"
    return f"<{digest}@{domain}>"


def notice_email(
    notice: Notice,
    *,
    sender: str,
    templates: MessageTemplates | None = None,
    link_template: str | None = None,
    zone: tzinfo = timezone.utc,
) -> EmailMessage:
    """The mail for one notice: plain text and HTML parts, UTF-8.

    It carries the notice's token or password (in the body only).

    Raises:
        PermanentDeliveryError: the notice has no mail address.
        InvalidInputError: a change request without its token.
    """
    if not notice.recipient:
        raise PermanentDeliveryError("no mail address")
    try:
        recipient = _mail_address(notice.recipient, what="the recipient")
    except ValueError:
        raise PermanentDeliveryError("not one mail address") from None
    templates = templates or _default_templates()
    subject, text, body = templates.render(notice, link_template=link_template, zone=zone)
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Message-ID"] = message_id(notice, sender)
    message["Date"] = email.utils.format_datetime(notice.issued_at or system_clock())
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies, please
    message.set_content(text)
    message.add_alternative(f"<!DOCTYPE html>\n<html><body>\n{body}</body></html>\n", "html")
    # after the parts: making a multipart moves Content-* headers into the first part
    message["Content-Language"] = templates.language(notice.kind, notice.locale)
    return message


class SmtpTransport:
    """Sends notices as mail through one SMTP server; a transport for ``SqliteOutbox.deliver``.

    Args:
        host: The server's host name or address.
        port: Its port; default 25 (``none``), 587 (``starttls``) or 465 (``tls``).
        sender: The ``From`` address.
        security: ``"none"`` (plain SMTP), ``"starttls"`` (upgrade, RFC 3207)
            or ``"tls"`` (implicit TLS, RFC 8314).
        username: Log in as this user (needs ``password``; refused without TLS
            unless the server is on the loopback interface).
        password: The login password. Secret: never in ``repr``.
        timeout: Seconds to wait for the server on each operation.
        ssl_context: For ``starttls``/``tls``; default: the system's trusted
            certificates with host-name checking.
        link_template: The change-request link, ``{token}`` marking where the
            token goes (``https://accounts.example.com/reset?token={token}``);
            without one, the message shows the bare code.
        templates: :class:`MessageTemplates` (default: the built-in ones).
        zone: The time zone in which messages show times (default UTC).

    Raises:
        InvalidInputError: a bad argument (nothing is sent, no connection made).
    """

    def __init__(
        self,
        host: str,
        port: int | None = None,
        *,
        sender: str,
        security: Security = "none",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        link_template: str | None = None,
        templates: MessageTemplates | None = None,
        zone: tzinfo = timezone.utc,
    ) -> None:
        if security not in _DEFAULT_PORTS:
            raise InvalidInputError("security must be 'none', 'starttls' or 'tls'")
        if not isinstance(host, str) or not host:
            raise InvalidInputError("host must be a host name or address")
        port = _DEFAULT_PORTS[security] if port is None else port
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise InvalidInputError("port must be between 1 and 65535")
        try:
            envelope_sender = _mail_address(sender, what="the sender")
        except (ValueError, TypeError):
            raise InvalidInputError("the sender must be one mail address (local@domain)") from None
        if (username is None) != (password is None):
            raise InvalidInputError("username and password go together")
        if username is not None and security == "none" and not is_loopback(host):
            raise InvalidInputError("log in only over TLS (security='starttls' or 'tls')")
        if not timeout > 0:
            raise InvalidInputError("timeout must be positive")
        if link_template is not None and not is_link_template(link_template):
            raise InvalidInputError(
                "the link must be an http(s) URL with {token} once and no spaces, "
                "e.g. https://accounts.example.com/reset?token={token}"
            )
        self.host = host
        self.port = port
        self.sender = sender
        self.security: Security = security
        self.username = username
        self._password = password
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.link_template = link_template
        self.templates = templates or _default_templates()
        self.zone = zone
        self._envelope_sender = envelope_sender
        self._smtp: smtplib.SMTP | None = None
        self._last_used = 0.0
        self.sent = 0

    def __repr__(self) -> str:
        login = f", username={self.username!r}" if self.username else ""
        return f"<SmtpTransport {self.host}:{self.port} {self.security}{login}>"

    def __enter__(self) -> SmtpTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __call__(self, notice: Notice) -> None:
        self.send(notice)

    def message(self, notice: Notice) -> EmailMessage:
        """The mail :meth:`send` would send for *notice* (see :func:`notice_email`)."""
        return notice_email(
            notice,
            sender=self.sender,
            templates=self.templates,
            link_template=self.link_template,
            zone=self.zone,
        )

    def accepts(self, notice: Notice) -> bool:
        """Whether *notice* has a mail address (a phone-only reset notice is for SMS).

        Pass it to ``SqliteOutbox.deliver(..., only=transport.accepts)`` so
        that notices for another channel stay pending for that channel.
        """
        return bool(notice.recipient)

    def send(self, notice: Notice) -> None:
        """Send one notice, opening (or reusing) the connection.

        Raises:
            TemporaryDeliveryError: a 4xx reply to the recipient or the
                message, a dropped connection or a timeout. ``stop_run`` is
                set when the server refuses every message alike: it cannot be
                reached, refused TLS or the login, or refused the sender (a
                ``MAIL FROM`` reply, 4xx or 5xx: a configuration problem, not
                the notice's).
            PermanentDeliveryError: a 5xx reply to the recipient or the
                message; the notice has no usable mail address; or the address
                needs SMTPUTF8 and the server does not offer it.
        """
        message = self.message(notice)  # its To is one checked address (notice_email)
        smtp = self._connection()
        try:
            smtp.send_message(
                message, from_addr=self._envelope_sender, to_addrs=[str(message["To"])]
            )
        except smtplib.SMTPSenderRefused as exc:
            self._drop()
            raise _stop(_reply_error(exc.smtp_code)) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if 421 in codes:  # smtplib closed the channel: reconnect next time
                self._drop()
            raise _reply_error(codes[0] if codes else 550) from None
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code == 421:  # the server is closing the channel
                self._drop()
            raise _reply_error(exc.smtp_code) from None
        except smtplib.SMTPNotSupportedError:
            raise PermanentDeliveryError(
                "the address needs SMTPUTF8, which the server does not offer"
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            self._drop()
            # the next notice reconnects; if the server is gone, that says so
            raise TemporaryDeliveryError(f"SMTP connection lost ({type(exc).__name__})") from None
        self._last_used = time.monotonic()
        self.sent += 1

    def close(self) -> None:
        """End the connection (``QUIT``), if one is open."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is not None:
            if time.monotonic() - self._last_used < _IDLE_CHECK:
                return self._smtp
            try:  # idle a while: servers hang up on idle clients (300 s is common)
                code, _ = self._smtp.noop()
            except (smtplib.SMTPException, OSError):
                code = 0
            if code == 250:
                return self._smtp
            self._drop()
        context = self.ssl_context or ssl.create_default_context()
        try:
            smtp: smtplib.SMTP
            if self.security == "tls":
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            try:
                if self.security == "starttls":
                    smtp.starttls(context=context)
                if self.username is not None and self._password is not None:
                    smtp.login(self.username, self._password)
            except BaseException:
                smtp.close()
                raise
        except smtplib.SMTPResponseException as exc:
            raise _stop(_reply_error(exc.smtp_code)) from None
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise _stop(
                TemporaryDeliveryError(f"SMTP server unreachable ({type(exc).__name__})")
            ) from None
        self._smtp = smtp
        self._last_used = time.monotonic()
        return smtp


_IDLE_CHECK = 30.0
"""Seconds a connection may sit unused before it is checked (``NOOP``) before reuse."""


def _mail_address(text: str, *, what: str) -> str:
    """*text* as one bare address (``local@domain``), its domain IDNA-encoded when the
    local part is ASCII.

    Raises:
        ValueError: not exactly one address: a display name, a list, a line break.
    """
    if any(c in text for c in '\r\n\u2028\u2029,;<>"()') or text != text.strip():
        raise ValueError(f"{what} is not one mail address")
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or " " in text:
        raise ValueError(f"{what} is not one mail address")
    if local.isascii() and not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{what} has a domain that cannot be encoded") from None
    return f"{local}@{domain}"


def _reply_error(code: int) -> TemporaryDeliveryError | PermanentDeliveryError:
    if 400 <= code < 500:
        return TemporaryDeliveryError(f"SMTP {code}", code=code)
    return PermanentDeliveryError(f"SMTP {code}", code=code)


def _stop(error: TemporaryDeliveryError | PermanentDeliveryError) -> TemporaryDeliveryError:
    """A failure of the server itself: stop this delivery run, keep every notice pending."""
    return TemporaryDeliveryError(str(error), code=error.code, stop_run=True)


def is_link_template(text: str) -> bool:
    """Whether *text* is a change-request link template: an http(s) URL with ``{token}``
    once (not as the host), no spaces or control characters."""
    return (
        isinstance(text, str)
        and text.count("{token}") == 1
        and text.lower().startswith(("https://", "http://"))
        and not text.lower().startswith(("https://{token}", "http://{token}"))
        and not any(c.isspace() or not c.isprintable() for c in text)
    )


def is_loopback(host: str) -> bool:
    """Whether *host* names this machine (``localhost``, ``127.0.0.1``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
