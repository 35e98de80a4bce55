-- Databases next to `airflow` (the image creates it from POSTGRES_DB): the tracking store, and the
-- catalog's postgres_table target hr_directory (ERASURE_HR_DSN), as `scripts/stack.sh up postgres` does.
CREATE DATABASE erasure_tracking;
CREATE DATABASE partner_hr;
\connect partner_hr
CREATE SCHEMA IF NOT EXISTS hr;
CREATE TABLE IF NOT EXISTS hr.directory (
    employee_id text PRIMARY KEY, name text NOT NULL, phone text, home_address text,
    is_test boolean NOT NULL DEFAULT false);
