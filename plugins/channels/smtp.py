"""The e-mail channel: SMTP with the standard library (``CAREFLOW_SMTP_*``).

One e-mail per recipient, in the recipient's language when known (else Chinese and
English together). The ``Message-ID`` is derived from the outbox idempotency key and
the address, so a retried delivery carries the same id (mail clients drop duplicates);
the key itself travels in ``X-Careflow-Idempotency-Key``.
"""

from __future__ import annotations

import email.policy
import hashlib
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import format_datetime, formataddr

from engine.clock import utcnow
from plugins.channels.base import Channel, PermanentDeliveryError
from plugins.messages import text_for

# Long header values (the idempotency key) stay on one line instead of being folded.
_POLICY = email.policy.SMTP.clone(max_line_length=998)


def message_id(idempotency_key: str, address: str, domain: str) -> str:
    """A stable ``Message-ID`` for one delivery of one outbox message to one address."""
    digest = hashlib.sha256(f"{idempotency_key}\n{address.lower()}".encode()).hexdigest()[:40]
    return f"<careflow.{digest}@{domain}>"


class SmtpChannel(Channel):
    """Sends e-mail through an SMTP server; accepts messages with at least one e-mail address."""

    name = "email"

    def __init__(self, host: str, port: int = 25, *, user: str | None = None, password: str | None = None,
                 sender: str = "careflow@localhost", starttls: bool = False, timeout: float | None = None) -> None:
        self.host, self.port = host, port
        self.user, self.password = user, password
        self.sender, self.starttls = sender, starttls
        self.timeout = timeout
        self.domain = sender.rpartition("@")[2].strip(">") or "localhost"

    def accepts(self, message: dict) -> bool:
        """Only messages with someone to e-mail."""
        return any(a.get("email") for a in message.get("to") or [])

    def send(self, message: dict) -> None:
        """Send one e-mail per address, over one SMTP session."""
        addresses = [a for a in message.get("to") or [] if a.get("email")]
        if not addresses:
            raise PermanentDeliveryError(f"no e-mail address for recipient {message.get('recipient')!r}")
        key = str(message.get("idempotency_key") or "")
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout or 30) as smtp:
                smtp.ehlo()
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if self.user:
                    smtp.login(self.user, self.password or "")
                for address in addresses:
                    smtp.send_message(self._email(message, address, key))
        except smtplib.SMTPRecipientsRefused as err:
            codes = [code for code, _ in err.recipients.values()]
            if codes and all(code >= 500 for code in codes):
                raise PermanentDeliveryError(f"the SMTP server refused {', '.join(err.recipients)}") from err
            raise
        except smtplib.SMTPResponseException as err:
            if err.smtp_code >= 500 and err.smtp_code not in (530, 535):  # auth problems get fixed and retried
                raise PermanentDeliveryError(f"SMTP {err.smtp_code}: {err.smtp_error!r}") from err
            raise

    def _email(self, message: dict, address: dict, key: str) -> EmailMessage:
        subject, body = text_for(message, address.get("locale"))
        mail = EmailMessage(policy=_POLICY)
        mail["From"] = self.sender
        mail["To"] = formataddr((address.get("name") or "", address["email"]))
        mail["Subject"] = subject
        mail["Date"] = format_datetime(utcnow())
        mail["Message-ID"] = message_id(key, address["email"], self.domain)
        mail["X-Careflow-Idempotency-Key"] = key
        if message.get("topic"):
            mail["X-Careflow-Topic"] = str(message["topic"])
        mail.set_content(body)
        return mail

    def describe(self) -> str:
        """The server (never the password)."""
        tls = " STARTTLS" if self.starttls else ""
        who = f"{self.user}@" if self.user else ""
        return f"email → smtp://{who}{self.host}:{self.port}{tls} from {self.sender}"
