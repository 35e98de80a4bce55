"""Airflow glue (imports Airflow). The core package never imports this module."""
