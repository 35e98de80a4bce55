"""The Erasure view: a FastAPI app mounted by the Airflow API server (``plugins/erasure_ui.py``).

Pages (server-rendered HTML with inline SVG charts; one small hand-written script for the action
buttons, no build step, nothing loaded from elsewhere) under ``/erasure/ui/``, the same data as JSON
under ``/erasure/api/``. Every route but the static files needs a logged-in Airflow user allowed to
read the view; actions need write access (:mod:`erasure.airflow.ui.auth`). Actions take JSON bodies
only (a cross-site HTML form cannot send one), and each is audited with the acting user
(:mod:`erasure.operator_actions`).
"""

from __future__ import annotations

import functools
import json
import logging
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from erasure.airflow.ui import charts, model
from erasure.airflow.ui.auth import actor, can_write, reader, writer

log = logging.getLogger("erasure.ui")

HERE = Path(__file__).resolve().parent
URL_PREFIX = "/erasure"


# ------------------------------------------------------------------------------------------ context
@functools.lru_cache(maxsize=1)
def _settings() -> Any:
    from erasure.settings import get_settings

    return get_settings()


def tracking_dsn() -> str:
    """The tracking store: the ``erasure_tracking`` Airflow connection, else ``ERASURE_TRACKING_DSN``."""
    try:
        from airflow.models.connection import Connection

        uri = Connection.get_connection_from_secrets("erasure_tracking").get_uri()
        if uri.startswith("postgres://"):
            uri = "postgresql://" + uri[len("postgres://") :]
        return uri.split("?")[0] if uri.endswith("?") else uri
    except Exception:  # noqa: BLE001 - no such connection: the setting
        dsn = _settings().tracking_dsn
        if not dsn:
            raise HTTPException(503, "no tracking store: set AIRFLOW_CONN_ERASURE_TRACKING") from None
        return str(dsn)


@functools.lru_cache(maxsize=1)
def catalog() -> Any:
    from erasure.catalog import load_catalog

    return load_catalog(_settings().catalog_path)


@functools.lru_cache(maxsize=1)
def hmac_key() -> bytes | None:
    return model.load_hmac_key(_settings().identifier_hmac_key_path)


@functools.lru_cache(maxsize=1)
def links() -> model.Links:
    try:
        from airflow.configuration import conf

        base = urlparse(conf.get("api", "base_url", fallback="/") or "/").path
    except Exception:  # noqa: BLE001
        base = ""
    return model.Links(base)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _json(data: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(_jsonable(data), status_code=status_code)


# ------------------------------------------------------------------------------------------ templates
def _fmt_ts(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    return "–" if value is None else str(value)


def _tojson_pretty(value: Any) -> str:
    return json.dumps(_jsonable(value), indent=2, sort_keys=True, ensure_ascii=False)


_env = Environment(
    loader=FileSystemLoader(str(HERE / "templates")),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["ts"] = _fmt_ts
_env.filters["pretty"] = _tojson_pretty


def _page(request: Request, template: str, user: Any, **ctx: Any) -> HTMLResponse:
    html = _env.get_template(template).render(
        root=str(request.scope.get("root_path", "")).rstrip("/"),
        user=user.get_name(),
        can_write=can_write(user),
        **ctx,
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


# ------------------------------------------------------------------------------------------ the app
class Reason(BaseModel):
    reason: str = Field(min_length=1, max_length=1000)


class HoldIn(Reason):
    subject_type: str = Field(min_length=1, max_length=100)
    subject_id: str = Field(min_length=1, max_length=200)


class SubjectIn(BaseModel):
    identifier: str = Field(min_length=3, max_length=300, description="TYPE:ID, e.g. customer:cus_123")


def _subject(identifier: str) -> tuple[str, str]:
    stype, sep, sid = identifier.strip().partition(":")
    if not sep or not stype.strip() or not sid.strip():
        raise HTTPException(400, "identifier: expected TYPE:ID, e.g. customer:cus_8f3k2j")
    return stype.strip(), sid.strip()


def _act(fn: Any, *args: Any) -> JSONResponse:
    from erasure.operator_actions import ActionError

    try:
        result = fn(*args)
    except ActionError as exc:
        return _json({"detail": str(exc)}, 409)
    log.info("operator action %s (id %s) by %s", result.action, result.action_id, args[-1])
    return _json(result.to_dict())


def create_app() -> FastAPI:
    app = FastAPI(
        title="Erasure view",
        description="The erasure pipeline's view in the Airflow UI",
        docs_url=None,  # no unauthenticated schema or docs pages
        redoc_url=None,
        openapi_url=None,
    )
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="erasure_static")

    @app.exception_handler(StarletteHTTPException)
    async def _errors(request: Request, exc: StarletteHTTPException) -> Response:
        if (
            request.url.path.startswith(f"{request.scope.get('root_path', '')}/ui")
            or "/ui/" in request.url.path
        ):
            body = _env.get_template("error.html").render(
                root=str(request.scope.get("root_path", "")).rstrip("/"),
                status=exc.status_code,
                detail=exc.detail,
            )
            return HTMLResponse(body, status_code=exc.status_code)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    # -------------------------------------------------------------------------- HTML pages
    @app.get("/ui/", response_class=HTMLResponse)
    def overview_page(request: Request, user: Any = Depends(reader)) -> HTMLResponse:  # noqa: B008
        data = model.overview(tracking_dsn(), catalog())
        status_chart = charts.hbars(
            "chart-status", "Requests by status", list(data["requests_by_status"].items())
        )
        sla_chart = charts.stacked(
            "chart-sla",
            f"Open requests per jurisdiction: overdue, due within {data['soon_days']} days, on track",
            [
                (
                    j["jurisdiction"],
                    [
                        ("overdue", j["overdue"]),
                        ("due_soon", j["due_soon"]),
                        ("on_track", j["open"] - j["overdue"] - j["due_soon"]),
                    ],
                )
                for j in data["sla"]
            ],
        )
        days = [d["day"] for d in data["throughput"]]
        throughput_chart = charts.columns(
            "chart-throughput",
            "Requests received and completed per day",
            days,
            [
                ("received", [d["received"] for d in data["throughput"]]),
                ("completed", [d["completed"] for d in data["throughput"]]),
            ],
        )
        team_chart = charts.stacked(
            "chart-teams",
            f"Escalated tasks and alerts of the last {data['alert_days']} days per owner team",
            [(t["team"], [("escalated", t["escalated"]), ("alerts", t["alerts"])]) for t in data["teams"]],
        )
        return _page(
            request,
            "overview.html",
            user,
            active="overview",
            d=data,
            status_chart=Markup(status_chart),  # noqa: S704 - built from escaped parts (charts.py)
            sla_chart=Markup(sla_chart),  # noqa: S704
            throughput_chart=Markup(throughput_chart),  # noqa: S704
            team_chart=Markup(team_chart),  # noqa: S704
        )

    @app.get("/ui/requests", response_class=HTMLResponse)
    def requests_page(request: Request, q: str = "", user: Any = Depends(reader)) -> HTMLResponse:  # noqa: B008
        results = model.find(tracking_dsn(), ref=q) if q.strip() else None
        return _page(
            request, "requests.html", user, active="requests", q=q, results=results, by_subject=False
        )

    @app.post("/ui/requests", response_class=HTMLResponse)
    def requests_by_subject_page(
        request: Request,
        identifier: str = Form(..., max_length=300),  # noqa: B008
        user: Any = Depends(reader),  # noqa: B008
    ) -> HTMLResponse:
        # the identifier travels in the POST body only (never in a URL, an access log or the history)
        subject = _subject(identifier)
        results = model.find(
            tracking_dsn(), subject=subject, digest=model.subject_digest(catalog(), hmac_key(), subject)
        )
        return _page(
            request, "requests.html", user, active="requests", q="", results=results, by_subject=True
        )

    @app.get("/ui/requests/{request_id}", response_class=HTMLResponse)
    def request_page(request: Request, request_id: int, user: Any = Depends(reader)) -> HTMLResponse:  # noqa: B008
        data = model.request_detail(tracking_dsn(), request_id, links(), hmac_key())
        if data is None:
            raise HTTPException(404, f"no request with id {request_id}")
        return _page(request, "request.html", user, active="requests", r=data)

    @app.get("/ui/targets", response_class=HTMLResponse)
    def targets_page(request: Request, team: str = "", user: Any = Depends(reader)) -> HTMLResponse:  # noqa: B008
        data = model.target_health(tracking_dsn(), catalog())
        rows = [t for t in data["targets"] if not team or t["owner"] == team]
        return _page(request, "targets.html", user, active="targets", d=data, rows=rows, team=team)

    @app.get("/ui/holds", response_class=HTMLResponse)
    def holds_page(request: Request, all: bool = False, user: Any = Depends(reader)) -> HTMLResponse:  # noqa: B008,A002
        rows = model.holds(tracking_dsn(), catalog(), active_only=not all)
        types = [s.name for s in catalog().subject_types]
        return _page(
            request, "holds.html", user, active="holds", holds=rows, show_all=all, subject_types=types
        )

    @app.get("/ui/actions", response_class=HTMLResponse)
    def actions_page(request: Request, user: Any = Depends(reader)) -> HTMLResponse:  # noqa: B008
        return _page(
            request,
            "actions.html",
            user,
            active="actions",
            actions=model.actions(tracking_dsn(), catalog(), 200),
        )

    # -------------------------------------------------------------------------- JSON: read
    @app.get("/api/overview")
    def overview_api(user: Any = Depends(reader)) -> JSONResponse:  # noqa: B008
        return _json(model.overview(tracking_dsn(), catalog()))

    @app.get("/api/requests")
    def find_api(q: str, user: Any = Depends(reader)) -> JSONResponse:  # noqa: B008
        return _json({"requests": model.find(tracking_dsn(), ref=q)})

    @app.post("/api/requests/search")
    def find_subject_api(body: SubjectIn, user: Any = Depends(reader)) -> JSONResponse:  # noqa: B008
        subject = _subject(body.identifier)
        digest = model.subject_digest(catalog(), hmac_key(), subject)
        return _json({"requests": model.find(tracking_dsn(), subject=subject, digest=digest)})

    @app.get("/api/requests/{request_id}")
    def request_api(request_id: int, user: Any = Depends(reader)) -> JSONResponse:  # noqa: B008
        data = model.request_detail(tracking_dsn(), request_id, links(), hmac_key())
        if data is None:
            raise HTTPException(404, f"no request with id {request_id}")
        return _json(data)

    @app.get("/api/targets")
    def targets_api(user: Any = Depends(reader)) -> JSONResponse:  # noqa: B008
        return _json(model.target_health(tracking_dsn(), catalog()))

    @app.get("/api/holds")
    def holds_api(all: bool = False, user: Any = Depends(reader)) -> JSONResponse:  # noqa: B008,A002
        return _json({"holds": model.holds(tracking_dsn(), catalog(), active_only=not all)})

    @app.get("/api/actions")
    def actions_api(user: Any = Depends(reader)) -> JSONResponse:  # noqa: B008
        return _json({"actions": model.actions(tracking_dsn(), catalog(), 200)})

    # -------------------------------------------------------------------------- JSON: actions
    from erasure import operator_actions as ops

    @app.post("/api/holds")
    def place_hold_api(body: HoldIn, user: Any = Depends(writer)) -> JSONResponse:  # noqa: B008
        return _act(
            ops.place_hold,
            tracking_dsn(),
            catalog(),
            body.subject_type,
            body.subject_id,
            body.reason,
            actor(user),
        )

    @app.post("/api/holds/{hold_id}/release")
    def release_hold_api(hold_id: int, body: Reason, user: Any = Depends(writer)) -> JSONResponse:  # noqa: B008
        return _act(ops.release_hold, tracking_dsn(), hold_id, body.reason, actor(user))

    @app.post("/api/tasks/{task_id}/rerun")
    def rerun_api(task_id: int, body: Reason, user: Any = Depends(writer)) -> JSONResponse:  # noqa: B008
        return _act(ops.rerun_task, tracking_dsn(), task_id, body.reason, actor(user))

    @app.post("/api/events/{event_id}/replay")
    def replay_api(event_id: str, body: Reason, user: Any = Depends(writer)) -> JSONResponse:  # noqa: B008
        return _act(ops.replay_event, tracking_dsn(), event_id, body.reason, actor(user))

    @app.post("/api/requests/{request_id}/withdraw")
    def withdraw_api(request_id: int, body: Reason, user: Any = Depends(writer)) -> JSONResponse:  # noqa: B008
        return _act(ops.withdraw_request, tracking_dsn(), request_id, body.reason, actor(user))

    return app
