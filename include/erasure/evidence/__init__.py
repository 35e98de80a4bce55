"""Proof of erasure: the tamper-evident audit chain (:mod:`.audit`), signing keys (:mod:`.keys`) and
signed receipts (:mod:`.receipts`). See docs/evidence.md. No Airflow here."""
