-- Second database for the tracking store (the image creates `airflow` from POSTGRES_DB).
CREATE DATABASE erasure_tracking;
