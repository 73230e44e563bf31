#!/usr/bin/env bash
# CI, Slurm part: a real single-node Slurm cluster (Debian's slurmctld + slurmd + munge, no systemd),
# then tests/test_slurm.py against it, then every daemon stopped by its pid, also on failure.
# Needs root. Installs the packages if missing. Where Slurm cannot be installed (not root, no apt),
# it says SKIPPED and exits 0; once installed, a cluster that does not come up is a failure.
#
# Environment (optional): PYTHON (default .venv/bin/python, the venv .ci/run makes), PYTEST_ARGS.
# Also usable by hand: `bash .ci/slurm.sh up` prints the exports of a cluster left running and
# `bash .ci/slurm.sh down DIR` stops it (for trying the array script against it).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PYTHON=${PYTHON:-.venv/bin/python}
T0=$SECONDS
log() { echo "ci-slurm [$((SECONDS - T0))s]: $*" >&2; }

install_slurm() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        return 1
    fi
    log "installing slurmctld slurmd slurm-client munge"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge; } >/dev/null
}

# stop jobs, then the daemons, each by the pid this script recorded in DIR/pids
teardown() {
    local dir=$1 pid
    [ -f "$dir/pids" ] || return 0
    export SLURM_CONF=$dir/slurm.conf
    if squeue -h -o %A 2>/dev/null | grep -q .; then
        log "cancelling the jobs left in the cluster"
        scancel --full --user=root 2>/dev/null
        for _ in $(seq 60); do squeue -h -o %A 2>/dev/null | grep -q . || break; sleep 1; done
    fi
    # slurmd first, so that nothing new starts; munged last, since the others use it until they exit
    for pid in $(tac "$dir/pids"); do
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    done
    rm -f "$dir/pids"
}

bringup() {
    local dir=$1 host node
    mkdir -p "$dir/state" "$dir/spool" "$dir/run"
    host=$(hostname -s)
    # the node's CPUs, memory etc. as slurmd sees them; CPUs raised to 6 (SlurmdParameters below keeps the
    # node usable) so that the tests' five tasks (two of them stand-ins that exit at once) run side by side
    node=$(slurmd -C | head -n 1 | sed -E 's/CPUs=[0-9]+/CPUs=6/; s/ Boards=[^ ]+ SocketsPerBoard=[^ ]+ CoresPerSocket=[^ ]+ ThreadsPerCore=[^ ]+//')
    cat >"$dir/slurm.conf" <<EOF
ClusterName=sacci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# job credentials live 10 s, not 120: a requeued job waits that long before it may start again
AuthInfo=cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# schedule every 2 s (a requeued job otherwise waits for the next full pass, minutes)
SchedulerParameters=sched_interval=2
SlurmdParameters=config_overrides
MailProg=/bin/true
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MinJobAge=600
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$dir/slurm.conf
    : >"$dir/pids"
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F >"$dir/munged.log" 2>&1 &
    echo $! >>"$dir/pids"
    for _ in $(seq 50); do [ -S /run/munge/munge.socket.2 ] && break; sleep 0.1; done
    slurmctld -D -f "$dir/slurm.conf" >>"$dir/slurmctld.out" 2>&1 &
    echo $! >>"$dir/pids"
    slurmd -D -f "$dir/slurm.conf" >>"$dir/slurmd.out" 2>&1 &
    echo $! >>"$dir/pids"
    for _ in $(seq 120); do
        sinfo -h -o %t 2>/dev/null | grep -qx idle && { log "cluster up: $(sinfo -h -o '%P %D %c CPUs %t')"; return 0; }
        sleep 0.5
    done
    log "the node did not become idle within 60 s; sinfo says: $(sinfo -h 2>&1)"
    tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" "$dir/munged.log" >&2 2>/dev/null
    return 1
}

case "${1:-ci}" in
up)
    install_slurm || { log "cannot install Slurm (needs root and apt-get)"; exit 1; }
    dir=$(mktemp -d /tmp/slurm-ci.XXXXXX)
    bringup "$dir" || { teardown "$dir"; exit 1; }
    echo "export SLURM_CONF=$dir/slurm.conf SAC_SLURM_CLUSTER=1  # stop with: bash .ci/slurm.sh down $dir"
    exit 0 ;;
down)
    teardown "$2"
    exit 0 ;;
esac

if ! install_slurm; then
    log "SKIPPED: Slurm is not installed and cannot be installed here (needs root and apt-get); the Slurm tests did not run"
    exit 0
fi
DIR=$(mktemp -d /tmp/slurm-ci.XXXXXX)
trap 'teardown "$DIR"; rm -rf "$DIR"' EXIT
bringup "$DIR" || exit 1
# shellcheck disable=SC2086  # PYTEST_ARGS: several words
SAC_SLURM_CLUSTER=1 "$PYTHON" -m pytest -q -rs --durations=5 -p no:cacheprovider tests/test_slurm.py ${PYTEST_ARGS:-}
code=$?
log "tests/test_slurm.py exit $code"
exit $code
