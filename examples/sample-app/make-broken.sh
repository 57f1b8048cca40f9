#!/usr/bin/env bash
# Makes a deliberately broken release of the sample app: commits the removal of the health
# endpoint (public/health), so /public/health answers 404 once deployed. Each host's health
# gate then fails and the host rolls back to the release it ran before.
# Run inside a git repository holding the sample app, then upload as usual.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
git rm -q -- public/health
git commit -q -m "${1:-deliberately broken release: no health endpoint}"
git rev-parse HEAD
