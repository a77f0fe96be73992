#!/bin/sh
# Runs once, on an empty data volume (the postgres image's /docker-entrypoint-initdb.d): one database per service.
set -eu
for db in "$MLFLOW_DB" "$PREFECT_DB"; do
  echo "creating database $db"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\";"
done
