#!/usr/bin/env bash
# Start a real single-node SLURM cluster on localhost (munge, MariaDB, slurmdbd, slurmctld, slurmd)
# for CI and tests, on Debian 12 as root without systemd. Recipe and gotcha numbers (G1..G14):
# ../shared/notes/slurm_local.md.
#
#   scripts/slurm_local_up.sh          # install if missing, start, wait for the node, run `srun hostname`
#   scripts/slurm_local_down.sh        # cancel all jobs and stop every daemon
#
# Idempotent: on a running cluster with an unchanged config it only waits for the node and runs the smoke job.
# If the generated config changed (e.g. another SLURM_LOCAL_CPUS) it restarts slurmctld + slurmd; jobs stay queued,
# but slurmctld requeues running ones when the node's core layout changed ("change in socket/core configuration").
#
# Knobs (environment):
#   SLURM_LOCAL_CPUS=N        job slots on the node (default: nproc). N > nproc oversubscribes (G8),
#                             e.g. 4 slots on 2 cores so a 2x2 array runs at once. Re-running without it
#                             on a cluster started with another N reconfigures the cluster to nproc slots.
#   SLURM_LOCAL_TIMEOUT=S     seconds to wait for each daemon / the node / the smoke job (default 60)
#   SLURM_LOCAL_FRESH=0|1     when slurmctld is not running, wipe its job state and the accounting DB (default 1; G5, G6)
#   SLURM_LOCAL_ACCOUNTING=0|1  slurmdbd + MariaDB (default 1; submitit needs it, G1)
#   SLURM_LOCAL_FAKE_GPUS=N   advertise N fake GPUs as gres/gpu (default 0; G9)
set -euo pipefail

CPUS=${SLURM_LOCAL_CPUS:-$(nproc)}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
FRESH=${SLURM_LOCAL_FRESH:-1}
ACCOUNTING=${SLURM_LOCAL_ACCOUNTING:-1}
FAKE_GPUS=${SLURM_LOCAL_FAKE_GPUS:-0}

ETC=/etc/slurm
LOG=/var/log/slurm-local
SPOOL=/var/spool/slurm-local
RUN=/run/slurm-local
HERE=$(cd "$(dirname "$0")" && pwd)
NODE=$(hostname -s)   # G10: SlurmctldHost must name this host; slurmd gets -N "$NODE"

die() {
  echo "ERROR: $*" >&2
  for f in "$LOG"/*.log; do
    [ "$f" = "$LOG/apt.log" ] && continue   # an apt failure prints its own tail
    [ -s "$f" ] && { echo "--- tail $f" >&2; tail -n 12 "$f" >&2; }
  done
  # (sinfo retries ~9 s when slurmctld is down; scontrol ping answers at once)
  if command -v scontrol >/dev/null 2>&1 && timeout 5 scontrol ping 2>/dev/null | grep -q UP; then
    echo "--- sinfo" >&2; timeout 5 sinfo -N -o "%N %T %E" >&2 || true
  fi
  exit 1
}
log() { echo "slurm_local_up: $*"; }
usage_error() { echo "ERROR: $*" >&2; exit 1; }   # no log tails: nothing was started

[ "$(id -u)" -eq 0 ] || usage_error "must run as root"
for knob in CPUS TIMEOUT FAKE_GPUS; do
  [[ ${!knob} =~ ^[0-9]+$ ]] || usage_error "SLURM_LOCAL_$knob must be a non-negative integer, got '${!knob}'"
done
[ "$CPUS" -ge 1 ] || usage_error "SLURM_LOCAL_CPUS must be >= 1"
[ "$TIMEOUT" -ge 1 ] || usage_error "SLURM_LOCAL_TIMEOUT must be >= 1"

# wait_for DESCRIPTION COMMAND...: poll until COMMAND succeeds, or die after $TIMEOUT s.
wait_for() {
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what (waited ${TIMEOUT}s)"
    sleep 0.2
  done
}

# alive PIDFILE NAME: the process in PIDFILE exists and is NAME (a stale pid file after kill -9 must not count).
alive() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

mkdir -p "$LOG" "$SPOOL/ctld" "$SPOOL/slurmd" "$RUN"
# Serialize concurrent runs (CI and the pytest fixture may both call this script). Every daemon is started
# with `9>&-`: one that inherited fd 9 would hold the lock for its whole life and block every later run.
exec 9>"$RUN/up.lock"
flock -w "$((TIMEOUT * 3))" 9 || die "another slurm_local_up.sh holds $RUN/up.lock"

# --- packages -------------------------------------------------------------------------------------------
pkgs=(munge slurmctld slurmd slurm-client)
[ "$ACCOUNTING" = 1 ] && pkgs+=(slurmdbd mariadb-server)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  # --no-install-recommends: 32 packages instead of 43 (slurm-wlm). Nothing starts during install (policy-rc.d).
  # An update that fails for one source is not fatal; the install says whether we got the packages.
  for try in 1 2 3; do
    if { apt-get update -qq || true; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=60 "${missing[@]}"; } >"$LOG/apt.log" 2>&1; then
      break
    fi
    [ "$try" = 3 ] && { tail -n 20 "$LOG/apt.log" >&2; die "apt-get install ${missing[*]} failed 3 times"; }
    sleep $((try * 5))
  done
fi

# --- config ---------------------------------------------------------------------------------------------
mem_mb=$(awk '/^MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)   # G8: above MemTotal drains the node
node_hw="CPUs=$CPUS"
overrides=""
if [ "$CPUS" -ne "$(nproc)" ]; then
  # G8: slot count != real cores marks the node invalid unless slurmd takes the config as given.
  overrides="SlurmdParameters=config_overrides"
  node_hw="CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1"
fi
gres=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  # G9: gres/gpu drops file-less GPUs and rejects regular files, so use char devices aliasing /dev/null.
  for ((i = 0; i < FAKE_GPUS; i++)); do
    [ -c "$SPOOL/fakegpu$i" ] || mknod -m 0666 "$SPOOL/fakegpu$i" c 1 3
  done
  gres="GresTypes=gpu"
  node_hw="$node_hw Gres=gpu:$FAKE_GPUS"
fi
if [ "$ACCOUNTING" = 1 ]; then
  acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
else
  acct="AccountingStorageType=accounting_storage/none"
fi

slurm_conf="# single-node localhost cluster for CI/tests; generated by scripts/slurm_local_up.sh
ClusterName=localci
SlurmctldHost=$NODE(127.0.0.1)
AuthType=auth/munge
# G3: a requeued job waits cred_expire (default 120 s) before it can run again; 5 is Slurm's minimum.
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# no systemd / cgroups needed (G14: jobs are tracked by process tree):
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$acct
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
# G3 + G4: schedule every 1-2 s (not 30/60 s) and start batch jobs without the 3 s batching delay.
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=2
SelectType=select/cons_tres
# G7: CR_Core_Memory would give a job without --mem the whole node's memory and serialize jobs.
SelectTypeParameters=CR_Core
ReturnToService=2
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmctldTimeout=120
SlurmdTimeout=300
Waittime=0
$overrides
$gres
NodeName=$NODE NodeAddr=127.0.0.1 $node_hw RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"
gres_conf=""
[ "$FAKE_GPUS" -gt 0 ] && gres_conf="NodeName=$NODE Name=gpu File=$SPOOL/fakegpu[0-$((FAKE_GPUS - 1))]
"
dbd_conf="AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmlocal
StorageLoc=slurm_acct_db
"

# write_if_changed FILE CONTENT MODE: returns 0 when the file was (re)written.
write_if_changed() {
  if [ -f "$1" ] && [ "$(cat "$1")" = "${2%$'\n'}" ]; then return 1; fi
  install -D -m "$3" /dev/null "$1"
  printf '%s' "$2" >"$1"
}
mkdir -p "$ETC"
conf_changed=0
write_if_changed "$ETC/slurm.conf" "$slurm_conf" 0644 && conf_changed=1
if [ -n "$gres_conf" ]; then
  write_if_changed "$ETC/gres.conf" "$gres_conf" 0644 && conf_changed=1
elif [ -f "$ETC/gres.conf" ]; then
  rm -f "$ETC/gres.conf"; conf_changed=1
fi
dbd_changed=0
# slurmdbd refuses a slurmdbd.conf readable by others (it holds the DB password).
write_if_changed "$ETC/slurmdbd.conf" "$dbd_conf" 0600 && dbd_changed=1

# --- fast path: everything running, config unchanged -> just the smoke test below --------------------------
ctld_up=0; alive "$RUN/slurmctld.pid" slurmctld && ctld_up=1
if [ "$ctld_up" = 1 ] && [ "$conf_changed" = 0 ] && [ "$dbd_changed" = 0 ] \
    && alive "$RUN/slurmd.pid" slurmd && alive /run/munge/munged.pid munged \
    && { [ "$ACCOUNTING" = 0 ] || alive "$RUN/slurmdbd.pid" slurmdbd; }; then
  log "cluster already running"
else
  fresh=0
  if [ "$ctld_up" = 0 ] && [ "$FRESH" = 1 ]; then
    # G5: a slurmctld that was SIGKILLed (CI teardown) would recover finished jobs as RUNNING ghosts.
    # G6: job ids restart at 1 then, so the old accounting rows must go too (sacct -j N would answer for them).
    fresh=1
    "$HERE/slurm_local_down.sh" slurmd slurmdbd   # stale daemons from an earlier run hold old state
    rm -rf "${SPOOL:?}/ctld/"* "${SPOOL:?}/slurmd/"*
  elif [ "$conf_changed" = 1 ] || [ "$dbd_changed" = 1 ]; then
    log "config changed: restarting slurmctld and slurmd (running jobs may be requeued)"
    "$HERE/slurm_local_down.sh" slurmd slurmctld
    [ "$dbd_changed" = 1 ] && "$HERE/slurm_local_down.sh" slurmdbd
  fi

  # munge (G2: no systemd RuntimeDirectory, so create /run/munge; munged must run as the munge user).
  if ! alive /run/munge/munged.pid munged; then
    [ -f /etc/munge/munge.key ] || { mungekey --create; chown munge:munge /etc/munge/munge.key; }
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged --force 2>>"$LOG/munged.log" 9>&- || die "munged did not start"
  fi
  wait_for "munge does not answer (munge -n | unmunge)" bash -c 'munge -n | unmunge'

  if [ "$ACCOUNTING" = 1 ]; then
    # MariaDB (G2: no init system; /run/mysqld is ours to create). One that already answers is reused.
    if ! mariadb-admin ping >/dev/null 2>&1; then
      [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >>"$LOG/mariadbd.log" 2>&1
      install -d -o mysql -g mysql -m 0755 /run/mysqld
      setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 >>"$LOG/mariadbd.log" 2>&1 </dev/null 9>&- &
      wait_for "MariaDB does not answer (mariadb-admin ping)" mariadb-admin ping
    fi
    mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
      CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmlocal';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || die "could not set up the accounting database"
    if [ "$fresh" = 1 ] && [ -n "$(mariadb -N -e "SHOW TABLES FROM slurm_acct_db LIKE 'localci_job_table'")" ]; then
      # G6: forget the old jobs. Emptying the job tables, not dropping the database, saves ~3 s: slurmdbd and
      # slurmctld's first registration spend that long creating the schema on 2 cores.
      mariadb slurm_acct_db -e "DELETE FROM localci_job_table; DELETE FROM localci_step_table;
        DELETE FROM localci_job_env_table; DELETE FROM localci_job_script_table; DELETE FROM localci_suspend_table;" \
        || die "could not empty the accounting job tables"
    fi

    if ! alive "$RUN/slurmdbd.pid" slurmdbd; then
      /usr/sbin/slurmdbd 9>&- || die "slurmdbd did not start"   # daemonizes
    fi
    wait_for "slurmdbd does not answer (sacctmgr list cluster)" sacctmgr -n list cluster
  fi

  if ! alive "$RUN/slurmctld.pid" slurmctld; then
    /usr/sbin/slurmctld 9>&- || die "slurmctld did not start"   # daemonizes; registers the cluster with slurmdbd
  fi
  wait_for "slurmctld is not UP (scontrol ping)" bash -c 'scontrol ping | grep -q UP'
  if ! alive "$RUN/slurmd.pid" slurmd; then
    /usr/sbin/slurmd -N "$NODE" 9>&- || die "slurmd did not start"   # G10: NodeName may differ from hostname
  fi
fi

# --- node ready + smoke --------------------------------------------------------------------------------
# idle, or mixed/allocated when jobs already run on a cluster that was up; never down/drain/invalid.
wait_for "node $NODE is not idle" \
  bash -c 'sinfo -h -o %T | grep -qxE "idle|mixed|allocated"'
if [ "$(sinfo -h -o %T)" = allocated ]; then
  # Every slot is taken by other users' jobs (a shared dev cluster): a smoke job would only queue behind them.
  log "node $NODE is fully allocated: skipping the smoke job"
else
  out=$(timeout "$TIMEOUT" srun -p debug -N1 -n1 -t 1 hostname 2>&1) || die "smoke job 'srun hostname' failed: $out"
  [ "$out" = "$NODE" ] || die "smoke job printed '$out', expected '$NODE'"
fi
log "up: node $NODE, $CPUS slots, accounting=$ACCOUNTING, fake GPUs=$FAKE_GPUS ($SECONDS s)"
