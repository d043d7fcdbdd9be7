#!/bin/sh
# A cron job that must never overlap, on any of the hosts that run it.
#
#     */5 * * * *  CRON_JOB_DB=postgresql://cron@db1/ops /path/to/cron_job_hosts.sh
#
# Put the same line in the crontab of every host: each run takes the lock
# "cron-job" on the PostgreSQL server, and a run that finds it held (on this
# host or another) skips its turn at once, naming the holder. The lock is
# held by touchfile's session for the whole run; if the host dies, the
# session ends and the next run anywhere can take it. Try it: run it in two
# terminals, or on two hosts, with the same CRON_JOB_DB.
#
# CRON_JOB_DB is the database (a postgresql:// URL), CRON_JOB_NAME the
# lock's name, CRON_JOB_SECONDS how long the work takes.
set -eu

LOCK="${CRON_JOB_DB:?set CRON_JOB_DB to a postgresql:// URL}#${CRON_JOB_NAME:-cron-job}"

# -n: never wait for the lock; -E 75: a status of our own for "busy".
status=0
touchfile -n -E 75 "$LOCK" -- sh -c '
    echo "cron_job_hosts: run $$ on $(hostname) started"
    sleep "${CRON_JOB_SECONDS:-2}"
    echo "cron_job_hosts: run $$ on $(hostname) finished"
' || status=$?
if [ "$status" -eq 75 ]; then
    echo "cron_job_hosts: another run holds the lock; skipping this one" >&2
    touchfile --holders "$LOCK" >&2
    exit 0
fi
exit "$status"
