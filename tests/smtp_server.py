"""A real SMTP server on 127.0.0.1 for the mail tests (aiosmtpd), with TLS from trustme.

:func:`smtp_server` starts one in this process on a free port and yields a
:class:`Mailbox` that records every message it accepted. It can refuse
chosen recipients with a chosen reply (``421``, ``550``), speak STARTTLS or
implicit TLS with a certificate from a throw-away CA, and require a login.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

USER = "mailer"
PASSWORD = "relay password 1"


class Mailbox:
    """The server's handler: what it received, and the replies it is told to give."""

    def __init__(self, refuse: dict[str, str] | None = None) -> None:
        self.refuse = dict(refuse or {})  # recipient -> reply, e.g. "550 5.1.1 no such user"
        self.drop: set[str] = set()  # recipients whose message makes the server hang up
        self.messages: list[EmailMessage] = []
        self.sessions = 0  # connections that said EHLO
        self.envelopes: list[tuple[str, list[str]]] = []
        self.port = 0
        self.client_context: ssl.SSLContext | None = None  # trusts the server's CA
        self.ca_pem: bytes | None = None  # that CA, for SSL_CERT_FILE

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sessions += 1
        session.host_name = hostname  # the hook's job once it is defined
        return responses

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        reply = self.refuse.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Session, envelope: Envelope
    ) -> str:
        if self.drop & set(envelope.rcpt_tos):
            server.transport.close()  # the connection drops before any reply
            return "421 gone"
        data = envelope.original_content or envelope.content
        assert isinstance(data, bytes)
        message = message_from_bytes(data, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 Message accepted"

    def by_recipient(self) -> dict[str, list[EmailMessage]]:
        found: dict[str, list[EmailMessage]] = {}
        for message in self.messages:
            found.setdefault(str(message["To"]), []).append(message)
        return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _authenticator(
    server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USER.encode()
        and auth_data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)  # the server sends the 235 or 535 reply


@contextmanager
def smtp_server(
    *,
    refuse: dict[str, str] | None = None,
    security: str = "none",
    login: bool = False,
    idle_timeout: float | None = None,
) -> Iterator[Mailbox]:
    """Run an SMTP server on 127.0.0.1 for the block; yield its :class:`Mailbox`.

    Args:
        refuse: Recipients to refuse, with the reply to give.
        security: ``"none"``, ``"starttls"`` (required before MAIL) or ``"tls"``.
        login: Require AUTH as :data:`USER` / :data:`PASSWORD`.
    """
    mailbox = Mailbox(refuse)
    options: dict[str, Any] = {}
    if security != "none":
        ca = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
        client_context = ssl.create_default_context()
        ca.configure_trust(client_context)
        mailbox.client_context = client_context
        mailbox.ca_pem = ca.cert_pem.bytes()
        if security == "starttls":
            options.update(tls_context=server_context, require_starttls=True)
        else:
            options.update(ssl_context=server_context)
    if login:
        # implicit TLS is TLS from the first byte, but aiosmtpd only counts STARTTLS
        options.update(authenticator=_authenticator, auth_require_tls=security == "starttls")
    if idle_timeout is not None:  # the server hangs up on a client idle this long
        options["timeout"] = idle_timeout  # forwarded to aiosmtpd's SMTP
    mailbox.port = _free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=mailbox.port, **options)
    controller.start()
    try:
        yield mailbox
    finally:
        controller.stop()
