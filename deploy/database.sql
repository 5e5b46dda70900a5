-- Queries `make up` runs on its database (deploy/database.py). Loaded by name
-- (schema.db.load_queries). Not a migration: pg_stat_statements needs the
-- server started with it in shared_preload_libraries (and a superuser to
-- create it), which a migration cannot assume, so migrations never need it.

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = :name

-- name: create_database
-- The stack's database in the private cluster (name: EMBEDDED_DB in database.py).
CREATE DATABASE discovery

-- name: preload_libraries
SELECT current_setting('shared_preload_libraries') AS libraries

-- name: pg_stat_statements_available
SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements'

-- name: create_pg_stat_statements
-- The guide's "Check slow queries" reads the pg_stat_statements view.
CREATE EXTENSION IF NOT EXISTS pg_stat_statements
