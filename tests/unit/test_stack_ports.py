"""The local stack's default ports lie outside Linux's ephemeral range: a client socket's local end can
take a port in that range while its server is down (seen: Kafka and the Airflow API server could not
bind after a restart), so fixed server ports must not be there."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except OSError:  # not Linux: its documented default
        return 32768, 60999


def test_default_ports_are_below_the_ephemeral_range():
    text = (ROOT / "scripts" / "env.sh").read_text(encoding="utf-8")
    defaults = {m[0]: int(m[1]) for m in re.findall(r"\$\{(ERASURE_[A-Z_]*PORT[A-Z_]*):-(\d+)\}", text)}
    assert {
        "ERASURE_PG_PORT",
        "ERASURE_KAFKA_PORT",
        "ERASURE_AIRFLOW_PORT",
        "ERASURE_PARTNER_PORT_BASE",
    } <= set(defaults)
    lo, hi = _ephemeral_range()
    partner_top = defaults["ERASURE_PARTNER_PORT_BASE"] + 99  # the partners use base+1 .. base+99
    for name, port in [*defaults.items(), ("partner ports (base+99)", partner_top)]:
        assert not lo <= port <= hi, f"{name}={port} lies in the ephemeral range {lo}-{hi}"


def test_the_catalog_defaults_match_the_stack():
    """The catalog's fallback partner URLs point at the stack's partner ports."""
    env = subprocess.run(
        ["bash", "-c", f"env -i PATH=/usr/bin:/bin bash -c '. {ROOT}/scripts/env.sh && env'"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    base = int(re.search(r"^ERASURE_PARTNER_PORT_BASE=(\d+)$", env, re.M).group(1))
    catalog = (ROOT / "include" / "catalog" / "targets.yaml").read_text(encoding="utf-8")
    ports = [
        int(p) for p in re.findall(r"\$\{ERASURE_PARTNER_[A-Z_]+_URL:-http://127\.0\.0\.1:(\d+)\}", catalog)
    ]
    assert ports and all(base < p < base + 100 for p in ports)
