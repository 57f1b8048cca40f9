#!/usr/bin/env bash
# Makes a deliberately broken release of the sample app: commits the removal of the health
# endpoint (public/health). Once deployed, the container's own healthcheck fails, Docker marks
# it unhealthy, `docker compose up --wait` fails naming it, and each host rolls back to the
# release it ran before.
# Run inside a git repository holding the sample app, then upload as usual.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
git rm -q -- public/health
git commit -q -m "${1:-deliberately broken release: no health endpoint}"
git rev-parse HEAD
