#!/usr/bin/env bash
# Stop the localhost SLURM cluster started by scripts/slurm_local_up.sh (recipe: ../shared/notes/slurm_local.md).
#
#   scripts/slurm_local_down.sh                   # scancel every job, then stop all daemons
#   scripts/slurm_local_down.sh slurmd slurmctld  # stop only these, jobs kept (used by slurm_local_up.sh)
#
# Daemons are stopped by their PID file, never by name: other clusters or test processes may run here.
# Each gets SIGTERM, then SIGKILL after 20 s (G13: a clean exit takes 1.5-3 s per daemon).
set -uo pipefail

RUN=/run/slurm-local
[ "$(id -u)" -eq 0 ] || { echo "ERROR: must run as root" >&2; exit 1; }

# name -> pid file; listed in stop order (clients of a daemon stop before it).
declare -A PIDFILE=(
  [slurmd]=$RUN/slurmd.pid [slurmctld]=$RUN/slurmctld.pid [slurmdbd]=$RUN/slurmdbd.pid
  [mariadbd]=/run/mysqld/mysqld.pid [munged]=/run/munge/munged.pid
)
ORDER=(slurmd slurmctld slurmdbd mariadbd munged)

stop() {
  local name=$1 pidfile=${PIDFILE[$1]} pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 0
  # A stale pid file (after kill -9) may name an unrelated process by now: check the name first.
  if [ -z "$pid" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name" ]; then
    rm -f "$pidfile"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do   # 100 x 0.2 s = 20 s
    kill -0 "$pid" 2>/dev/null || { echo "slurm_local_down: stopped $name ($pid)"; return 0; }
    sleep 0.2
  done
  echo "slurm_local_down: $name ($pid) ignored SIGTERM for 20 s, sending SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$pidfile"
}

if [ $# -gt 0 ]; then
  for want in "$@"; do
    [ -n "${PIDFILE[$want]:-}" ] || { echo "ERROR: unknown daemon '$want' (known: ${ORDER[*]})" >&2; exit 1; }
  done
  for name in "${ORDER[@]}"; do
    for want in "$@"; do
      if [ "$want" = "$name" ]; then stop "$name"; fi
    done
  done
  exit 0
fi

# Cancel every job first so that none is recovered as a ghost on the next start (G5).
if command -v squeue >/dev/null 2>&1 && timeout 5 scontrol ping 2>/dev/null | grep -q UP; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel $jobs && echo "slurm_local_down: cancelled $(echo $jobs | wc -w) job(s)"
  fi
fi
for name in "${ORDER[@]}"; do stop "$name"; done
# G14: proctrack/linuxproc follows the process tree, so a double-forked job process can outlive scancel.
if pgrep -x slurmstepd >/dev/null; then
  echo "slurm_local_down: WARNING: slurmstepd still running (pids $(pgrep -x slurmstepd | tr '\n' ' '))" >&2
fi
exit 0
