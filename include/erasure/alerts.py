"""Alert routing: failures, escalations, SLA breaches and missed Airflow deadlines go to the owning team.

Two steps, so that an alert is never lost and never sent twice:

1. ``record_alert(cur, ...)`` inserts a row into ``erasure.alert`` *in the caller's transaction* (the same
   transaction as the status change it reports). The row's ``dedupe_key`` is unique, so raising the same
   alert again (a re-run, a concurrent run) is a no-op.
2. ``deliver_pending(dsn)`` sends every unsent alert through the notifier of its channel and marks it
   sent. Each row is locked while it is sent (``FOR UPDATE SKIP LOCKED``), so two concurrent deliverers
   never send the same alert. A failed send is recorded (``send_attempts``, ``send_error``) and retried by
   the next delivery run, up to ``max_send_attempts``.

Channels (``Team.channel`` in the catalog):

* ``log:`` - a WARNING on the ``erasure.alerts`` logger (also ``webhook:log`` and ``webhook:``);
* ``webhook:<url>`` - HTTP POST of the alert as JSON, with an ``Idempotency-Key`` header = dedupe key;
* ``email:<address>`` - an email: through the SMTP settings of the :class:`~erasure.settings.Settings`
  the caller passes (``ERASURE_SMTP_HOST``, ``ERASURE_SMTP_PORT``, ``ERASURE_SMTP_USER``,
  ``ERASURE_SMTP_PASSWORD``, ``ERASURE_SMTP_STARTTLS``, ``ERASURE_SMTP_FROM``) when a host is set, else
  through Airflow's email backend (``[smtp]`` config and the ``smtp_default`` connection). Airflow is
  imported only inside that notifier. Without settings (``settings=None``) e-mail goes through Airflow.

Notifiers are pluggable: pass ``notifiers={"webhook": MyNotifier(), ...}`` or call ``register_notifier``.
"""

from __future__ import annotations

import json
import logging
import smtplib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Protocol

from erasure.catalog import Catalog
from erasure.db import transaction
from erasure.vocab import AlertKind

if TYPE_CHECKING:
    from erasure.settings import Settings

log = logging.getLogger("erasure.alerts")

DEFAULT_MAX_SEND_ATTEMPTS = 10


class AlertError(ValueError):
    """An alert cannot be recorded or routed (bad channel, unknown team); the message names the field."""


@dataclass(frozen=True)
class AlertRow:
    """One row of ``erasure.alert`` as handed to a notifier."""

    id: int
    dedupe_key: str
    kind: str
    team: str
    channel: str
    message: str
    request_id: int | None = None
    task_id: int | None = None
    target: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    send_attempts: int = 0

    def payload(self) -> dict[str, Any]:
        """The JSON document a webhook receives."""
        return {
            "dedupe_key": self.dedupe_key,
            "kind": self.kind,
            "team": self.team,
            "message": self.message,
            "request_id": self.request_id,
            "task_id": self.task_id,
            "target": self.target,
            "details": self.details,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }


class Notifier(Protocol):
    """Sends one alert to ``address`` (the part of the channel after ``scheme:``); raises on failure."""

    def send(self, alert: AlertRow, address: str) -> None: ...


class LogNotifier:
    """Writes the alert as a WARNING to the ``erasure.alerts`` logger (the task / triggerer log)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or log

    def send(self, alert: AlertRow, address: str) -> None:
        self.logger.warning(
            "ALERT [%s] to team %s: %s (dedupe_key=%s, details=%s)",
            alert.kind,
            alert.team,
            alert.message,
            alert.dedupe_key,
            json.dumps(alert.details, default=str, sort_keys=True),
        )


class WebhookNotifier:
    """POSTs the alert as JSON to the URL; any non-2xx answer or transport error is a failed send."""

    def __init__(self, timeout_s: float = 10.0, headers: Mapping[str, str] | None = None) -> None:
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})

    def send(self, alert: AlertRow, address: str) -> None:
        import httpx

        if not address.startswith(("http://", "https://")):
            raise AlertError(f"webhook channel of team '{alert.team}': '{address}' is not an http(s) URL")
        headers = {"Idempotency-Key": alert.dedupe_key, "Content-Type": "application/json", **self.headers}
        body = json.dumps(alert.payload(), default=str)
        r = httpx.post(address, content=body, headers=headers, timeout=self.timeout_s)
        if r.status_code // 100 != 2:
            raise RuntimeError(f"webhook {address} answered HTTP {r.status_code}: {r.text[:200]}")


class EmailNotifier:
    """Sends the alert by email: through ``settings.smtp_*`` (``ERASURE_SMTP_*``) when ``settings.smtp_host``
    is set, else (or without settings) through Airflow's email backend."""

    def __init__(self, settings: Settings | None = None, timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s

    @staticmethod
    def subject(alert: AlertRow) -> str:
        first = alert.message.splitlines()[0] if alert.message else ""
        return f"[erasure {alert.kind}] {first[:120]}"

    @staticmethod
    def body(alert: AlertRow) -> str:
        return (
            f"{alert.message}\n\nteam: {alert.team}\nkind: {alert.kind}\ndedupe key: {alert.dedupe_key}\n"
            f"details:\n{json.dumps(alert.details, default=str, indent=2, sort_keys=True)}\n"
        )

    def send(self, alert: AlertRow, address: str) -> None:
        if "@" not in address:
            raise AlertError(f"email channel of team '{alert.team}': '{address}' is not an email address")
        if self.settings is not None and self.settings.smtp_host:
            self._send_smtplib(alert, address, self.settings, self.settings.smtp_host)
        else:
            self._send_airflow(alert, address)

    def _send_smtplib(self, alert: AlertRow, address: str, s: Settings, host: str) -> None:
        msg = EmailMessage()
        msg["From"] = s.smtp_from
        msg["To"] = address
        msg["Subject"] = self.subject(alert)
        msg["X-Erasure-Dedupe-Key"] = alert.dedupe_key
        msg.set_content(self.body(alert))
        with smtplib.SMTP(host, s.smtp_port, timeout=self.timeout_s) as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password or "")
            smtp.send_message(msg)

    def _send_airflow(self, alert: AlertRow, address: str) -> None:
        try:
            from airflow.utils.email import send_email  # Airflow's SMTP ([smtp] config, smtp_default)
        except ImportError as exc:  # pragma: no cover - Airflow is installed with the project
            raise AlertError(
                "email alerts need ERASURE_SMTP_HOST (settings) or an Airflow installation"
            ) from exc
        html = "<pre>" + self.body(alert).replace("&", "&amp;").replace("<", "&lt;") + "</pre>"
        send_email(
            to=[address],
            subject=self.subject(alert),
            html_content=html,
            custom_headers={"X-Erasure-Dedupe-Key": alert.dedupe_key},
        )


_REGISTRY: dict[str, Notifier] = {}


def register_notifier(scheme: str, notifier: Notifier) -> None:
    """Replace the notifier of a channel scheme (``log``, ``webhook``, ``email`` or a new one)."""
    _REGISTRY[scheme] = notifier


def default_notifiers(settings: Settings | None = None) -> dict[str, Notifier]:
    """The built-in notifiers (e-mail configured from ``settings``) and the registered ones."""
    return {
        "log": LogNotifier(),
        "webhook": WebhookNotifier(),
        "email": EmailNotifier(settings),
        **_REGISTRY,
    }


def parse_channel(channel: str) -> tuple[str, str]:
    """``'webhook:https://x'`` -> ``('webhook', 'https://x')``; ``webhook:log`` / ``webhook:`` mean log."""
    scheme, sep, address = channel.partition(":")
    if not sep or not scheme:
        raise AlertError(f"channel '{channel}': expected 'log:', 'webhook:<url>' or 'email:<address>'")
    address = address.strip()
    if scheme == "webhook" and address in ("", "log"):
        return "log", ""
    return scheme, address


def team_channel(catalog: Catalog, team: str) -> str:
    """The channel of a catalog team; an unknown team is an error naming it."""
    try:
        return catalog.team(team).channel
    except KeyError:
        known = sorted(t.name for t in catalog.teams)
        raise AlertError(f"alert team: unknown team '{team}' (known: {known})") from None


def record_alert(
    cur: Any,
    *,
    dedupe_key: str,
    kind: AlertKind | str,
    team: str,
    channel: str,
    message: str,
    request_id: int | None = None,
    task_id: int | None = None,
    target: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> bool:
    """Insert an alert unless one with ``dedupe_key`` exists; returns whether it was new.

    Runs in the caller's transaction (``cur``), so the alert commits with the change it reports.
    """
    if not dedupe_key:
        raise AlertError("alert dedupe_key: must not be empty")
    if not message:
        raise AlertError("alert message: must not be empty")
    parse_channel(channel)
    cur.execute(
        """
        INSERT INTO erasure.alert (dedupe_key, kind, team, channel, request_id, task_id, target, message, details)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)
        ON CONFLICT (dedupe_key) DO NOTHING
        """,
        (
            dedupe_key,
            str(kind),
            team,
            channel,
            request_id,
            task_id,
            target,
            message,
            json.dumps(dict(details or {}), default=str),
        ),
    )
    return cur.rowcount == 1


def raise_team_alert(
    cur: Any, catalog: Catalog, *, team: str, dedupe_key: str, kind: AlertKind | str, message: str, **kw: Any
) -> bool:
    """``record_alert`` routed to a catalog team's channel."""
    return record_alert(
        cur,
        dedupe_key=dedupe_key,
        kind=kind,
        team=team,
        channel=team_channel(catalog, team),
        message=message,
        **kw,
    )


@dataclass
class DeliveryResult:
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "failed": self.failed, "errors": self.errors[:20]}


def deliver_pending(
    dsn: str,
    *,
    settings: Settings | None = None,
    notifiers: Mapping[str, Notifier] | None = None,
    limit: int = 200,
    max_send_attempts: int = DEFAULT_MAX_SEND_ATTEMPTS,
    dedupe_keys: list[str] | None = None,
) -> DeliveryResult:
    """Send unsent alerts (oldest first); each one in its own transaction, locked while it is sent.

    ``settings`` configures the built-in e-mail notifier (``ERASURE_SMTP_*``); ``notifiers`` replace
    notifiers by channel scheme.
    """
    chosen = {**default_notifiers(settings), **(notifiers or {})}
    result = DeliveryResult()
    done: list[int] = []
    for _ in range(limit):
        with transaction(dsn) as cur:
            cur.execute(
                """
                SELECT id, dedupe_key, kind, team, channel, message, request_id, task_id, target, details,
                       created_at, send_attempts
                  FROM erasure.alert
                 WHERE sent_at IS NULL AND send_attempts < %(max)s
                   AND NOT (id = ANY(%(done)s))
                   AND (%(keys)s::text[] IS NULL OR dedupe_key = ANY(%(keys)s::text[]))
                 ORDER BY id
                 LIMIT 1
                 FOR UPDATE SKIP LOCKED
                """,
                {"max": max_send_attempts, "done": done, "keys": dedupe_keys},
            )
            row = cur.fetchone()
            if row is None:
                break
            alert = AlertRow(**row)
            done.append(alert.id)
            try:
                scheme, address = parse_channel(alert.channel)
                notifier = chosen.get(scheme)
                if notifier is None:
                    raise AlertError(f"channel '{alert.channel}': no notifier for scheme '{scheme}'")
                notifier.send(alert, address)
            except Exception as exc:  # a failed send is recorded and retried next run
                err = f"{type(exc).__name__}: {exc}"[:2000]
                cur.execute(
                    "UPDATE erasure.alert SET send_attempts = send_attempts + 1, send_error = %s WHERE id = %s",
                    (err, alert.id),
                )
                result.failed += 1
                result.errors.append(f"{alert.dedupe_key}: {err}")
                log.error("alert %s not sent via %s: %s", alert.dedupe_key, alert.channel, err)
            else:
                cur.execute(
                    "UPDATE erasure.alert SET sent_at = now(), send_attempts = send_attempts + 1, send_error = NULL "
                    "WHERE id = %s",
                    (alert.id,),
                )
                result.sent += 1
    return result


def raise_and_deliver(
    dsn: str,
    catalog: Catalog,
    *,
    team: str,
    kind: AlertKind,
    dedupe_key: str,
    message: str,
    settings: Settings | None = None,
    notifiers: Mapping[str, Notifier] | None = None,
    **kw: Any,
) -> tuple[bool, DeliveryResult]:
    """Record one alert to ``team`` (nothing if ``dedupe_key`` was raised before) and try to send it at
    once; an unsent alert is retried by reconcile's ``deliver`` step. Returns (new, delivery)."""
    with transaction(dsn) as cur:
        new = raise_team_alert(
            cur, catalog, team=team, dedupe_key=dedupe_key, kind=kind, message=message, **kw
        )
    log.error("alert %s to team %s: %s", kind, team, message)
    try:
        delivery = deliver_pending(dsn, settings=settings, notifiers=notifiers, dedupe_keys=[dedupe_key])
    except Exception as exc:  # noqa: BLE001 - recorded; reconcile delivers it later
        log.warning("alert %s recorded, delivery deferred: %s", dedupe_key, exc)
        delivery = DeliveryResult(failed=1, errors=[str(exc)])
    return new, delivery


def record_dag_run_failure(
    dsn: str,
    catalog: Catalog,
    *,
    dag_id: str,
    run_id: str,
    failed_tasks: list[str],
    reason: str | None = None,
    settings: Settings | None = None,
    notifiers: Mapping[str, Notifier] | None = None,
) -> tuple[str, DeliveryResult]:
    """One alert to the pipeline owner for a failed run of a pipeline DAG (its failed tasks named)."""
    if not dag_id or not run_id:
        raise AlertError("DAG failure context: dag_id and run_id are required")
    key = f"{AlertKind.DAG_RUN_FAILED}:{dag_id}:{run_id}"
    msg = f"DAG run {dag_id}/{run_id} failed"
    if failed_tasks:
        msg += f"; failed tasks: {', '.join(sorted(failed_tasks)[:20])}"
    if reason:
        msg += f" ({reason})"
    _, delivery = raise_and_deliver(
        dsn,
        catalog,
        team=catalog.pipeline_owner,
        kind=AlertKind.DAG_RUN_FAILED,
        dedupe_key=key,
        message=msg,
        settings=settings,
        notifiers=notifiers,
        details={"dag_id": dag_id, "run_id": run_id, "failed_tasks": sorted(failed_tasks), "reason": reason},
    )
    return key, delivery


def record_deadline_miss(
    dsn: str,
    catalog: Catalog,
    *,
    settings: Settings | None = None,
    dag_id: str,
    run_id: str,
    deadline_id: str | None = None,
    deadline_time: Any = None,
    team: str | None = None,
    description: str | None = None,
    notifiers: Mapping[str, Notifier] | None = None,
) -> tuple[str, DeliveryResult]:
    """Record a missed Airflow deadline as an alert to ``team`` (default: the pipeline owner) and send it.

    Used by the Deadline Alert callbacks (plugins/erasure_callbacks.py). One alert per (dag run, deadline).
    """
    if not dag_id:
        raise AlertError("deadline context: dag_id is missing")
    if not run_id:
        raise AlertError("deadline context: run_id is missing")
    team = team or catalog.pipeline_owner
    key = f"{AlertKind.DEADLINE_MISSED}:{dag_id}:{run_id}:{deadline_id or 'dagrun'}"
    msg = f"DAG run {dag_id}/{run_id} missed its deadline ({deadline_time})"
    if description:
        msg += f": {description}"
    _, delivery = raise_and_deliver(
        dsn,
        catalog,
        team=team,
        kind=AlertKind.DEADLINE_MISSED,
        dedupe_key=key,
        message=msg,
        settings=settings,
        notifiers=notifiers,
        details={
            "dag_id": dag_id,
            "run_id": run_id,
            "deadline_id": deadline_id,
            "deadline_time": str(deadline_time) if deadline_time is not None else None,
        },
    )
    return key, delivery
