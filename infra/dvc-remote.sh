#!/bin/sh
# Point this checkout's DVC at the team's S3 / MinIO remote and make it the default, in .dvc/config.local only
# (git-ignored: the committed .dvc/config keeps the single-user remote). The endpoint and the credentials are not
# written anywhere: DVC reads them from AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY at each call.
#   DVC_REMOTE_URL=s3://dvc/medrov sh infra/dvc-remote.sh      # then: dvc push / dvc pull
set -eu
name="${DVC_REMOTE_NAME:-team}"
url="${DVC_REMOTE_URL:?set DVC_REMOTE_URL, e.g. s3://dvc/medrov (bucket DVC_BUCKET of infra/.env, then a prefix)}"
dvc remote add --local --force --default "$name" "$url"
if [ -z "${AWS_ENDPOINT_URL_S3:-}" ]; then
  echo "note: AWS_ENDPOINT_URL_S3 is not set, so DVC will talk to AWS S3 itself; for MinIO set it (infra/team.env)"
fi
echo "DVC remote '$name' -> $url is the default of this checkout (.dvc/config.local)"
