"""``python -m erasure_demo.demo``: the whole erasure pipeline, end to end, on the running local stack.

Run by ``make demo`` (``scripts/demo.sh``) after the stack and the demo partners are up. It

1. checks the stack (Airflow API, DAGs parsed, partners healthy) and generates the warehouse Delta
   tables when they are missing (demo size);
2. creates fresh demo people (new ids every run, so the demo can be run again and again) with
   realistic personal data in every system: the sync partners and the Kafka partners (their admin
   seed endpoints), the warehouse tables (Spark appends) and the HR directory (Postgres);
3. submits a realistic set of erasure requests through Airflow's REST API v2 (JWT from
   ``POST /auth/token``): valid ones in several jurisdictions, duplicates (same external id; same
   subject), one invalid request the DAG's Params reject (HTTP 4xx, no run), one the intake logic
   rejects, and one for a subject under legal hold;
4. unpauses and triggers the DAGs (dispatch, reconcile, warehouse, event dataset) and waits for them,
   with one partner outage injected through the partner's admin fault endpoint (it recovers: the
   pipeline retries);
5. prints a report: per request and target the state and evidence, SLA status, the rows gone from
   partner stores and warehouse tables (before/after), and a query of the Delta event dataset
   (deltalake + DuckDB). Exit status 1 when any expectation fails.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from erasure.catalog import Catalog, Target, load_catalog
from erasure.db import transaction
from erasure.identity import IdentityCodec
from erasure.settings import get_settings, secret_from_env
from erasure.targets import Context, adapter, adapter_for
from erasure.targets.base import generic_summary
from erasure.targets.fields import MASK_STRING
from erasure.targets.postgres_table import PostgresTableSpec
from erasure.targets.warehouse_delta import WarehouseDeltaSpec
from erasure.vocab import CheckOutcome
from erasure_demo.airflow_client import AirflowApi
from erasure_demo.partners import partner_url

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

INTAKE_DAG = "erasure_intake"
PIPELINE_DAGS = ("erasure_dispatch", "erasure_reconcile", "erasure_warehouse", "erasure_event_dataset")
WORK_DAGS = ("erasure_dispatch", "erasure_warehouse")  # each round: these (and any other erasure DAG), then
SETTLE_DAGS = ("erasure_reconcile",)  # reconcile; at the end the event dataset
FINAL_DAGS = ("erasure_event_dataset", "erasure_proof")
NOT_DRIVEN = (
    "erasure_intake",
    "erasure_intake_scheduled",
    "erasure_canary",
    "erasure_smoke",
    "erasure_deadline_selftest",
    "erasure_retention",  # run once, for the report (it minimises only what finished 30 days ago)
)
RETENTION_DAG = "erasure_retention"
CANARY_DAG = "erasure_canary"

FIRST = [
    "Ada",
    "Grace",
    "Alan",
    "Hedy",
    "Linus",
    "Margaret",
    "Tim",
    "Radia",
    "Ken",
    "Barbara",
    "Dennis",
    "Frances",
]
LAST = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Lamarr",
    "Torvalds",
    "Hamilton",
    "Berners-Lee",
    "Perlman",
    "Thompson",
]
CITIES = ["Leeds", "Lyon", "Porto", "Gdansk", "Utrecht", "Ghent", "Turku", "Brno", "Cork", "Graz"]
STREETS = ["High Street", "Rue Victor Hugo", "Rua Augusta", "Dluga", "Oudegracht", "Korenmarkt"]
AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
]


# ------------------------------------------------------------------------------------ output
class Console:
    def __init__(self, stream: Any = None) -> None:
        self.t0 = time.monotonic()
        self.stream = stream or sys.stdout
        self.color = hasattr(self.stream, "isatty") and self.stream.isatty()

    def _b(self, s: str) -> str:
        return f"\033[1m{s}\033[0m" if self.color else s

    def step(self, msg: str) -> None:
        print(f"{self._b(f'[demo {time.monotonic() - self.t0:5.0f}s]')} {msg}", file=self.stream, flush=True)

    def info(self, msg: str) -> None:
        print(f"             {msg}", file=self.stream, flush=True)

    def line(self, msg: str = "") -> None:
        print(msg, file=self.stream, flush=True)

    def heading(self, msg: str) -> None:
        self.line()
        self.line(self._b(msg))
        self.line(self._b("-" * len(msg)))

    def table(self, headers: list[str], rows: list[list[Any]]) -> None:
        cells = [[_cell(c) for c in r] + [""] * (len(headers) - len(r)) for r in rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        widths = [min(w, 100) for w in widths]
        self.line("  " + "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
        self.line("  " + "  ".join("-" * w for w in widths))
        for r in cells:
            self.line("  " + "  ".join(c[:w].ljust(w) for c, w in zip(r, widths, strict=True)))


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


@dataclass
class Expectation:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Person:
    subject_type: str
    subject_id: str
    name: str
    email: str
    phone: str
    address: str
    role: str  # erase | held | duplicate-of | employee ...
    jurisdiction: str = "GDPR"
    external_id: str = ""
    devices: list[str] = field(default_factory=list)
    by_email: bool = False
    """Asks by e-mail address only: found through the catalog's resolvers (docs/identity.md)."""

    def value(self, id_type: str) -> list[str]:
        """The person's identifiers of ``id_type`` as the systems store them (normalised)."""
        return {
            "customer_id": [self.subject_id] if self.subject_type == "customer" else [],
            "employee_id": [self.subject_id] if self.subject_type == "employee" else [],
            "email": [self.email.lower()],
            "phone": ["+" + "".join(ch for ch in self.phone if ch.isdigit())],
            "device_id": list(self.devices),
        }.get(id_type, [self.subject_id])


@dataclass
class Submission:
    label: str
    conf: dict[str, Any]
    expect: str  # 'registered' | 'duplicate' | 'rejected' | 'held' | 'http_4xx'
    http_status: int | None = None
    run_id: str | None = None
    run_state: str | None = None
    outcome: dict[str, Any] | None = None


@dataclass
class DemoConfig:
    customers: int = 6
    warehouse_rows: int = 200_000
    timeout_min: float = 12.0
    outage_target: str = "billing_profiles"
    outage_seconds: int = 45
    canary: bool = True
    tag: str = field(default_factory=lambda: secrets.token_hex(3))


# ----------------------------------------------------------------------------- people & data
def _person(rng: random.Random, subject_type: str, subject_id: str, role: str, jurisdiction: str) -> Person:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    city = rng.choice(CITIES)
    return Person(
        subject_type=subject_type,
        subject_id=subject_id,
        name=f"{first} {last}",
        email=f"{first.lower()}.{last.lower().replace('-', '')}{rng.randint(1, 99)}@example.com",
        phone=f"+44 20 7946 {rng.randint(0, 9999):04d}",
        address=f"{rng.randint(1, 200)} {rng.choice(STREETS)}, {city}",
        role=role,
        jurisdiction=jurisdiction,
    )


def make_people(cfg: DemoConfig, catalog: Catalog) -> list[Person]:
    """Fresh demo subjects (ids unique per run): customers to erase, one held, one employee."""
    rng = random.Random(cfg.tag)
    jur = sorted(catalog.jurisdiction_sla_days) or ["GDPR"]
    people = [
        _person(rng, "customer", f"cus_demo{cfg.tag}{i:02d}", "erase", jur[i % len(jur)])
        for i in range(1, cfg.customers + 1)
    ]
    people.append(_person(rng, "customer", f"cus_demo{cfg.tag}held", "held", "GDPR"))
    people.append(_person(rng, "employee", f"emp_{int(cfg.tag, 16) % 10**8:08d}", "erase", "GDPR"))
    for i, p in enumerate(people):
        p.external_id = f"demo-{cfg.tag}-{p.subject_id}"
        if p.subject_type == "customer":
            p.devices = [f"dev_{cfg.tag}{i:02d}phone", f"dev_{cfg.tag}{i:02d}laptop"]
    if catalog.has_identity:  # the last customer to erase asks by e-mail only
        [p for p in people if p.role == "erase" and p.subject_type == "customer"][-1].by_email = True
    return people


def partner_record(target: Target, p: Person) -> dict[str, Any]:
    data: dict[str, Any] = {target.identity_key: p.subject_id}
    values = {
        "name": p.name,
        "email": p.email,
        "phone": p.phone,
        "billing_address": p.address,
        "home_address": p.address,
        "tax_id": f"GB{abs(hash(p.subject_id)) % 10**9:09d}",
        "ticket_body": f"Hi, this is {p.name}. My parcel to {p.address} never arrived.",
        "chat_transcript": f"{p.name}: can you update my email to {p.email}?",
        "campaign_history": ["spring-sale", "newsletter-2026-10"],
        "browsing_features": {"top_category": "books", "sessions_30d": 12},
    }
    for f in target.personal_data:
        data[f] = values.get(f, f"{f} of {p.name}")
    return data


def _spark_value(col: str, dtype: Any, p: Person, rng: random.Random, i: int) -> Any:
    from pyspark.sql import types as T

    c = col.lower()
    if isinstance(dtype, T.StringType):
        if "email" in c:
            return p.email
        if "name" in c:
            return p.name
        if "phone" in c:
            return p.phone
        if "address" in c:
            return p.address
        if c.startswith("ip") or "_ip" in c:
            return f"203.0.113.{rng.randint(1, 254)}"
        if "agent" in c:
            return rng.choice(AGENTS)
        if "url" in c or "page" in c or "path" in c:
            return rng.choice(["/", "/books", "/cart", "/checkout", "/account"])
        if "country" in c:
            return rng.choice(["GB", "FR", "PT", "PL", "NL"])
        if c.endswith("_id") or c == "id":
            return f"{c[:3]}_{secrets.token_hex(6)}"
        return f"{col}-{i}"
    if isinstance(dtype, T.DateType):
        if "birth" in c:
            return date(1960, 1, 1) + timedelta(days=rng.randint(0, 15000))
        return (datetime.now(UTC) - timedelta(days=rng.randint(0, 30))).date()
    if isinstance(dtype, T.TimestampNTZType):
        return (datetime.now(UTC) - timedelta(minutes=rng.randint(0, 40000))).replace(tzinfo=None)
    if isinstance(dtype, T.TimestampType):
        return datetime.now(UTC) - timedelta(minutes=rng.randint(0, 40000))
    if isinstance(dtype, T.BooleanType):
        return rng.random() < 0.5
    if isinstance(dtype, T.IntegralType):
        return rng.randint(1, 2**31 - 1) if c.endswith("id") else rng.randint(1, 500)
    if isinstance(dtype, T.DecimalType):
        from decimal import Decimal

        return Decimal(rng.randint(100, 99999)) / 100
    if isinstance(dtype, T.FractionalType):
        return round(rng.uniform(1, 500), 2)
    return None


# ----------------------------------------------------------------------------------- the demo
class Demo:
    def __init__(self, cfg: DemoConfig, console: Console | None = None) -> None:
        self.cfg = cfg
        self.out = console or Console()
        self.settings = get_settings()
        self.catalog = load_catalog(self.settings.catalog_path)
        self.dsn = self.settings.require_tracking_dsn()
        self.api = AirflowApi.from_env()
        self.http = httpx.Client(timeout=15)
        self.people = make_people(cfg, self.catalog)
        self.codec = IdentityCodec.from_settings(self.settings) if self.catalog.has_identity else None
        self.submissions: list[Submission] = []
        self.expect: list[Expectation] = []
        self.partner_before: dict[str, dict[str, Any]] = {}
        self.partner_after: dict[str, dict[str, Any]] = {}
        self.wh_before: dict[str, dict[str, int]] = {}
        self.wh_after: dict[str, dict[str, int]] = {}
        self.hr_before: dict[str, int] = {}
        self.hr_after: dict[str, int] = {}
        self.outage: dict[str, Any] = {}
        self.runs: list[tuple[str, str, str, float]] = []
        self._spark: SparkSession | None = None
        self.canary_subjects: list[str] = []
        self._canary_run: str | None = None
        self.work_dags: list[str] = list(WORK_DAGS)

    # ---------------------------------------------------------------- helpers
    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.expect.append(Expectation(name, bool(ok), detail))
        return bool(ok)

    @property
    def spark(self) -> SparkSession:
        if self._spark is None:
            from erasure.spark import get_spark

            self.out.info("starting Spark (local, Delta) for the warehouse tables ...")
            self._spark = get_spark("erasure-demo", settings=self.settings)
            self._spark.sparkContext.setLogLevel("ERROR")
        return self._spark

    def key_of(self, p: Person) -> str:
        """The ``subject_id`` of the person's request: the keyed digest of the e-mail address for a
        person who asked by e-mail (the request row never holds it in clear), else the id."""
        if p.by_email and self.codec is not None:
            return self.codec.digest("email", p.email.lower())
        return p.subject_id

    def person(self, role: str) -> list[Person]:
        return [p for p in self.people if p.role == role]

    @property
    def erased_people(self) -> list[Person]:
        return [p for p in self.people if p.role == "erase"]

    def held_people(self) -> list[Person]:
        return self.person("held")

    def _http_targets(self) -> list[tuple[Target, str]]:
        """The enabled targets played by a demo partner, with the URL of its HTTP (admin) endpoints."""
        return [(t, url) for t in self.catalog.targets if t.enabled and (url := partner_url(t))]

    # ---------------------------------------------------------------- 1. preflight
    def preflight(self) -> None:
        self.out.step("checking the stack: Airflow API, DAGs, partners")
        if not self.api.healthy():
            raise SystemExit(f"Airflow API at {self.api.base_url} is not healthy: run scripts/stack.sh up")
        for dag_id in (INTAKE_DAG, *PIPELINE_DAGS, *((CANARY_DAG,) if self.cfg.canary else ())):
            self.api.wait_for_dag(dag_id, timeout=180)
        r = self.api.request("GET", "/dags", params={"tags": "erasure", "limit": 100})
        r.raise_for_status()
        found = {d["dag_id"] for d in r.json()["dags"]}
        extra = sorted(d for d in found - set(PIPELINE_DAGS) - set(NOT_DRIVEN) if "test" not in d)
        self.work_dags = [*WORK_DAGS, *extra]
        self.out.info(
            f"DAGs parsed: {INTAKE_DAG}, {', '.join(PIPELINE_DAGS)}"
            + (f", {', '.join(extra)}" if extra else "")
        )
        for t, base in self._http_targets():
            deadline = time.monotonic() + 60
            while True:
                try:
                    if self.http.get(base + "/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"partner {t.name} at {base} is not healthy: scripts/stack.sh up partners"
                    )
                time.sleep(1)
            # a previous interrupted run may have left a fault switched on
            self.http.delete(base + "/admin/faults")
        self.out.info(f"partners healthy: {', '.join(t.name for t, _ in self._http_targets())}")

    # ---------------------------------------------------------------- 2. data
    def prepare_warehouse(self) -> None:
        targets = self.catalog.of_kind("warehouse_delta")
        if not targets:
            return
        from delta.tables import DeltaTable

        missing = [
            t
            for t in targets
            if not DeltaTable.isDeltaTable(self.spark, t.spec_as(WarehouseDeltaSpec).resolved_path())
        ]
        if missing:
            self.out.step(
                f"generating the warehouse Delta tables ({self.cfg.warehouse_rows:,} rows): "
                + ", ".join(t.spec_as(WarehouseDeltaSpec).table for t in missing)
            )
            from erasure_demo import warehouse_gen

            made = warehouse_gen.generate_tables(
                self.spark, self.catalog, rows=self.cfg.warehouse_rows, targets=[t.name for t in missing]
            )
            for g in made.values():
                self.out.info(
                    f"{g.table}: {g.rows:,} rows in {g.files} files"
                    + (f", partitioned by {', '.join(g.partition_columns)}" if g.partition_columns else "")
                    + (", deletion vectors on" if g.deletion_vectors else "")
                )
        else:
            self.out.step("warehouse Delta tables exist (generated by an earlier run)")

    def seed(self) -> None:
        self.out.step(
            f"creating {len(self.people)} demo people with personal data in every system (run tag {self.cfg.tag})"
        )
        for p in self.people:
            self.out.info(
                f"{p.subject_type:<8} {p.subject_id:<22} {p.name:<20} {p.email:<34} ({p.role}{', asks by e-mail only' if p.by_email else ''})"
            )
        # partners (sync APIs and Kafka consumers' stores): the customer population of the warehouse
        # tables (cus_00000000 ...) as background, once, then the demo people
        population = max(100, self.cfg.warehouse_rows // 10)
        for t, base in self._http_targets():
            stats = self.http.get(base + "/admin/stats")
            if (
                "customer" in t.subject_types
                and stats.status_code == 200
                and stats.json().get("subjects", 0) < population
            ):
                r = self.http.post(
                    base + "/admin/seed",
                    json={
                        "prefix": "cus_",
                        "count": population,
                        "start": 0,
                        "data": {"source": "demo background"},
                    },
                    timeout=120,
                )
                r.raise_for_status()
                self.out.info(f"{t.name}: {population:,} background customer records")
        for t, base in self._http_targets():
            for p in self.people:
                if p.subject_type not in t.subject_types:
                    continue
                r = self.http.post(
                    base + "/admin/seed", json={"subject_ids": [p.subject_id], "data": partner_record(t, p)}
                )
                r.raise_for_status()
        # HR directory (postgres_table)
        for t in self.catalog.of_kind("postgres_table"):
            self._seed_postgres(t, [p for p in self.people if p.subject_type in t.subject_types])
        # warehouse
        self._seed_warehouse()
        # legal hold for the held subject (before its request arrives)
        from erasure.holds import place_hold

        for p in self.held_people():
            place_hold(
                self.dsn,
                p.subject_type,
                p.subject_id,
                "litigation hold: case 2026-117 (demo)",
                "legal@demo",
                self.catalog,
            )
        self.out.info(f"legal hold placed on {', '.join(p.subject_id for p in self.held_people())}")

    def _seed_postgres(self, t: Target, people: list[Person]) -> None:
        from psycopg2 import sql

        spec = t.spec_as(PostgresTableSpec)
        schema, _, name = spec.table.rpartition(".")
        with transaction(secret_from_env(spec.dsn_env, f"target '{t.name}': postgres_table.dsn_env")) as cur:
            cur.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema=%s AND table_name=%s",
                (schema or "public", name),
            )
            cols = {r["column_name"] for r in cur.fetchall()}
            if {spec.key_column, "name"} <= cols and spec.key_column == "employee_id":
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {} (employee_id, name) SELECT 'emp_' || lpad(i::text, 6, '0'), 'Employee ' || i "
                        "FROM generate_series(1, 250) i ON CONFLICT DO NOTHING"
                    ).format(sql.Identifier(*(spec.table.split("."))))
                )
            for p in people:
                base = {
                    "customer_id": p.subject_id,
                    "employee_id": p.subject_id,
                    "email": p.email.lower(),
                    "name": p.name,
                    "phone": p.phone,
                    "home_address": p.address,
                }
                # a table keyed by another identifier holds the person under that one (docs/identity.md)
                rows = (
                    [
                        {**base, "device_id": d, "model": m}
                        for d, m in zip(p.devices, ("phone", "laptop"), strict=False)
                    ]
                    if "device_id" in cols
                    else [base]
                )
                for row in rows:
                    row = {k: v for k, v in row.items() if k in cols}
                    cur.execute(
                        sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
                            sql.Identifier(*(spec.table.split("."))),
                            sql.SQL(", ").join(sql.Identifier(k) for k in row),
                            sql.SQL(", ").join(sql.Placeholder() for _ in row),
                        ),
                        list(row.values()),
                    )

    def _seed_warehouse(self) -> None:
        rng = random.Random(self.cfg.tag + "wh")
        for t in self.catalog.of_kind("warehouse_delta"):
            spec = t.spec_as(WarehouseDeltaSpec)
            people = [p for p in self.people if p.subject_type in t.subject_types]
            if not people:
                continue
            schema = self.spark.read.format("delta").load(spec.resolved_path()).schema
            per = 1 if spec.mode == "mask" else (4 if "order" in spec.table else 25)
            rows = []
            for p in people:
                keys = p.value(t.identity_key) or [p.subject_id]  # e.g. a click-stream keyed by device id
                for i in range(per):
                    rows.append(
                        {
                            f.name: keys[i % len(keys)]
                            if f.name == spec.key_column
                            else _spark_value(f.name, f.dataType, p, rng, i)
                            for f in schema.fields
                        }
                    )
            self.spark.createDataFrame(rows, schema).write.format("delta").mode("append").save(
                spec.resolved_path()
            )
            self.out.info(f"{spec.table}: appended {len(rows)} rows for {len(people)} demo people")

    # ---------------------------------------------------------------- counts
    def count_partners(self) -> dict[str, dict[str, Any]]:
        """Per partner: its record count, and the demo people it still holds as the pipeline verifies an
        erasure (the kind's adapter ``verify``: ``fail`` = still there; a subject it cannot tell about
        counts as present)."""
        ctx = Context(settings=self.settings, http=self.http)
        out = {}
        for t, base in self._http_targets():
            stats = self.http.get(base + "/admin/stats").json()
            present = []
            for p in self.people:
                if p.subject_type in t.subject_types:
                    check = adapter_for(t).verify(ctx, t, p.subject_id)
                    if check.outcome == CheckOutcome.ERROR:
                        self.out.info(
                            f"{t.name}: cannot tell whether {p.subject_id} is there: {check.detail}"
                        )
                    if check.outcome != CheckOutcome.PASS:
                        present.append(p.subject_id)
            out[t.name] = {"subjects": int(stats.get("subjects", 0)), "demo_present": present}
        return out

    def count_warehouse(self) -> dict[str, dict[str, int]]:
        from pyspark.sql import functions as F

        out = {}
        for t in self.catalog.of_kind("warehouse_delta"):
            spec = t.spec_as(WarehouseDeltaSpec)
            df = self.spark.read.format("delta").load(spec.resolved_path())
            people = [p for p in self.people if p.subject_type in t.subject_types]
            # a table keyed by another identifier (device ids) is counted per person all the same
            owner = {v: p.subject_id for p in people for v in p.value(t.identity_key)}
            ids = list(owner)
            unmasked = F.lit(False)
            if spec.mode == "mask":
                for c in spec.mask_columns:
                    is_str = dict(df.dtypes)[c] == "string"
                    cond = (F.col(c) != F.lit(MASK_STRING)) if is_str else F.col(c).isNotNull()
                    unmasked = unmasked | F.coalesce(cond, F.lit(False))
            per = (
                df.where(F.col(spec.key_column).isin(ids))
                .groupBy(spec.key_column)
                .agg(F.count("*").alias("n"), F.sum(F.when(unmasked, 1).otherwise(0)).alias("u"))
                .collect()
            )
            got: dict[str, tuple[int, int]] = {}
            for r in per:
                n, u = got.get(owner[r[spec.key_column]], (0, 0))
                got[owner[r[spec.key_column]]] = (n + int(r["n"]), u + int(r["u"]))
            row = {"total": df.count(), "demo_rows": sum(n for n, _ in got.values())}
            for p in people:
                row[p.subject_id] = got.get(p.subject_id, (0, 0))[0]
            if spec.mode == "mask":
                row["demo_unmasked"] = sum(u for _, u in got.values())
                for p in people:
                    row["unmasked:" + p.subject_id] = got.get(p.subject_id, (0, 0))[1]
            out[t.name] = row
        return out

    def count_hr(self) -> dict[str, int]:
        from psycopg2 import sql

        out = {}
        for t in self.catalog.of_kind("postgres_table"):
            spec = t.spec_as(PostgresTableSpec)
            mine = [p for p in self.people if p.subject_type in t.subject_types]
            ids = [v for p in mine if p.role != "held" for v in p.value(t.identity_key)]
            held = [v for p in mine if p.role == "held" for v in p.value(t.identity_key)]
            with transaction(
                secret_from_env(spec.dsn_env, f"target '{t.name}': postgres_table.dsn_env")
            ) as cur:
                tbl = sql.Identifier(*spec.table.split("."))
                cur.execute(sql.SQL("SELECT count(*) AS n FROM {}").format(tbl))
                total = int(cur.fetchone()["n"])
                cur.execute(
                    sql.SQL("SELECT count(*) AS n FROM {} WHERE {} = ANY(%s)").format(
                        tbl, sql.Identifier(spec.key_column)
                    ),
                    (ids,),
                )
                out[t.name] = total
                out[t.name + ":demo"] = int(cur.fetchone()["n"])
                cur.execute(
                    sql.SQL("SELECT count(*) AS n FROM {} WHERE {} = ANY(%s)").format(
                        tbl, sql.Identifier(spec.key_column)
                    ),
                    (held,),
                )
                out[t.name + ":held"] = int(cur.fetchone()["n"])
        return out

    # ---------------------------------------------------------------- 3. requests
    def build_submissions(self) -> list[Submission]:
        def req(p: Person, **over: Any) -> dict[str, Any]:
            d = {
                "external_id": p.external_id,
                "subject_type": p.subject_type,
                "subject_id": p.subject_id,
                "requested_by": "privacy-portal",
                "reason": "Art. 17 request via the privacy portal",
                "jurisdiction": p.jurisdiction,
            }
            if p.by_email:  # "please erase me", from the address the person knows, as typed
                del d["subject_id"]
                d["identifiers"] = {"email": " " + p.email[:1].upper() + p.email[1:]}
            d.update(over)
            return d

        customers = [p for p in self.erased_people if p.subject_type == "customer"]
        first, second = customers[0], customers[1]
        tag = self.cfg.tag
        return [
            Submission(
                "batch of valid requests", {"requests": [req(p) for p in self.erased_people]}, "registered"
            ),
            Submission("subject under legal hold", req(self.held_people()[0]), "held"),
            Submission("duplicate: same external id again", req(first), "duplicate"),
            Submission(
                "duplicate: same subject, new external id",
                req(second, external_id=second.external_id + "-resent"),
                "duplicate",
            ),
            Submission(
                "intake rejects: customer with an employee id",
                req(
                    first,
                    external_id=f"demo-{tag}-wrong-type",
                    subject_id=f"emp_{int(tag, 16) % 9000 + 1000}",
                ),
                "rejected",
            ),
            Submission(
                "Params reject: malformed subject id",
                req(
                    first, external_id=f"demo-{tag}-malformed", subject_id="Robert'); DROP TABLE customers;--"
                ),
                "http_4xx",
            ),
        ]

    def submit(self) -> None:
        self.out.step("submitting erasure requests through the REST API v2 (JWT from POST /auth/token)")
        self.api.unpause(INTAKE_DAG)
        self.submissions = self.build_submissions()
        # the batch first (the duplicates refer to it), then the rest concurrently
        self._submit(self.submissions[:1])
        self._submit(self.submissions[1:])

    def _submit(self, subs: list[Submission]) -> None:
        for s in subs:
            run_id = f"demo_{self.cfg.tag}_intake_{self.submissions.index(s)}"
            r = self.api.trigger(INTAKE_DAG, conf=s.conf, run_id=run_id)
            s.http_status = r.status_code
            if r.status_code < 300:
                s.run_id = r.json()["dag_run_id"]
            n = len(s.conf.get("requests", [])) or 1
            self.out.info(
                f"POST /api/v2/dags/{INTAKE_DAG}/dagRuns  {s.label} ({n} request(s)) -> HTTP {r.status_code}"
            )
            if r.status_code >= 400:
                self.out.info(f"    {_short_error(r.text)}")
        for s in subs:
            if not s.run_id:
                continue
            run = self.api.wait_for_run(INTAKE_DAG, s.run_id, timeout=300)
            s.run_state = run["state"]
            s.outcome = self._intake_outcome(s.run_id)
            xcom = self.api.xcom(INTAKE_DAG, s.run_id, "register") or {}
            s.outcome["xcom"] = xcom
            msgs = "; ".join(f"{o.get('status')}: {o.get('message')}" for o in xcom.get("outcomes", []))
            self.out.info(f"intake run {s.run_id}: {s.run_state}  {msgs[:150]}")

    def _intake_outcome(self, run_id: str) -> dict[str, Any]:
        """What the intake did for one run: from the tracking store (requests / rejections of the run)."""
        with transaction(self.dsn) as cur:
            cur.execute(
                "SELECT id, external_id, status FROM erasure.request WHERE airflow_run_id=%s ORDER BY id",
                (run_id,),
            )
            regs = [dict(r) for r in cur.fetchall()]
            cur.execute(
                "SELECT external_id, errors FROM erasure.rejected_request WHERE airflow_run_id=%s ORDER BY id",
                (run_id,),
            )
            rej = [dict(r) for r in cur.fetchall()]
        return {"registered": regs, "rejected": rej}

    # ---------------------------------------------------------------- 4. drive the pipeline
    def demo_requests(self, with_canaries: bool = False) -> list[dict[str, Any]]:
        ids = [self.key_of(p) for p in self.people] + (self.canary_subjects if with_canaries else [])
        with transaction(self.dsn) as cur:
            cur.execute(
                """SELECT r.id, r.external_id, r.subject_type, r.subject_id, r.jurisdiction, r.status, r.status_reason,
                          r.received_at, r.due_at, r.completed_at
                     FROM erasure.request r WHERE r.subject_id = ANY(%s) ORDER BY r.id""",
                (ids,),
            )
            reqs = [dict(r) for r in cur.fetchall()]
            cur.execute(
                """SELECT t.request_id, t.target, t.kind, t.status, t.stage, t.attempts, t.last_error, t.evidence,
                          t.next_attempt_at, t.completed_at
                     FROM erasure.task t WHERE t.request_id = ANY(%s) ORDER BY t.request_id, t.target""",
                ([r["id"] for r in reqs],),
            )
            tasks = [dict(t) for t in cur.fetchall()]
        for r in reqs:
            r["tasks"] = [t for t in tasks if t["request_id"] == r["id"]]
        return reqs

    def _trigger_and_wait(self, dag_ids: Iterable[str], timeout: float = 900) -> dict[str, str]:
        started = {}
        for d in dag_ids:
            r = self.api.trigger(d, run_id=f"demo_{self.cfg.tag}_{d}_{secrets.token_hex(3)}")
            if r.status_code >= 300:
                raise RuntimeError(f"triggering {d} failed: HTTP {r.status_code} {r.text[:300]}")
            started[d] = r.json()["dag_run_id"]
        states = {}
        for d, run_id in started.items():
            t0 = time.monotonic()
            run = self.api.wait_for_run(d, run_id, timeout=timeout)
            states[d] = run["state"]
            self.runs.append((d, run_id, run["state"], time.monotonic() - t0))
            if run["state"] != "success":
                failed = [
                    ti["task_id"] for ti in self.api.task_instances(d, run_id) if ti["state"] == "failed"
                ]
                self.out.info(f"{d} run {run_id}: {run['state']} (failed tasks: {', '.join(failed) or '-'})")
        return states

    def inject_outage(self) -> None:
        """Take one partner down (connections dropped) until the pipeline has hit the outage at least
        once and ``outage_seconds`` have passed; then it recovers (a watcher thread resets the fault)."""
        t = self.catalog.target(self.cfg.outage_target)
        base = partner_url(t)
        if base is None:
            raise SystemExit(
                f"outage target '{t.name}' is not played by a demo partner with an HTTP endpoint"
            )
        r = self.http.put(base + "/admin/faults", json={"down": True})
        r.raise_for_status()
        self.outage = {"target": t.name, "seconds": self.cfg.outage_seconds, "at": datetime.now(UTC)}
        self.out.step(
            f"OUTAGE: partner '{t.name}' drops every connection (PUT {base}/admin/faults); it recovers after "
            f">= {self.cfg.outage_seconds}s, once the pipeline has hit it"
        )
        ids = [p.subject_id for p in self.people]
        self._outage_thread = threading.Thread(
            target=self._end_outage, args=(t.name, base, ids), name="demo-outage", daemon=True
        )
        self._outage_thread.start()

    def _end_outage(self, target: str, base: str, subject_ids: list[str]) -> None:
        t0 = time.monotonic()
        hit = False
        while time.monotonic() - t0 < 600:
            if not hit:
                with transaction(self.dsn) as cur:
                    cur.execute(
                        """SELECT count(*) AS n FROM erasure.task t JOIN erasure.request r ON r.id = t.request_id
                            WHERE t.target = %s AND r.subject_id = ANY(%s) AND (t.attempts > 0 OR t.status = 'failed')""",
                        (target, subject_ids),
                    )
                    hit = cur.fetchone()["n"] > 0
            if hit and time.monotonic() - t0 >= self.cfg.outage_seconds:
                break
            time.sleep(2)
        with httpx.Client(timeout=15) as c:
            c.delete(base + "/admin/faults")
        self.outage["recovered_after_s"] = round(time.monotonic() - t0)
        self.out.step(f"partner '{target}' is back after {self.outage['recovered_after_s']}s")

    def drive(self) -> None:
        self.out.step("unpausing the pipeline DAGs and triggering them until every request is finished")
        for d in [*self.work_dags, *SETTLE_DAGS, *FINAL_DAGS]:
            self.api.unpause(d)
        self.inject_outage()
        deadline = time.monotonic() + self.cfg.timeout_min * 60
        rnd = 0
        progress: list[int] = []
        while True:
            rnd += 1
            self._trigger_and_wait(WORK_DAGS)
            extra = [d for d in self.work_dags if d not in WORK_DAGS]  # e.g. erasure_acks
            if extra:
                self._trigger_and_wait(extra)
            self._trigger_and_wait(SETTLE_DAGS)
            everything = self.demo_requests(with_canaries=True)
            reqs = [
                r
                for r in everything
                if r["status"] != "rejected" and r["subject_id"] not in self.canary_subjects
            ]
            open_ = [r for r in everything if r["status"] in ("received", "in_progress", "resolving")]
            done = [r for r in reqs if r["status"] in ("completed", "failed")]
            waiting_c = Counter(
                f"{t['target']} {t['status']}" + (f"/{t['stage']}" if t["stage"] else "")
                for r in open_
                for t in r["tasks"]
                if t["status"] != "succeeded"
            )
            waiting = [f"{k} x{n}" for k, n in sorted(waiting_c.items())]
            self.out.step(
                f"round {rnd}: {len(done)}/{len(reqs) - len(self.held_people())} requests finished, "
                f"{len(self.held_people())} held; open tasks: {', '.join(waiting) or 'none'}"
            )
            if not open_:
                break
            if time.monotonic() > deadline:
                self.out.step("timeout: stopping the rounds (the report shows what is still open)")
                break
            # stalled: nothing succeeded for 3 rounds while only failing tasks are left
            progress.append(sum(t["status"] == "succeeded" for r in everything for t in r["tasks"]))
            failing = [t for r in open_ for t in r["tasks"] if t["status"] not in ("succeeded", "escalated")]
            if (
                len(progress) > 3
                and progress[-1] == progress[-4]
                and all(t["attempts"] >= 2 for t in failing)
            ):
                errors = sorted({(t["target"], (t["last_error"] or "")[:160]) for t in failing})
                self.out.step("no progress for 3 rounds; stopping. Last errors:")
                for target, err in errors:
                    self.out.info(f"{target}: {err}")
                    if "is not set" in err:
                        self.out.info(
                            "  (the running Airflow lacks this environment variable: restart it with "
                            "scripts/stack.sh down airflow && scripts/stack.sh up airflow)"
                        )
                break
            nxt = [
                t["next_attempt_at"]
                for r in open_
                for t in r["tasks"]
                if t["status"] in ("failed", "pending")
            ]
            if nxt:
                wait = (min(nxt) - datetime.now(UTC)).total_seconds()
                if wait > 0:
                    wait = min(wait + 2, 75)
                    self.out.info(f"next retry is due in {wait:.0f}s; waiting")
                    time.sleep(wait)
            else:
                time.sleep(5)  # acks from Kafka partners / warehouse stages in flight
        self.out.step("building the Delta event dataset")
        self._trigger_and_wait(FINAL_DAGS)

    # ---------------------------------------------------------------- canary
    def canary_start(self) -> None:
        """Trigger the canary (seed + request with delay 0); it runs while the requests are submitted."""
        self._canary_run = None
        if not self.cfg.canary:
            return
        self.out.step(
            "canary: triggering erasure_canary (seeds a synthetic subject in every target, delay 0)"
        )
        self.api.unpause(CANARY_DAG)
        r = self.api.trigger(
            CANARY_DAG,
            conf={"delay_minutes": 0, "count": 1, "verify_timeout_minutes": 60},
            run_id=f"demo_{self.cfg.tag}_canary_seed",
        )
        r.raise_for_status()
        self._canary_run = r.json()["dag_run_id"]

    def canary_wait(self) -> None:
        if not self._canary_run:
            return
        run = self.api.wait_for_run(CANARY_DAG, self._canary_run, timeout=600)
        with transaction(self.dsn) as cur:
            cur.execute(
                "SELECT subject_id FROM erasure.canary_subject WHERE details ->> 'run_id' = %s ORDER BY subject_id",
                (self._canary_run,),
            )
            self.canary_subjects = [r["subject_id"] for r in cur.fetchall()]
        self.out.step(
            f"canary run {run['state']}: synthetic subject(s) {', '.join(self.canary_subjects) or '-'} seeded everywhere "
            "and their erasure requested"
        )

    def canary_verify(self) -> list[dict[str, Any]]:
        if not self.cfg.canary or not self.canary_subjects:
            return []
        self.out.step("canary: verifying the synthetic subject is gone from every target")
        r = self.api.trigger(
            CANARY_DAG,
            conf={"count": 0, "verify_timeout_minutes": 60},
            run_id=f"demo_{self.cfg.tag}_canary_verify",
        )
        r.raise_for_status()
        self.api.wait_for_run(CANARY_DAG, r.json()["dag_run_id"], timeout=420)
        from erasure.canary import summary

        return [s for s in summary(self.dsn, limit=200) if s["subject_id"] in self.canary_subjects]

    # ---------------------------------------------------------------- 5. report
    def report(self, canaries: list[dict[str, Any]]) -> None:
        o = self.out
        reqs = self.demo_requests()
        by_subject: dict[str, list[dict[str, Any]]] = {}
        for r in reqs:
            by_subject.setdefault(r["subject_id"], []).append(r)

        o.heading("Submissions (REST API v2 -> erasure_intake)")
        rows = []
        for s in self.submissions:
            oc = s.outcome or {}
            got = (
                f"HTTP {s.http_status}"
                if s.expect == "http_4xx"
                else f"run {s.run_state}; registered {len(oc.get('registered', []))}, rejected {len(oc.get('rejected', []))}"
            )
            rows.append([s.label, s.expect, got])
        o.table(["submission", "expected", "result"], rows)
        self._check_submissions()

        o.heading("Requests: state, SLA and evidence per target")
        now = datetime.now(UTC)
        for r in reqs:
            sla = (
                "met"
                if r["completed_at"] and r["completed_at"] <= r["due_at"]
                else ("BREACHED" if now > r["due_at"] else f"open, {(r['due_at'] - now).days} days left")
            )
            o.line(
                f"  request {r['id']} {r['external_id']}  {r['subject_type']} {r['subject_id']}  [{r['jurisdiction']}]  "
                f"status={r['status'].upper()}  due {r['due_at']:%Y-%m-%d}  SLA {sla}"
                + (f"  ({r['status_reason']})" if r["status_reason"] else "")
            )
            o.table(
                ["target", "kind", "status", "attempts", "evidence"],
                [
                    [
                        t["target"],
                        t["kind"],
                        t["status"] + (f"/{t['stage']}" if t["stage"] else ""),
                        t["attempts"],
                        _evidence(t),
                    ]
                    for t in r["tasks"]
                ],
            )
        self._check_requests(reqs, now)
        self._identity(reqs)

        o.heading(
            f"Partner outage: {self.outage.get('target')} down for {self.outage.get('recovered_after_s', '?')}s"
        )
        self._check_outage(reqs)

        o.heading("Partner stores: demo subjects before -> after")
        rows = []
        for name, before in self.partner_before.items():
            after = self.partner_after.get(name, {})
            rows.append(
                [
                    name,
                    before["subjects"],
                    after.get("subjects"),
                    len(before["demo_present"]),
                    len(after.get("demo_present", [])),
                    ", ".join(after.get("demo_present", [])) or "-",
                ]
            )
        o.table(
            ["partner", "records before", "after", "demo subjects before", "after", "still present"], rows
        )
        held = {p.subject_id for p in self.held_people()}
        for name, after in self.partner_after.items():
            present = set(after["demo_present"])
            had = set(self.partner_before[name]["demo_present"])
            self.check(
                f"partner {name}: erased subjects gone, held subject kept",
                present == (had & held) and bool(had - held),
                f"present after: {sorted(present)}",
            )
        for name in [k for k in self.hr_before if ":" not in k]:
            key = self.catalog.target(name).identity_key
            o.line(
                f"  {name} (Postgres, keyed by {key}): {self.hr_before[name]:,} rows -> {self.hr_after.get(name, 0):,}; "
                f"rows of erased demo people {self.hr_before[name + ':demo']} -> {self.hr_after.get(name + ':demo')}; "
                f"of the held one {self.hr_before[name + ':held']} -> {self.hr_after.get(name + ':held')}"
            )
            self.check(
                f"postgres {name}: erased people's rows gone, held person's kept",
                self.hr_before[name + ":demo"] > 0
                and self.hr_after.get(name + ":demo") == 0
                and self.hr_after.get(name + ":held") == self.hr_before[name + ":held"],
            )

        o.heading("Warehouse Delta tables: rows before -> after")
        rows = []
        for name, b in self.wh_before.items():
            a = self.wh_after.get(name, {})
            t = self.catalog.target(name)
            mode = t.spec_as(WarehouseDeltaSpec).mode
            rows.append(
                [
                    name,
                    mode,
                    b["total"],
                    a.get("total"),
                    b["demo_rows"],
                    a.get("demo_rows"),
                    b.get("demo_unmasked", "-"),
                    a.get("demo_unmasked", "-"),
                ]
            )
            for p in self.people:
                if p.subject_id not in b:
                    continue
                before, after = b[p.subject_id], a.get(p.subject_id)
                unm_b, unm_a = b.get("unmasked:" + p.subject_id), a.get("unmasked:" + p.subject_id)
                if p.role == "held":
                    label, ok = "kept (legal hold)", after == before > 0 and unm_a == unm_b
                elif mode == "mask":
                    label, ok = "masked, row kept", after == before > 0 and unm_a == 0
                else:
                    label, ok = "rows gone", before > 0 and after == 0
                self.check(
                    f"warehouse {name}: {p.subject_id} {label}",
                    ok,
                    f"rows {before} -> {after}"
                    + (f", unmasked {unm_b} -> {unm_a}" if mode == "mask" else ""),
                )
        o.table(
            [
                "target",
                "mode",
                "rows before",
                "after",
                "demo rows before",
                "after",
                "unmasked before",
                "after",
            ],
            rows,
        )

        o.heading("Delta event dataset (deltalake + DuckDB)")
        self._event_dataset(reqs)

        o.heading("Proof of erasure: the audit chain and a signed receipt (erasure_proof)")
        self._proof(reqs)

        o.heading("Personal data the pipeline keeps (erasure_retention, docs/personal-data.md)")
        self._personal_data(reqs)

        if canaries:
            o.heading("Canary (synthetic subjects, erased and verified)")
            for c in canaries:
                o.line(f"  {c['subject_id']}: request {c['request_id']} result={c['result']}")
                o.table(
                    ["target", "passed", "detail"],
                    [[t, v["passed"], v["detail"]] for t, v in sorted(c["checks"].items())],
                )
                self.check(
                    f"canary {c['subject_id']} passes in every target",
                    c["result"] == "pass",
                    str(c["result"]),
                )

        o.heading("DAG runs driven by the demo (REST API v2)")
        by_dag: dict[str, list[tuple[str, float]]] = {}
        for d, _run, state, secs in self.runs:
            by_dag.setdefault(d, []).append((state, secs))
        o.table(
            ["DAG", "runs", "states", "total wait s"],
            [
                [d, len(v), ", ".join(sorted({st for st, _ in v})), round(sum(x for _, x in v), 1)]
                for d, v in sorted(by_dag.items())
            ],
        )

        o.heading("Expectations")
        for e in self.expect:
            o.line(
                f"  [{'PASS' if e.ok else 'FAIL'}] {e.name}"
                + (f"  ({e.detail})" if e.detail and not e.ok else "")
            )
        n_fail = sum(not e.ok for e in self.expect)
        o.line()
        o.line(
            f"  {len(self.expect) - n_fail}/{len(self.expect)} expectations met"
            + (f", {n_fail} FAILED" if n_fail else "")
        )

    def _check_submissions(self) -> None:
        for s in self.submissions:
            oc = s.outcome or {}
            statuses = [o.get("status") for o in (oc.get("xcom") or {}).get("outcomes", [])]
            if s.expect == "http_4xx":
                self.check(
                    f"{s.label}: HTTP 4xx and no DAG run",
                    s.http_status is not None and 400 <= s.http_status < 500 and s.run_id is None,
                    f"HTTP {s.http_status}",
                )
            elif s.expect == "rejected":
                errs = json.dumps(oc.get("rejected", []))
                self.check(
                    f"{s.label}: recorded in erasure.rejected_request, naming subject_id",
                    len(oc.get("rejected", [])) == 1 and "subject_id" in errs and not oc.get("registered"),
                    errs[:200],
                )
            elif s.expect == "duplicate":
                self.check(
                    f"{s.label}: reported as duplicate, no new request",
                    s.run_state == "success" and statuses == ["duplicate"] and not oc.get("registered"),
                    f"run {s.run_state}, outcomes {statuses}",
                )
            elif s.expect == "held":  # held at once, or once its identity is resolved (checked below)
                regs = oc.get("registered", [])
                self.check(
                    f"{s.label}: registered (held, or resolving its identity first)",
                    s.run_state == "success" and [r["status"] for r in regs] in (["held"], ["resolving"]),
                    str(regs),
                )
            else:
                want = len(s.conf.get("requests", [])) or 1
                got = len(oc.get("registered", []))
                self.check(
                    f"{s.label}: {want} requests registered",
                    s.run_state == "success" and got == want,
                    f"run {s.run_state}, registered {got}",
                )

    def _check_requests(self, reqs: list[dict[str, Any]], now: datetime) -> None:
        for p in self.people:
            rs = [r for r in reqs if r["subject_id"] == self.key_of(p)]
            self.check(f"{p.subject_id}: exactly one request", len(rs) == 1, f"{len(rs)} requests")
            if not rs:
                continue
            r = rs[0]
            if p.role == "held":
                self.check(
                    f"{p.subject_id}: held, nothing erased",
                    r["status"] == "held" and all(t["status"] == "pending" for t in r["tasks"]),
                    r["status"],
                )
                continue
            self.check(f"request {r['external_id']}: completed", r["status"] == "completed", r["status"])
            self.check(
                f"request {r['external_id']}: every target succeeded with evidence",
                bool(r["tasks"]) and all(t["status"] == "succeeded" and t["evidence"] for t in r["tasks"]),
                ", ".join(f"{t['target']}={t['status']}" for t in r["tasks"]),
            )
            self.check(
                f"request {r['external_id']}: SLA met",
                r["completed_at"] is not None and r["completed_at"] <= r["due_at"],
            )

    def _identity(self, reqs: list[dict[str, Any]]) -> None:
        """The resolved identity of the person who asked by e-mail only: every identifier (masked),
        which resolver found it and from what (docs/identity.md)."""
        from erasure.identifiers import mask

        p = next((x for x in self.people if x.by_email), None)
        if p is None or self.codec is None:
            return
        r = next((x for x in reqs if x["subject_id"] == self.key_of(p)), None)
        self.out.heading("Identity: a request that gave only an e-mail address")
        if r is None:
            self.check("e-mail-only request: registered", False)
            return
        with transaction(self.dsn) as cur:
            cur.execute(
                """SELECT i.id, i.id_type, i.sealed, i.source, i.depth, p.id_type AS from_type, p.sealed AS from_sealed
                     FROM erasure.identity i LEFT JOIN erasure.identity p ON p.id = i.parent_id
                    WHERE i.request_id = %s ORDER BY i.id""",
                (r["id"],),
            )
            rows = [dict(x) for x in cur.fetchall()]
        found: dict[str, list[str]] = {}
        table = []
        for x in rows:
            value = self.codec.unseal(x["id_type"], x["sealed"])
            found.setdefault(x["id_type"], []).append(value)
            source = "the request" if x["source"] == "request" else f"resolver {x['source']}"
            origin = (
                f"{x['from_type']} {mask(self.codec.unseal(x['from_type'], x['from_sealed']))}"
                if x["from_type"]
                else "-"
            )
            table.append([x["id_type"], mask(value), source, origin, x["depth"]])
        self.out.line(
            f"  request {r['id']} ({r['external_id']}): subject_id is the keyed digest {r['subject_id'][:24]}..."
        )
        self.out.table(["identifier type", "identifier (masked)", "found by", "from", "hops"], table)
        self.check(
            "e-mail-only request: the customer id found by the CRM lookup",
            found.get("customer_id") == [p.subject_id],
            str({k: len(v) for k, v in found.items()}),
        )
        self.check(
            "e-mail-only request: both device ids found through the customer id (2 hops)",
            sorted(found.get("device_id", [])) == sorted(p.devices),
        )
        keyed = {
            t["target"]: self.catalog.target(t["target"]).identity_key
            for t in r["tasks"]
            if t["target"] in ("crm_contacts", "device_registry", "newsletter_subscribers")
        }
        self.check(
            "e-mail-only request: erased where keyed by customer id, by device (registry) and by e-mail",
            r["status"] == "completed" and len(keyed) == 3,
            ", ".join(f"{k} by {v}" for k, v in keyed.items()),
        )

    def _check_outage(self, reqs: list[dict[str, Any]]) -> None:
        name = self.outage.get("target")
        tasks = [t for r in reqs for t in r["tasks"] if t["target"] == name]
        retried = [t for t in tasks if t["attempts"] > 1 or "error" in json.dumps(t["evidence"]).lower()]
        rows = [[t["request_id"], t["status"], t["attempts"], _evidence(t)] for t in tasks]
        self.out.table(["request", "status", "attempts", "evidence"], rows)
        with transaction(self.dsn) as cur:
            cur.execute(
                """SELECT count(*) AS n FROM erasure.event_log WHERE target=%s AND event_type IN ('task_failed','task_retried')
                    AND request_id = ANY(%s)""",
                (name, [r["id"] for r in reqs]),
            )
            n_fail = int(cur.fetchone()["n"])
        self.out.line(f"  failures/retries logged for {name} during the outage: {n_fail}")
        self.check(
            f"outage on {name}: retried and recovered",
            n_fail > 0
            and all(
                t["status"] == "succeeded"
                for t in tasks
                if t["request_id"] in {r["id"] for r in reqs if r["status"] != "held"}
            ),
            f"{n_fail} failure events; retried tasks {len(retried)}",
        )

    def _event_dataset(self, reqs: list[dict[str, Any]]) -> None:
        import duckdb

        from erasure import event_dataset as ed

        ddir = str(self.settings.dataset_path)
        path = ed.events_path(ddir)
        try:
            from deltalake import DeltaTable

            version = DeltaTable(path).version()
            events = ed.read_table(path)
        except Exception as exc:  # noqa: BLE001 - reported as a failed expectation
            self.check("event dataset readable with deltalake", False, f"{path}: {type(exc).__name__}: {exc}")
            return
        ids = [r["id"] for r in reqs]
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.register("erasure_events", events)
        q = (
            "SELECT request_id, external_id, count(*) AS events,\n"
            "       count(*) FILTER (WHERE event_type = 'task_succeeded') AS targets_erased,\n"
            "       count(*) FILTER (WHERE event_type IN ('task_failed', 'task_retried')) AS failures_retries,\n"
            "       bool_or(event_type = 'request_completed') AS completed, max(occurred_at) AS last_event\n"
            "  FROM erasure_events WHERE request_id IN (SELECT unnest($ids))\n"
            " GROUP BY request_id, external_id ORDER BY request_id"
        )
        self.out.line(f"  {path}  (Delta version {version}, read with deltalake, queried with DuckDB)")
        self.out.line("")
        for line in q.splitlines():
            self.out.line(f"    {line}")
        self.out.line("")
        res = con.execute(q, {"ids": ids}).fetchall()
        self.out.table(
            [
                "request",
                "external id",
                "events",
                "targets erased",
                "failures/retries",
                "completed",
                "last event",
            ],
            [list(r) for r in res],
        )
        total = con.execute("SELECT count(*), count(DISTINCT request_id) FROM erasure_events").fetchone()
        self.out.line(f"  whole dataset: {total[0]:,} events of {total[1]:,} requests")
        got = {r[0] for r in res}
        self.check(
            "event dataset holds the events of every demo request",
            set(ids) <= got,
            f"missing {sorted(set(ids) - got)}",
        )
        done = {r["id"] for r in reqs if r["status"] == "completed"}
        comp = {
            r[0]
            for r in con.execute(
                "SELECT DISTINCT request_id FROM erasure_events WHERE event_type = 'request_completed'"
            ).fetchall()
        }
        self.check(
            "event dataset has request_completed for every completed request",
            done <= comp,
            f"missing {sorted(done - comp)}",
        )
        con.close()
        try:
            sla = ed.sla_compliance_by_team(ddir)
        except Exception as exc:  # noqa: BLE001
            self.out.line(f"  (SLA compliance query failed: {exc})")
            return
        self.out.line("")
        self.out.line("  SLA compliance by owner team (erasure.event_dataset.sla_compliance_by_team):")
        if sla:
            cols = list(sla[0])
            self.out.table(cols, [[r[c] for c in cols] for r in sla])

    def _personal_data(self, reqs: list[dict[str, Any]]) -> None:
        """One run of the retention DAG: the suppression ledger gets the completed requests (keyed
        hashes only); the intake runs' confs in Airflow's metadata DB no longer hold identifiers."""
        from erasure.airflow_metadata import PERSONAL_KEYS

        o = self.out
        self.api.unpause(RETENTION_DAG)
        state = self._trigger_and_wait([RETENTION_DAG]).get(RETENTION_DAG)
        self.check("erasure_retention run succeeded", state == "success", str(state))
        done = {r["id"]: r for r in reqs if r["status"] == "completed"}
        with transaction(self.dsn) as cur:
            cur.execute(
                """SELECT request_id, id_type, digest, targets FROM erasure.tombstone
                    WHERE request_id = ANY(%s) ORDER BY request_id, id_type""",
                (list(done),),
            )
            tombs = cur.fetchall()
        by_req: dict[int, list[dict[str, Any]]] = {}
        for t in tombs:
            by_req.setdefault(t["request_id"], []).append(t)
        o.line(
            f"  suppression ledger (erasure.tombstone): {len(tombs)} keyed hash(es) for {len(by_req)} "
            "completed request(s); after a backup restore `python -m erasure.cli reapply --restored-at <time>` "
            "erases them again"
        )
        if tombs:
            t = tombs[0]
            o.line(
                f"  e.g. request {t['request_id']}: {t['id_type']} {t['digest'][:30]}… erased from "
                f"{len(t['targets'])} target(s)"
            )
        self.check(
            "every completed demo request is in the suppression ledger",
            set(by_req) == set(done),
            f"missing: {sorted(set(done) - set(by_req))[:10]}",
        )
        # the ids in clear (an e-mail-only request's subject_id is already a keyed hash)
        raw = {r["subject_id"] for r in done.values() if not r["subject_id"].startswith("hmac-sha256:")}
        self.check(
            "the ledger holds keyed hashes only (no identifier in clear)",
            all(t["digest"].startswith("hmac-sha256:") and t["digest"] not in raw for t in tombs),
        )
        runs = [
            r
            for r in self.api.dag_runs(INTAKE_DAG, limit=100)
            if r["dag_run_id"].startswith(f"demo_{self.cfg.tag}")
        ]
        leaky = [r["dag_run_id"] for r in runs if PERSONAL_KEYS & set(r.get("conf") or {})]
        o.line(
            f"  {len(runs)} intake run(s) of this demo in Airflow's metadata DB; their conf after registration: "
            + (json.dumps(runs[0]["conf"]) if runs else "-")
        )
        self.check(
            "no intake run's conf in Airflow's metadata DB holds an identifier",
            runs != [] and not leaky,
            str(leaky[:5]),
        )
        first = min((r["completed_at"] for r in done.values() if r["completed_at"]), default=None)
        if first is not None:
            o.line(
                f"  raw identifiers of these requests are replaced by keyed hashes from "
                f"{(first + timedelta(days=self.settings.retention_raw_identifier_days)).date()} "
                "(ERASURE_RETENTION_RAW_IDENTIFIER_DAYS)"
            )

    def _proof(self, reqs: list[dict[str, Any]]) -> None:
        """``audit verify`` over the whole chain, then one receipt printed and checked with the public
        key (and one changed byte of it refused), as an auditor would."""
        from erasure.evidence import audit, receipts
        from erasure.evidence.keys import load_jwks

        o = self.out
        chain = audit.verify_chain(self.dsn)
        o.line("  $ python -m erasure.cli audit verify")
        o.line(f"  {chain.summary()}")
        self.check("audit verify: the hash chain of the event log holds", chain.ok, chain.summary())
        done = [r for r in reqs if r["status"] == "completed"]
        stored = {r["id"]: receipts.find_receipt(self.dsn, str(r["id"])) for r in done}
        missing = sorted(i for i, row in stored.items() if row is None)
        self.check(
            "every completed demo request has a signed receipt (all targets verified)",
            bool(done) and not missing,
            f"no receipt for requests {missing}",
        )
        shown = next((row for row in stored.values() if row is not None), None)
        if shown is None:
            return
        data = str(shown["document"]).encode()
        o.line("")
        o.line(f"  $ python -m erasure.cli receipt show {shown['request_id']}")
        for line in json.dumps(json.loads(data), indent=2, ensure_ascii=False, sort_keys=True).splitlines():
            o.line(f"    {line}")
        jwks = load_jwks(self.settings.receipt_jwks_path)
        res = receipts.verify_receipt(data, jwks)
        anchor = receipts.check_audit_anchor(self.dsn, res.receipt) if res.receipt else "not verified"
        o.line(f"  $ python -m erasure.cli receipt verify {shown['request_id']}")
        o.line(f"  {res}")
        o.line(f"  audit anchor: {anchor or 'OK (the receipt names the request’s last event in the chain)'}")
        self.check("receipt verifies with the published public key (JWKS)", res.ok, res.reason)
        self.check("receipt's audit anchor is the tracking store's event", anchor is None, str(anchor))
        i = data.index(b'"outcome":"succeeded"') + len(b'"outcome":"su')
        tampered = data[:i] + b"x" + data[i + 1 :]
        bad = receipts.verify_receipt(tampered, jwks)
        o.line(f"  the same receipt with one byte changed: {bad}")
        self.check("a receipt with one byte changed does not verify", not bad.ok, bad.reason)
        subject = next(r for r in done if r["id"] == shown["request_id"])["subject_id"]
        self.check(
            "the receipt holds no identifier in clear (keyed hashes only)",
            subject not in data.decode(),
        )

    # ---------------------------------------------------------------- main
    def run(self) -> int:
        self.preflight()
        self.prepare_warehouse()
        self.seed()
        self.out.step("counting the demo people's data everywhere (before)")
        self.partner_before = self.count_partners()
        self.wh_before = self.count_warehouse()
        self.hr_before = self.count_hr()
        self.canary_start()
        self.submit()
        self.canary_wait()
        self.drive()
        canaries = self.canary_verify()
        self.out.step("counting the demo people's data everywhere (after)")
        self.partner_after = self.count_partners()
        self.wh_after = self.count_warehouse()
        self.hr_after = self.count_hr()
        self.report(canaries)
        self.out.line()
        self.out.line(
            f"Airflow UI: {self.api.base_url}  (user admin, password: scripts/stack.sh airflow-password)"
        )
        self.out.line(
            "Runs of this demo: "
            + ", ".join(sorted({d for d, *_ in self.runs}))
            + f" (run ids start with demo_{self.cfg.tag})"
        )
        self.out.line(
            f"Erasure view (requests, SLA, targets, holds, review): {self.api.base_url}/plugin/erasure"
            "  (docs/ui.md)"
        )
        return 0 if all(e.ok for e in self.expect) else 1

    def close(self) -> None:
        if self.outage and "recovered_after_s" not in self.outage:  # interrupted: never leave a partner down
            t = self.catalog.target(self.outage["target"])
            base = partner_url(t)
            if base:
                try:
                    self.http.delete(base + "/admin/faults")
                except httpx.HTTPError:
                    pass
        self.http.close()
        if self._spark is not None:
            self._spark.stop()


def _short_error(text: str) -> str:
    try:
        detail = json.loads(text).get("detail")
    except (ValueError, AttributeError):
        detail = text
    msg = detail if isinstance(detail, str) else json.dumps(detail)
    return " ".join(msg.split("Failed validating")[0].split())[:240]


def _evidence(t: dict[str, Any]) -> str:
    """The task's evidence in one line, as its kind's adapter summarises it (the full JSON is in
    erasure.task.evidence)."""
    ev = dict(t.get("evidence") or {})
    try:
        s = adapter(str(t.get("kind"))).evidence_summary(ev)
    except KeyError:  # a kind this version does not know
        s = generic_summary(ev)
    if t.get("last_error") and t.get("status") != "succeeded":
        s += f" | last error: {t['last_error'][:90]}"
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m erasure_demo.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--customers", type=int, default=6, help="customers to erase (default 6; plus one held, one employee)"
    )
    ap.add_argument(
        "--warehouse-rows",
        type=int,
        default=200_000,
        help="rows of the generated warehouse tables (first run)",
    )
    ap.add_argument(
        "--timeout-min", type=float, default=12.0, help="give up waiting for the pipeline after this"
    )
    ap.add_argument(
        "--outage-target", default="billing_profiles", help="sync partner to take down for a while"
    )
    ap.add_argument("--outage-seconds", type=int, default=45)
    ap.add_argument("--no-canary", action="store_true", help="skip the canary round")
    args = ap.parse_args(argv)
    if args.customers < 2:
        ap.error("--customers: at least 2 (the duplicates need two)")
    cfg = DemoConfig(
        customers=args.customers,
        warehouse_rows=args.warehouse_rows,
        timeout_min=args.timeout_min,
        outage_target=args.outage_target,
        outage_seconds=args.outage_seconds,
        canary=not args.no_canary,
    )
    demo = Demo(cfg)
    try:
        return demo.run()
    finally:
        demo.close()


if __name__ == "__main__":
    sys.exit(main())
