"""Airflow glue (imports Airflow); the core package never imports it. DAG files stay thin and use:

* ``defaults`` - ``dag_kwargs``: doc, tags, owner, retries, no catch-up for every DAG;
* ``params`` - the intake DAG's ``Param``s; a number from a Param or an Airflow Variable;
* ``conn`` - the tracking DSN, Kafka config and Spark master from Airflow connections;
* ``spark`` - runs a ``spark_jobs/`` entry point as a subprocess (the warehouse erasure);
* ``kafka_tasks`` - the outbox and ack tasks; ``deadlines`` - Deadline Alerts; ``assets`` - Assets.

Tasks read the run's context with ``airflow.sdk.get_current_context()`` and settings with
``erasure.settings.get_settings()`` when they run.
"""
