#!/bin/sh
# A cron job that must never overlap with itself.
#
#     */5 * * * *  /path/to/cron_job.sh
#
# If the previous run is still going when cron starts the next one, the new
# run skips its turn at once instead of piling up behind the old one. The
# script runs itself again under the lock (with --locked); the lock is held
# for that whole run, and is released when it ends, however it ends (even if
# it is killed). Try it: run `sh examples/cron_job.sh` in two terminals.
#
# CRON_JOB_LOCK sets the lock file, CRON_JOB_SECONDS how long the work takes.
set -eu

LOCK=${CRON_JOB_LOCK:-${TMPDIR:-/tmp}/touchfile-cron-job.lock}

if [ "${1:-}" != "--locked" ]; then
    # -n: never wait for the lock; -E 75: a status of our own for "busy".
    status=0
    touchfile -n -E 75 "$LOCK" -- sh "$0" --locked || status=$?
    if [ "$status" -eq 75 ]; then
        echo "cron_job: the previous run still holds $LOCK; skipping this one" >&2
        touchfile --holders "$LOCK" >&2
        exit 0
    fi
    exit "$status"
fi

# The job itself: only one of these runs at a time.
echo "cron_job: run $$ started"
sleep "${CRON_JOB_SECONDS:-2}"
echo "cron_job: run $$ finished"
