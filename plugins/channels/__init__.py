"""Shipped notification channels: log/file (always on unless ``CAREFLOW_NOTIFY_LOG=off``),
e-mail over SMTP (when ``CAREFLOW_SMTP_HOST`` is set) and a signed webhook (when
``CAREFLOW_WEBHOOK_URL`` is set)."""

from __future__ import annotations

from plugins.channels.base import Channel, PermanentDeliveryError
from plugins.channels.logfile import LogChannel
from plugins.channels.smtp import SmtpChannel
from plugins.channels.webhook import WebhookChannel
from plugins.config import PluginSettings
from plugins.hookspecs import hookimpl

__all__ = ["Channel", "ChannelsPlugin", "LogChannel", "PermanentDeliveryError", "SmtpChannel", "WebhookChannel"]


class ChannelsPlugin:
    """The shipped channels, built once from the configuration."""

    def __init__(self, settings: PluginSettings | None = None) -> None:
        s = settings or PluginSettings()
        self.channels: list[Channel] = []
        if (s.notify_log or "").strip().lower() != "off":
            self.channels.append(LogChannel(s.notify_log))
        if s.smtp_host:
            self.channels.append(SmtpChannel(s.smtp_host, s.smtp_port, user=s.smtp_user, password=s.smtp_password,
                                             sender=s.smtp_from, starttls=s.smtp_starttls,
                                             timeout=s.channel_timeout_s))
        if s.webhook_url:
            self.channels.append(WebhookChannel(s.webhook_url, s.webhook_secret, timeout=s.channel_timeout_s))

    @hookimpl(trylast=True)
    def careflow_notification_channels(self) -> list:
        """The enabled shipped channels (a plugin's channel with the same name replaces one)."""
        return list(self.channels)
