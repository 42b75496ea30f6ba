#!/usr/bin/env bash
# A throwaway single-node SLURM cluster on this machine, for tests/test_slurm.py: munged, slurmctld and slurmd
# from Debian's `slurm-wlm`, all state, sockets, logs and the config in one temp dir, on free ports. Exports
# (and prints)
#   SLURM_CONF=DIR/slurm.conf                       (sbatch, sinfo, scontrol... and the jobs find the cluster)
#   NANORESEARCH_TEST_SLURM=1, NANORESEARCH_TEST_SLURM_PARTITION=nanoresearch, NANORESEARCH_REQUIRE_SLURM=1
#
#   source scripts/ci_slurm.sh   # CI: the daemons are stopped and the dir deleted when the sourcing shell exits
#   bash scripts/ci_slurm.sh     # by hand: the cluster keeps running; the exports and the stop command are printed
#   bash scripts/ci_slurm.sh stop DIR   # stops a cluster started by hand
#
# Installs `slurm-wlm` and `munge` when missing (needs root; 15-30 s). Besides the packages, nothing outside the temp
# dir is written except the munge key Debian's munge expects (created only if absent); this cluster's munged uses a
# copy of it and its own socket, so a system munged or SLURM, if any, is left alone. No accounting database: `sacct` is unavailable (submitit
# then learns that a job finished from its result file); `scontrol show job` shows jobs for MinJobAge seconds.
# The daemons run as root (SlurmUser=root), so do the jobs when root submits them.

_nanoresearch_slurm_say() { echo "ci_slurm: $*" >&2; }

_nanoresearch_slurm_main() {
    local partition=nanoresearch
    if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 \
        || ! command -v munged >/dev/null 2>&1 || ! command -v sbatch >/dev/null 2>&1; then
        if [ "$(id -u)" != 0 ]; then
            _nanoresearch_slurm_say "slurmctld/slurmd/munged not found and not root: install slurm-wlm and munge"
            return 1
        fi
        _nanoresearch_slurm_say "installing slurm-wlm and munge (apt-get)"
        # The packages would start the system's munged (and try slurmd/slurmctld): this cluster runs its own
        # daemons, so keep apt from starting services (Debian's policy-rc.d), unless a policy is already in place.
        local policy_added=0 installed=0
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d && policy_added=1
        fi
        # Lock timeout: another process may be running apt at the same time.
        apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null \
            && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq slurm-wlm munge >/dev/null \
            && installed=1
        if [ "$policy_added" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
        [ "$installed" = 1 ] || { _nanoresearch_slurm_say "apt-get install slurm-wlm munge failed"; return 1; }
    else
        _nanoresearch_slurm_say "found $(slurmctld -V 2>/dev/null) and $(munged --version 2>/dev/null | head -n 1)"
    fi
    if [ "$(id -u)" != 0 ]; then
        # slurmd must be root to launch jobs as their submitting user.
        _nanoresearch_slurm_say "must run as root (slurmd launches jobs as their user)"
        return 1
    fi

    if [ ! -s /etc/munge/munge.key ]; then
        _nanoresearch_slurm_say "creating the munge key /etc/munge/munge.key"
        mkdir -p /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key || return 1
        chown munge: /etc/munge/munge.key 2>/dev/null || true
        chmod 0400 /etc/munge/munge.key
    fi

    local dir node ctld_port slurmd_port hwline
    dir=$(mktemp -d "${TMPDIR:-/tmp}/nanoresearch-slurm.XXXXXX") || return 1
    chmod 0700 "$dir"  # munged refuses key and socket directories that others can write
    mkdir -p "$dir/munge" "$dir/state" "$dir/spool"
    install -m 0400 /etc/munge/munge.key "$dir/munge/munge.key"
    NANORESEARCH_SLURM_DIR=$dir  # all a stop needs, even if the rest of the setup fails half-way

    _nanoresearch_slurm_say "starting munged (socket $dir/munge/munge.socket)"
    # --force: the socket's parent directories include the world-writable (sticky) /tmp.
    munged --force --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" || {
        _nanoresearch_slurm_say "munged did not start, see $dir/munge/munged.log"; return 1; }

    node=$(hostname -s)
    # Two free ports: bind to port 0 and read what the kernel picked.
    read -r ctld_port slurmd_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))') || return 1
    # This machine's real CPUs, sockets, cores and memory, as slurmd sees them: the node must match them.
    hwline=$(slurmd -C | head -n 1) || return 1
    hwline=${hwline#NodeName=* }

    cat >"$dir/slurm.conf" <<EOF
# Throwaway single-node cluster written by scripts/ci_slurm.sh
ClusterName=nanoresearch
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
# No cgroups in CI containers: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# Cores are the consumable resource, memory is not: several small jobs share the node.
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Look at pending jobs every 5 s, not every 30-60 s: a requeued job whose begin time has come starts promptly.
SchedulerParameters=sched_interval=5,bf_interval=5
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
# Finished jobs stay visible to scontrol for 10 minutes (there is no sacct without an accounting database).
MinJobAge=600
NodeName=$node NodeAddr=127.0.0.1 $hwline State=UNKNOWN
PartitionName=$partition Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$dir/slurm.conf"

    _nanoresearch_slurm_say "starting slurmctld (port $ctld_port) and slurmd (node $node: $hwline)"
    slurmctld -f "$SLURM_CONF" -i || {
        _nanoresearch_slurm_say "slurmctld did not start, see $dir/slurmctld.log"; return 1; }
    slurmd -f "$SLURM_CONF" -N "$node" || {
        _nanoresearch_slurm_say "slurmd did not start, see $dir/slurmd.log"; return 1; }

    local state="" waited=0
    while [ $waited -lt 60 ]; do
        state=$(sinfo -h -N -n "$node" -p "$partition" -o %T 2>/dev/null | head -n 1)
        if [ "$state" = idle ]; then break; fi
        sleep 1
        waited=$((waited + 1))
    done
    if [ "$state" != idle ]; then
        _nanoresearch_slurm_say "node $node is '${state:-unreachable}' after ${waited}s, not idle; logs in $dir"
        tail -n 5 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 2>/dev/null
        return 1
    fi
    _nanoresearch_slurm_say "node $node idle after ${waited}s"

    export NANORESEARCH_TEST_SLURM=1 NANORESEARCH_TEST_SLURM_PARTITION=$partition NANORESEARCH_REQUIRE_SLURM=1
    echo "SLURM_CONF=$SLURM_CONF"
    echo "NANORESEARCH_TEST_SLURM_PARTITION=$NANORESEARCH_TEST_SLURM_PARTITION"
}

_nanoresearch_slurm_stop() {
    # Cancel this cluster's jobs, stop its daemons (by their pid files), then delete its dir. Never fails: it runs
    # in an EXIT trap under `set -e` and must not keep the traps chained after it from running.
    local dir=$1 pidfile pid i
    [ -d "$dir" ] || return 0
    if [ -f "$dir/slurmctld.pid" ]; then
        SLURM_CONF="$dir/slurm.conf" timeout 10 scancel --partition=nanoresearch >/dev/null 2>&1 || true
        for i in $(seq 20); do
            [ -z "$(SLURM_CONF="$dir/slurm.conf" timeout 5 squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        pid=$(cat "$pidfile" 2>/dev/null) || continue
        kill "$pid" 2>/dev/null || continue
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -rf "$dir"
    return 0
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    if ! _nanoresearch_slurm_main; then
        [ -n "${NANORESEARCH_SLURM_DIR:-}" ] && _nanoresearch_slurm_stop "$NANORESEARCH_SLURM_DIR"
        return 1
    fi
    # Chain any EXIT trap already set (ci_postgres.sh's stops its server): ours runs first, then the earlier one.
    _nanoresearch_slurm_previous_exit_trap() { eval "set -- $(trap -p EXIT)"; printf '%s' "${3:-}"; }
    NANORESEARCH_SLURM_PREVIOUS_EXIT=$(_nanoresearch_slurm_previous_exit_trap)
    trap '_nanoresearch_slurm_stop "$NANORESEARCH_SLURM_DIR"; eval "$NANORESEARCH_SLURM_PREVIOUS_EXIT"' EXIT
elif [ "${1:-}" = stop ]; then
    [[ "${2:-}" == */nanoresearch-slurm.* ]] || { echo "error: stop ${2:-}: expected a dir made by this script (.../nanoresearch-slurm.XXXXXX)" >&2; exit 2; }
    _nanoresearch_slurm_stop "$2"
else
    if ! _nanoresearch_slurm_main; then
        [ -n "${NANORESEARCH_SLURM_DIR:-}" ] && _nanoresearch_slurm_stop "$NANORESEARCH_SLURM_DIR"
        exit 1
    fi
    echo "use it with: export SLURM_CONF=$SLURM_CONF NANORESEARCH_TEST_SLURM=1 NANORESEARCH_TEST_SLURM_PARTITION=nanoresearch" >&2
    echo "stop it with: bash $0 stop $NANORESEARCH_SLURM_DIR" >&2
fi
