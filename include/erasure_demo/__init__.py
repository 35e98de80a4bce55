"""The demo of the erasure pipeline, not the product: the ``make demo`` driver (:mod:`erasure_demo.demo`),
the partner simulators (:mod:`erasure_demo.partners`), the warehouse data generator
(:mod:`erasure_demo.warehouse_gen`) and the REST API v2 client (:mod:`erasure_demo.airflow_client`).

Never packaged or installed into the production image: the demo, the local stack's partner services and
the tests import it from ``include/`` (``PYTHONPATH``, pytest's ``pythonpath``). It may import anything of
:mod:`erasure`; nothing in :mod:`erasure` imports it (``tests/unit/test_package_boundaries.py``).
"""
