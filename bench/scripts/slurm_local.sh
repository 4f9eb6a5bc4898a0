#!/usr/bin/env bash
# Start, stop or query a real single-node SLURM cluster on this machine, so that tests and users
# can exercise the SLURM path (submitit's AutoExecutor picks slurm as soon as `srun` is on PATH).
#
#   bash bench/scripts/slurm_local.sh start    # install (first time), start munged/slurmctld/slurmd
#   bash bench/scripts/slurm_local.sh status   # print the node state; exit 0 if usable, 1 if not
#   bash bench/scripts/slurm_local.sh stop     # cancel leftover jobs, stop what `start` started
#
# `start` as root with apt-get installs Debian's slurm-wlm and munge when `sbatch` is missing
# (one `apt-get update`; Debian 12 ships Slurm 22.05). It writes /etc/munge/munge.key when
# missing and /etc/slurm/slurm.conf (the path Debian's binaries read; an existing file that this
# script did not write is kept as slurm.conf.bench-backup). Daemons run as root; their state,
# spool, logs and pid files live under BENCH_SLURM_DIR. `stop` only stops daemons whose pid files
# are there, i.e. that this script started. Both are safe to run again.
#
# The cluster: node $(hostname -s) at 127.0.0.1, CPUs=$(nproc), RealMemory=min(16000 MB, 90% of
# RAM), one partition `debug` (default, MaxTime=INFINITE). There is no accounting database, so
# `sacct` fails: submitit then warns "Bypassing sacct error", job.state stays UNKNOWN, and
# job.done()/result() rely on the result pickle alone (a job cancelled or killed outside Python
# never writes one, so result() would wait forever). `start` therefore also writes
# $BENCH_SLURM_DIR/bin/sacct, a stand-in that answers submitit's sacct call from squeue:
#   PATH="/var/lib/bench-slurm/bin:$PATH" python ...   # job.state/done() then see real states
# Finished jobs stay visible to `squeue -t all` / `scontrol show job` for MinJobAge (1 h).
# A requeued job may start again cred_expire (10 s) after the requeue.
#
# Environment: BENCH_SLURM_DIR (default /var/lib/bench-slurm), BENCH_SLURM_PARTITION (debug),
# BENCH_SLURM_WAIT_S (60: how long `start` waits for the node to be idle).
set -euo pipefail

me="slurm_local.sh"
DIR="${BENCH_SLURM_DIR:-/var/lib/bench-slurm}"
PARTITION="${BENCH_SLURM_PARTITION:-debug}"
WAIT_S="${BENCH_SLURM_WAIT_S:-60}"
CONF=/etc/slurm/slurm.conf
MARKER="# Written by bench/scripts/slurm_local.sh"
RUN="$DIR/run"
LOG="$DIR/log"

say() { printf '%s: %s\n' "$me" "$*"; }
die() { printf '%s: %s\n' "$me" "$*" >&2; exit 1; }

node_name() { hostname -s; }

# pid from a pid file, printed only when that process is alive and runs the expected program.
live_pid() {  # $1 pid file, $2 program name (as in /proc/PID/comm)
    local pid
    [[ -r "$1" ]] || return 1
    pid="$(tr -dc '0-9' <"$1")"
    [[ -n "$pid" && -r "/proc/$pid/comm" ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]] || return 1
    echo "$pid"
}

node_state() {  # prints e.g. idle, mixed, allocated, down*, drained, or nothing
    timeout 10 sinfo -h -N -n "$(node_name)" -o '%T' 2>/dev/null | head -n1 || true
}

install_slurm() {
    if command -v sbatch >/dev/null && command -v slurmctld >/dev/null \
        && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    [[ "$(id -u)" -eq 0 ]] || die "slurm is not installed and installing it needs root (apt-get install slurm-wlm munge)"
    command -v apt-get >/dev/null || die "slurm is not installed and apt-get is missing: install slurm-wlm and munge by hand"
    say "installing slurm-wlm and munge with apt-get"
    # Keep the packages' init scripts from starting daemons during the install: this script
    # starts them itself with its own configuration.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        added_policy=1
    fi
    local rc=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -q \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge
    } >"/tmp/slurm_local.apt.log" 2>&1 || rc=$?
    [[ "$added_policy" -eq 1 ]] && rm -f "$policy"
    [[ "$rc" -eq 0 ]] || { tail -n 20 /tmp/slurm_local.apt.log >&2; die "apt-get install slurm-wlm munge failed (log: /tmp/slurm_local.apt.log)"; }
    command -v sbatch >/dev/null || die "apt-get install finished but sbatch is still missing"
}

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        say "wrote /etc/munge/munge.key"
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    if live_pid "$RUN/munged.pid" munged >/dev/null || pgrep -x munged >/dev/null; then
        return 0
    fi
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged || die "munged failed to start (see /var/log/munge/munged.log)"
    local i
    for i in $(seq 50); do
        [[ -s /run/munge/munged.pid ]] && break
        sleep 0.1
    done
    cp /run/munge/munged.pid "$RUN/munged.pid" 2>/dev/null || die "munged did not write /run/munge/munged.pid"
    munge -n | unmunge >/dev/null 2>&1 || die "munged is running but 'munge -n | unmunge' fails"
}

write_conf() {
    local node cpus mem_mb real_mem tmp
    node="$(node_name)"
    cpus="$(nproc)"
    mem_mb="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
    real_mem=$(( mem_mb * 9 / 10 ))
    (( real_mem > 16000 )) && real_mem=16000
    mkdir -p /etc/slurm
    if [[ -e "$CONF" ]] && ! grep -qF "$MARKER" "$CONF"; then
        cp -p "$CONF" "$CONF.bench-backup"
        say "kept the existing $CONF as $CONF.bench-backup"
    fi
    tmp="$(mktemp "$CONF.XXXXXX")"
    cat >"$tmp" <<EOF
$MARKER: single-node test cluster. Edits are overwritten by 'start'.
ClusterName=bench
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
# Reject at submission a job that asks for more than the node has (instead of PENDING forever).
EnforcePartLimits=ALL
ReturnToService=2
JobRequeue=1
# Finished jobs stay in slurmctld (squeue -t all, scontrol show job) this long: with no
# accounting it is the only place their final state can be read.
MinJobAge=3600
KillWait=5
# Scheduling passes every few seconds (defaults 60 s / 30 s) so requeued jobs whose wait is
# over and freed resources are picked up fast.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
# Cancel a job whose dependency can never be met (afterok on a failed job) instead of leaving
# it PENDING (reason DependencyNeverSatisfied) forever.
DependencyParameters=kill_invalid_depend
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MailProg=/bin/true
SlurmdParameters=config_overrides
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 644 "$tmp"
    if [[ -e "$CONF" ]] && cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
        return 1  # unchanged
    fi
    mv -f "$tmp" "$CONF"
}

# A stand-in for the one sacct call submitit makes (sacct -o JobID,State,NodeList --parsable2
# -j ID ...), answered by squeue from slurmctld's memory. It is not on PATH unless asked for:
# with PATH="$DIR/bin:$PATH", submitit's job.state / job.done() see real states.
write_sacct_shim() {
    mkdir -p "$DIR/bin"
    cat >"$DIR/bin/sacct.tmp" <<'SHIM'
#!/usr/bin/env bash
# Written by bench/scripts/slurm_local.sh: answers submitit's
# `sacct -o JobID,State,NodeList --parsable2 -j ID ...` with squeue, because this test cluster
# has no accounting (the real sacct fails). Jobs stay visible MinJobAge seconds after they end.
ids=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -j|--jobs) ids+=("$2"); shift 2 ;;
        --jobs=*) ids+=("${1#--jobs=}"); shift ;;
        *) shift ;;
    esac
done
echo "JobID|State|NodeList"
for id in "${ids[@]}"; do
    squeue -h -t all -j "$id" -o '%i|%T|%N' 2>/dev/null
done
exit 0
SHIM
    chmod 755 "$DIR/bin/sacct.tmp"
    mv -f "$DIR/bin/sacct.tmp" "$DIR/bin/sacct"
}

cmd_start() {
    local t0=$SECONDS
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sbatch >/dev/null || die "slurm is not installed and installing it needs root (apt-get install slurm-wlm munge)"
        die "starting the slurm daemons needs root"
    fi
    install_slurm
    mkdir -p "$DIR/state" "$DIR/spool" "$RUN" "$LOG"
    write_sacct_shim
    start_munge
    local changed=0
    write_conf && changed=1
    if [[ "$changed" -eq 1 ]] && live_pid "$RUN/slurmctld.pid" slurmctld >/dev/null; then
        scontrol reconfigure >/dev/null 2>&1 || die "slurm.conf changed and 'scontrol reconfigure' failed"
        say "slurm.conf changed: reconfigured the running daemons"
    fi
    if ! live_pid "$RUN/slurmctld.pid" slurmctld >/dev/null; then
        pgrep -x slurmctld >/dev/null && die "a slurmctld that this script did not start is running; stop it first"
        slurmctld || die "slurmctld failed to start (see $LOG/slurmctld.log)"
    fi
    if ! live_pid "$RUN/slurmd.pid" slurmd >/dev/null; then
        pgrep -x slurmd >/dev/null && die "a slurmd that this script did not start is running; stop it first"
        slurmd || die "slurmd failed to start (see $LOG/slurmd.log)"
    fi
    local node state deadline resumed=0
    node="$(node_name)"
    deadline=$(( SECONDS + WAIT_S ))
    while :; do
        state="$(node_state)"
        case "$state" in
            idle|mixed|allocated|completing) break ;;
            down*|drain*|fail*)
                if [[ "$resumed" -eq 0 ]]; then
                    scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
                    resumed=1
                fi ;;
        esac
        (( SECONDS < deadline )) || die "node $node is not idle after ${WAIT_S}s (state: '${state:-no answer}'; logs: $LOG)"
        sleep 0.5
    done
    say "slurm is up: node $node $state, partition $PARTITION (default), $(nproc) CPUs, started in $(( SECONDS - t0 ))s"
}

stop_pid() {  # $1 pid file, $2 program name
    local pid i
    pid="$(live_pid "$1" "$2")" || { rm -f "$1"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do
        [[ -e "/proc/$pid" ]] || break
        sleep 0.1
    done
    if [[ -e "/proc/$pid" ]]; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
    say "stopped $2 (pid $pid)"
}

cmd_stop() {
    [[ "$(id -u)" -eq 0 ]] || die "stopping the slurm daemons needs root"
    # Jobs left behind would keep running in slurmstepd processes with no controller.
    if live_pid "$RUN/slurmctld.pid" slurmctld >/dev/null; then
        local jobs
        jobs="$(timeout 10 squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ' || true)"
        if [[ -n "${jobs// /}" ]]; then
            # shellcheck disable=SC2086
            timeout 10 scancel $jobs 2>/dev/null || true
            say "cancelled jobs: $jobs"
            local i
            for i in $(seq 50); do
                pgrep -x slurmstepd >/dev/null || break
                sleep 0.2
            done
        fi
    fi
    stop_pid "$RUN/slurmd.pid" slurmd
    stop_pid "$RUN/slurmctld.pid" slurmctld
    stop_pid "$RUN/munged.pid" munged
    say "slurm is stopped"
}

cmd_status() {
    if ! command -v sinfo >/dev/null; then
        say "slurm is not installed"
        return 1
    fi
    local state
    state="$(node_state)"
    case "$state" in
        idle|mixed|allocated|completing)
            say "slurm is up: node $(node_name) $state"
            return 0 ;;
        "")
            say "slurm is down (sinfo gets no answer from slurmctld)"
            return 1 ;;
        *)
            say "slurm is not usable: node $(node_name) $state"
            return 1 ;;
    esac
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
