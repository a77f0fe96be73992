# syntax=docker/dockerfile:1
# The MLflow and Prefect servers of infra/compose.yaml (one image, two commands): the versions the project pins
# in pyproject.toml, plus the Postgres drivers and boto3 (MLflow's S3 artifact store).
#   docker build -f infra/server.Dockerfile -t medrov-server:0.1.0 infra
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# prefect 3.8 breaks with fastapi >= 0.151 and SQLAlchemy 2.1 (../shared/FACTS.md); mlflow as in pyproject.toml
RUN pip install "mlflow==3.17.2" "prefect==3.8.8" "fastapi<0.151" "sqlalchemy<2.1" \
                "psycopg2-binary==2.9.*" "asyncpg==0.32.*" "boto3==1.43.*"

RUN useradd --create-home --uid 1001 --user-group medrov
USER 1001
WORKDIR /home/medrov
