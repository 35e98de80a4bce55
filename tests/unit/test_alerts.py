"""Alert notifiers and channel routing, against real local receivers (HTTP server, SMTP server)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from erasure.alerts import AlertError, AlertRow, EmailNotifier, LogNotifier, WebhookNotifier, parse_channel
from erasure.settings import Settings
from tests.helpers.alert_receivers import smtp_receiver, webhook_receiver


def _alert(**kw) -> AlertRow:
    base = dict(
        id=1,
        dedupe_key="task_escalated:7:a3",
        kind="task_escalated",
        team="crm",
        channel="log:",
        message="Erasure task for target 'crm_contacts' of request 3 escalated: HTTP 503",
        request_id=3,
        task_id=7,
        target="crm_contacts",
        details={"attempts": 3},
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    base.update(kw)
    return AlertRow(**base)


@pytest.mark.parametrize(
    "channel, expected",
    [
        ("log:", ("log", "")),
        ("webhook:log", ("log", "")),
        ("webhook:", ("log", "")),
        ("webhook:http://127.0.0.1:9/x", ("webhook", "http://127.0.0.1:9/x")),
        ("email:oncall@example.com", ("email", "oncall@example.com")),
    ],
)
def test_parse_channel(channel: str, expected: tuple[str, str]) -> None:
    assert parse_channel(channel) == expected


@pytest.mark.parametrize("channel", ["", "nocolon", ":x"])
def test_parse_channel_rejects_garbage_naming_it(channel: str) -> None:
    with pytest.raises(AlertError, match="channel"):
        parse_channel(channel)


def test_log_notifier_writes_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="erasure.alerts"):
        LogNotifier().send(_alert(), "")
    assert "task_escalated" in caplog.text and "crm_contacts" in caplog.text


def test_webhook_notifier_posts_json_with_idempotency_key() -> None:
    with webhook_receiver() as rec:
        WebhookNotifier().send(_alert(), rec.url)
        assert len(rec.posts) == 1
        post = rec.posts[0]
        assert post["idempotency_key"] == "task_escalated:7:a3"
        assert post["body"]["kind"] == "task_escalated"
        assert post["body"]["target"] == "crm_contacts"
        assert post["body"]["details"] == {"attempts": 3}


def test_webhook_notifier_raises_on_http_error() -> None:
    with webhook_receiver() as rec:
        rec.fail_next = 1
        with pytest.raises(RuntimeError, match="HTTP 500"):
            WebhookNotifier().send(_alert(), rec.url)


def test_webhook_notifier_rejects_non_http_address() -> None:
    with pytest.raises(AlertError, match="not an http"):
        WebhookNotifier().send(_alert(), "ftp://x")


def test_email_notifier_via_smtplib_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    with smtp_receiver() as smtp:
        monkeypatch.setenv("ERASURE_SMTP_HOST", smtp.host)
        monkeypatch.setenv("ERASURE_SMTP_PORT", str(smtp.port))
        monkeypatch.setenv("ERASURE_SMTP_FROM", "p@x.org")
        EmailNotifier(Settings()).send(_alert(), "crm-oncall@example.com")
        assert len(smtp.messages) == 1
        msg = smtp.messages[0]
        assert msg["to"] == ["crm-oncall@example.com"]
        assert "Subject: [erasure task_escalated]" in msg["data"]
        assert "task_escalated:7:a3" in msg["data"]


def test_email_notifier_via_airflow_smtp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ERASURE_SMTP_HOST the notifier uses Airflow's email backend ([smtp] config)."""
    with smtp_receiver() as smtp:
        monkeypatch.setenv("AIRFLOW__SMTP__SMTP_HOST", smtp.host)
        monkeypatch.setenv("AIRFLOW__SMTP__SMTP_PORT", str(smtp.port))
        monkeypatch.setenv("AIRFLOW__SMTP__SMTP_STARTTLS", "False")
        monkeypatch.setenv("AIRFLOW__SMTP__SMTP_SSL", "False")
        monkeypatch.setenv("AIRFLOW__SMTP__SMTP_MAIL_FROM", "airflow@example.com")
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", f"smtp://{smtp.host}:{smtp.port}")
        EmailNotifier(Settings(smtp_host=None)).send(_alert(team="billing"), "billing-oncall@example.com")
        assert len(smtp.messages) == 1
        assert smtp.messages[0]["to"] == ["billing-oncall@example.com"]
        assert "task_escalated" in smtp.messages[0]["data"]


def test_email_notifier_rejects_non_address() -> None:
    with pytest.raises(AlertError, match="not an email address"):
        EmailNotifier(Settings(smtp_host="127.0.0.1")).send(_alert(), "nobody")
