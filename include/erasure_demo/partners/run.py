"""``python -m erasure_demo.partners.run --catalog DIR``: start the demo partners of a catalog.

* one HTTP partner (:mod:`erasure_demo.partners.http_service`) per enabled ``sync_api`` target, on the host
  and port of its ``base_url``, storing under ``$ERASURE_LOCAL/partners/<target>.db``;
* for each ``kafka`` target, ``erasure_demo.partners.kafka_partner.run(target, catalog)`` when that module
  exists (imported lazily, each in its own thread; the HTTP partners keep running without it);
* the demo's own Postgres tables in ``$ERASURE_HR_DSN`` (:mod:`erasure_demo.partners.pg_tables`);
* a small index on ``$ERASURE_PARTNER_PORT_BASE`` (``GET /`` lists the partners, ``GET /healthz``),
  which ``scripts/stack.sh`` waits for.

Runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from erasure.catalog import Catalog, CatalogError, load_catalog
from erasure.settings import get_settings
from erasure.targets.sync_api import SyncApiSpec
from erasure_demo.partners.http_service import PartnerService, start_site
from erasure_demo.partners.store import PartnerStore

log = logging.getLogger("erasure_demo.partners")
KAFKA_PARTNER_MODULE = "erasure_demo.partners.kafka_partner"


def host_port(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    if parts.port is None:
        return parts.hostname or "127.0.0.1", 443 if parts.scheme == "https" else 80
    return parts.hostname or "127.0.0.1", parts.port


def start_kafka_partners(catalog: Catalog) -> list[str]:
    """Start the Kafka partners if their module exists; returns the targets started."""
    targets = catalog.of_kind("kafka")
    if not targets:
        return []
    if importlib.util.find_spec(KAFKA_PARTNER_MODULE) is None:
        log.warning(
            "%s is not installed: Kafka partners %s not started",
            KAFKA_PARTNER_MODULE,
            [t.name for t in targets],
        )
        return []
    try:
        mod = importlib.import_module(KAFKA_PARTNER_MODULE)
    except Exception:
        log.exception("importing %s failed; Kafka partners not started", KAFKA_PARTNER_MODULE)
        return []
    started = []
    for t in targets:

        def runner(target: Any = t) -> None:
            try:
                mod.run(target, catalog)
            except Exception:
                log.exception("Kafka partner %s stopped with an error", target.name)

        threading.Thread(target=runner, name=f"kafka-partner-{t.name}", daemon=True).start()
        started.append(t.name)
    return started


async def serve(catalog: Catalog, data_dir: Path, index_port: int | None, stop: asyncio.Event) -> None:
    runners: list[web.AppRunner] = []
    listing: dict[str, Any] = {}
    stores: list[PartnerStore] = []
    try:
        for t in catalog.of_kind("sync_api"):
            spec = t.spec_as(SyncApiSpec)
            host, port = host_port(spec.base_url)
            token = os.environ.get(spec.token_env) if spec.token_env else None
            store = PartnerStore(data_dir / f"{t.name}.db")
            stores.append(store)
            service = PartnerService(
                t.name, store, delete_path=spec.delete_path, lookup_path=spec.lookup_path,
                create_path=spec.create_path, token=token, key_type=t.identity_key,
            )  # fmt: skip
            runner, bound = await start_site(service, host, port)
            runners.append(runner)
            listing[t.name] = {"url": f"http://{host}:{bound}", "store": str(store.path)}
            log.info("partner %s serving on http://%s:%s (store %s)", t.name, host, bound, store.path)
        listing_kafka = start_kafka_partners(catalog)
        if index_port and all(not v["url"].endswith(f":{index_port}") for v in listing.values()):

            async def index(_: web.Request) -> web.Response:
                return web.json_response({"http": listing, "kafka": listing_kafka})

            app = web.Application()
            app.router.add_get("/", index)
            app.router.add_get("/healthz", index)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", index_port, reuse_address=True).start()
            runners.append(runner)
        log.info("demo partners up: %s; kafka: %s", sorted(listing), listing_kafka)
        await stop.wait()
    finally:
        for r in runners:
            await r.cleanup()
        for s in stores:
            s.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="erasure_demo.partners.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--catalog", default=None, help="catalog file or directory (default: $ERASURE_CATALOG)")
    p.add_argument("--data-dir", default=None, help="default: $ERASURE_LOCAL/partners")
    p.add_argument("--index-port", type=int, default=int(os.environ.get("ERASURE_PARTNER_PORT_BASE", "28100")),
                   help="port of the partner index (0 = none)")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        catalog = load_catalog(args.catalog)
    except CatalogError as exc:
        print(exc, file=sys.stderr)
        return 1
    data_dir = Path(args.data_dir or get_settings().local_dir / "partners")
    hr_dsn = os.environ.get("ERASURE_HR_DSN")
    if hr_dsn:  # the demo's Postgres tables; the HTTP and Kafka partners do not need them
        import psycopg2

        from erasure_demo.partners.pg_tables import ensure_tables

        try:
            ensure_tables(hr_dsn)
        except psycopg2.OperationalError as exc:
            log.warning(
                "demo Postgres tables not created (database not reachable: %s)", str(exc).strip()[:200]
            )

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(catalog, data_dir, args.index_port or None, stop)

    try:
        asyncio.run(_main())
    except OSError as exc:
        print(f"cannot start demo partners: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
