-- Runs once, when the PostgreSQL volume is first created: the Prefect server's own database
-- beside the aggregation service's (POSTGRES_DB).
CREATE DATABASE prefect OWNER fedsilo;
