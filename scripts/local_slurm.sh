#!/usr/bin/env bash
# local_slurm.sh - run a real, single-node SLURM cluster on this machine, for trying the
# benchmark's SLURM mode (submitit) on one machine and for CI.
#
# Everything (munge key and socket, configs, state, spool, logs, PID files) lives under DIR;
# nothing outside DIR is touched and nothing is installed. The daemons run as root in the
# background, talk over 127.0.0.1 only, and use non-default ports (see "Ports" below).
#
# Usage (as root):
#   scripts/local_slurm.sh start  DIR [--with-dbd] [--gpus N] [--timeout SECONDS]
#   scripts/local_slurm.sh status DIR      # exit 0 when the cluster answers, 1 otherwise
#   scripts/local_slurm.sh env    DIR      # prints: export SLURM_CONF=DIR/slurm.conf
#   scripts/local_slurm.sh stop   DIR
#
#   start     starts munged, slurmctld and slurmd (and, with --with-dbd, MariaDB and slurmdbd so
#             that sacct and submitit's job states work), then waits until `sinfo` shows the node
#             idle. Calling it again while the cluster runs just reports that it is running.
#   --gpus N  fake GPUs declared as gres (default 2; 0 for none), so `--gres=gpu:1` jobs schedule
#             and get CUDA_VISIBLE_DEVICES. They are symlinks to /dev/null in DIR/fakegpu.
#   stop      cancels jobs still queued, then stops exactly the daemons whose PIDs start saved.
#
# Then point the SLURM clients (sbatch, squeue, submitit) at it:
#   eval "$(scripts/local_slurm.sh env DIR)"    # i.e. export SLURM_CONF=DIR/slurm.conf
#
# Needs the Debian packages (bookworm: slurm-wlm 22.05):
#   apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
#   and for --with-dbd also: slurmdbd mariadb-server
#
# Ports: slurmctld=BASE, slurmd=BASE+1, slurmdbd=BASE+2, MariaDB=BASE+3, with
#   BASE=${LOCAL_SLURM_PORT_BASE:-26817} (below the Linux ephemeral range; SLURM's own default
#   is 6817). Run two clusters at once only with different bases.
set -euo pipefail

readonly PROG=${0##*/}
readonly CLUSTER_NAME=localbench
readonly PARTITION=local
PORT_BASE=${LOCAL_SLURM_PORT_BASE:-26817}
# Daemons in start order; stop goes in reverse.
readonly ALL_DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

die() {
    echo "$PROG: error: $*" >&2
    exit 1
}

log() {
    echo "$PROG: $*"
}

# ---------------------------------------------------------------------------------------------
# paths and PID bookkeeping

set_paths() {
    local dir=$1
    # Absolute path, so that SLURM_CONF and the generated configs work from any directory.
    mkdir -p -- "$dir"
    D=$(cd -- "$dir" && pwd -P)
    RUN=$D/run
    LOGD=$D/log
    CONF=$D/slurm.conf
}

# PIDs saved by start: $RUN/<daemon>.pid, one number each.
pidfile() { echo "$RUN/$1.pid"; }

# True if process $1 exists and has not exited. A daemon that exited stays a zombie until
# whatever adopted it (PID 1, after start returned) reaps it, and kill -0 still succeeds on it.
pid_running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# Prints the saved PID of daemon $1 if that process is alive and is that daemon.
live_pid() {
    local name=$1 f pid comm
    f=$(pidfile "$name")
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    # /proc/PID/comm is cut at 15 characters; all our names are shorter.
    [[ $comm == "$name" ]] && pid_running "$pid" || return 1
    echo "$pid"
}

# Daemons that start saved PIDs for (whether or not they still run).
saved_daemons() {
    local name
    for name in "${ALL_DAEMONS[@]}"; do
        [[ -f $(pidfile "$name") ]] && echo "$name"
    done
    return 0
}

# Starts "$@" detached (own session, stdin from /dev/null, output to $LOGD/<name>.out) and saves
# its PID. The daemons are run in the foreground mode so the PID we get is the daemon itself.
spawn() {
    local name=$1
    shift
    setsid "$@" </dev/null >"$LOGD/$name.out" 2>&1 &
    local pid=$!
    disown "$pid" # no "Killed" notices from this shell if stop has to SIGKILL it
    echo "$pid" >"$(pidfile "$name")"
    STARTED+=("$name")
    # Until the exec, that PID is still a copy of this shell (then setsid): wait for the daemon
    # itself, so that later liveness checks (which compare the process name) are meaningful.
    local i
    for ((i = 0; i < 100; i++)); do
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] && return 0
        pid_running "$pid" || break
        sleep 0.05
    done
    fail_start "$name did not start (see $LOGD/$name.out)"
}

# Stops daemon $1 by its saved PID: SIGTERM, wait up to $2 s, then SIGKILL. Removes the PID file.
stop_daemon() {
    local name=$1 wait_s=${2:-20} f pid i
    f=$(pidfile "$name")
    [[ -f $f ]] || return 0
    if pid=$(live_pid "$name"); then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < wait_s * 10; i++)); do
            pid_running "$pid" || break
            sleep 0.1
        done
        if pid_running "$pid"; then
            log "$name (pid $pid) did not exit after ${wait_s}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                pid_running "$pid" || break
                sleep 0.1
            done
        fi
        log "stopped $name (pid $pid)"
    fi
    rm -f -- "$f"
}

# ---------------------------------------------------------------------------------------------
# checks

require_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root: the daemons run as root (SlurmUser=root) so that
  slurmd can start jobs; try: sudo $0 ${ARGS[*]}"
}

# Dies naming the Debian packages whose programs are missing.
require_programs() {
    local with_dbd=$1 entry prog pkg missing=() pkgs=()
    local -a needed=(munged:munge mungekey:munge munge:munge slurmctld:slurmctld slurmd:slurmd
        sinfo:slurm-client sbatch:slurm-client scontrol:slurm-client squeue:slurm-client
        scancel:slurm-client setsid:util-linux)
    if [[ $with_dbd == 1 ]]; then
        needed+=(slurmdbd:slurmdbd sacctmgr:slurm-client sacct:slurm-client
            mariadbd:mariadb-server mariadb-install-db:mariadb-server mariadb:mariadb-server)
    fi
    for entry in "${needed[@]}"; do
        prog=${entry%%:*}
        pkg=${entry#*:}
        # The daemons live in /usr/sbin, which a non-login root shell may lack in PATH.
        if ! PATH=$PATH:/usr/sbin:/sbin command -v "$prog" >/dev/null 2>&1; then
            missing+=("$prog")
            [[ " ${pkgs[*]} " == *" $pkg "* ]] || pkgs+=("$pkg")
        fi
    done
    if ((${#missing[@]})); then
        die "missing programs: ${missing[*]}
  They come from the Debian packages: ${pkgs[*]}
  Install them with:
    apt-get update && apt-get install -y --no-install-recommends ${pkgs[*]}"
    fi
}

port_in_use() {
    # Something accepting connections on 127.0.0.1:$1?
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

check_ports_free() {
    local port
    for port in "$@"; do
        if port_in_use "$port"; then
            die "port 127.0.0.1:$port is already in use (another local cluster, or another service).
  Stop that one, or choose other ports: LOCAL_SLURM_PORT_BASE=<n> $0 ${ARGS[*]}"
        fi
    done
}

# ---------------------------------------------------------------------------------------------
# failure reporting and waiting

show_logs() {
    local f
    for f in "$LOGD"/*.log "$LOGD"/*.out "$LOGD"/*.err; do
        [[ -s $f ]] || continue
        # Daemons in the foreground print to stdout (.out) what they also write to their .log.
        [[ $f == *.out && -s ${f%.out}.log ]] && continue
        echo "----- last lines of $f -----" >&2
        tail -n 15 -- "$f" >&2
    done
}

# Called when start fails: stop what this run started (so a retry starts clean), point at logs.
fail_start() {
    local msg=$1 i
    echo "$PROG: error: $msg" >&2
    show_logs
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        stop_daemon "${STARTED[i]}" 5 >&2
    done
    echo "$PROG: start failed; the logs are in $LOGD/ (configs: $CONF, $D/gres.conf)" >&2
    exit 1
}

# wait_until DESCRIPTION DAEMON -- COMMAND...: polls COMMAND every 0.2 s until it succeeds, until
# the daemon dies (fail fast), or until the start deadline.
wait_until() {
    local what=$1 daemon=$2
    shift 3
    while ! "$@" >/dev/null 2>&1; do
        if [[ -n $daemon ]] && ! live_pid "$daemon" >/dev/null; then
            fail_start "$daemon exited while waiting for: $what"
        fi
        if ((SECONDS >= DEADLINE)); then
            fail_start "timed out after ${TIMEOUT}s waiting for: $what"
        fi
        sleep 0.2
    done
}

munge_works() {
    munge -n -S "$D/munge/munge.sock" | unmunge -S "$D/munge/munge.sock"
}

mariadb_answers() {
    mariadb --no-defaults -uroot -S "$D/mysql/run/mysqld.sock" -e 'select 1'
}

ctld_up() {
    scontrol ping | grep -q 'is UP'
}

node_idle() {
    [[ $(timeout 10 sinfo -h -N -o %t) == idle ]]
}

# ---------------------------------------------------------------------------------------------
# configuration

# MiB of memory to declare: 90% of the machine's (or the cgroup limit's, if lower).
node_memory_mb() {
    local total_kb limit mb
    total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
    mb=$((total_kb / 1024))
    limit=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || echo max)
    if [[ $limit =~ ^[0-9]+$ ]] && ((limit / 1048576 < mb)); then
        mb=$((limit / 1048576))
    fi
    echo $((mb * 9 / 10))
}

write_configs() {
    local with_dbd=$1 gpus=$2 node cpus mem acct gres_types="" gres_node="" i
    node=$(hostname -s)
    cpus=$(nproc)
    mem=$(node_memory_mb)

    : >"$D/gres.conf"
    if ((gpus > 0)); then
        # Fake GPUs: gres wants one device file per GPU and ignores files that are not character
        # or block devices (then jobs get no CUDA_VISIBLE_DEVICES). Symlinks to /dev/null pass
        # that check; nothing opens them, as there is no cgroup device constraint here.
        mkdir -p "$D/fakegpu"
        for ((i = 0; i < gpus; i++)); do
            ln -sfn /dev/null "$D/fakegpu/gpu$i"
        done
        local files=$D/fakegpu/gpu0
        ((gpus == 1)) || files="$D/fakegpu/gpu[0-$((gpus - 1))]"
        echo "NodeName=$node Name=gpu File=$files" >"$D/gres.conf"
        gres_types="GresTypes=gpu"
        gres_node="Gres=gpu:$gpus"
    fi

    if [[ $with_dbd == 1 ]]; then
        # The clients (sacct, sacctmgr) ignore AuthInfo when talking to slurmdbd; they find our
        # munge socket only through AccountingStoragePass.
        acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((PORT_BASE + 2))
AccountingStoragePass=$D/munge/munge.sock"
        # slurmdbd refuses a config readable by others, and an empty StoragePass= line.
        (
            umask 077
            cat >"$D/slurmdbd.conf" <<EOF
# Generated by $PROG; rewritten on each start.
AuthType=auth/munge
AuthInfo=socket=$D/munge/munge.sock
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT_BASE + 2))
CommunicationParameters=NoInAddrAny
SlurmUser=root
LogFile=$LOGD/slurmdbd.log
PidFile=$RUN/slurmdbd.daemon.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT_BASE + 3))
StorageUser=root
StorageLoc=slurm_acct_db
EOF
        )
        chmod 600 "$D/slurmdbd.conf"
    else
        acct="AccountingStorageType=accounting_storage/none"
    fi

    cat >"$CONF" <<EOF
# Generated by $PROG; rewritten on each start. Single node, localhost only.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$PORT_BASE
SlurmdPort=$((PORT_BASE + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munge.sock
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool/%n
SlurmctldPidFile=$RUN/slurmctld.daemon.pid
SlurmdPidFile=$RUN/slurmd.daemon.pid
SlurmctldLogFile=$LOGD/slurmctld.log
SlurmdLogFile=$LOGD/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: works in containers and VMs without a delegated cgroup tree.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
PropagateResourceLimits=NONE
MailProg=/bin/true
# Listen on the configured address (127.0.0.1) instead of on all interfaces.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
$acct
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Try to start batch jobs at submit time instead of up to 3 s later (the default).
SchedulerParameters=batch_sched_delay=0
# Cores are the consumable; memory is not, so jobs without --mem do not each claim the whole node.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
# Trust the numbers below even if the hardware reports differently (containers, cgroup limits).
SlurmdParameters=config_overrides
$gres_types
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $gres_node State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    NODE=$node
}

# ---------------------------------------------------------------------------------------------
# commands

cmd_start() {
    local with_dbd=0 gpus=${LOCAL_SLURM_GPUS:-2}
    TIMEOUT=${LOCAL_SLURM_TIMEOUT:-60}
    while (($#)); do
        case $1 in
        --with-dbd) with_dbd=1 ;;
        --gpus)
            (($# >= 2)) || die "--gpus needs a number"
            gpus=$2
            shift
            ;;
        --gpus=*) gpus=${1#*=} ;;
        --timeout)
            (($# >= 2)) || die "--timeout needs a number of seconds"
            TIMEOUT=$2
            shift
            ;;
        --timeout=*) TIMEOUT=${1#*=} ;;
        *) die "unknown option for start: $1 (see: $PROG --help)" ;;
        esac
        shift
    done
    [[ $gpus =~ ^[0-9]+$ ]] || die "--gpus wants a whole number, got: $gpus"
    [[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout wants whole seconds, got: $TIMEOUT"
    if ! [[ $PORT_BASE =~ ^[0-9]+$ ]] || ((PORT_BASE <= 1024 || PORT_BASE >= 65530)); then
        die "LOCAL_SLURM_PORT_BASE must be a port number between 1025 and 65529"
    fi

    require_root
    require_programs "$with_dbd"
    export PATH=$PATH:/usr/sbin:/sbin
    export SLURM_CONF=$CONF

    # Already (partly) running?
    local name alive=() dead=()
    while read -r name; do
        [[ -n $name ]] || continue
        if live_pid "$name" >/dev/null; then alive+=("$name"); else dead+=("$name"); fi
    done < <(saved_daemons)
    if ((${#alive[@]})); then
        if ((${#dead[@]} == 0)) && timeout 10 sinfo >/dev/null 2>&1; then
            log "already running in $D (${alive[*]}); nothing to do"
            [[ $with_dbd == 0 || " ${alive[*]} " == *" slurmdbd "* ]] ||
                log "note: it runs without accounting; to add it: $PROG stop $D; $PROG start $D --with-dbd"
            timeout 10 sinfo || true
            echo "export SLURM_CONF=$CONF"
            return 0
        fi
        log "found a partly running cluster in $D (running: ${alive[*]:-none}; gone: ${dead[*]:-none}); stopping it first"
        cmd_stop_inner
    fi
    # PID files of daemons that are gone are stale.
    for name in "${dead[@]}"; do rm -f -- "$(pidfile "$name")"; done

    local ports=("$PORT_BASE" $((PORT_BASE + 1)))
    [[ $with_dbd == 0 ]] || ports+=($((PORT_BASE + 2)) $((PORT_BASE + 3)))
    check_ports_free "${ports[@]}"

    mkdir -p "$RUN" "$LOGD" "$D/munge" "$D/state" "$D/spool"
    # The key stays private (600); the directory is traversable so that non-root users can
    # reach the socket and submit jobs too.
    chmod 711 "$D/munge"
    write_configs "$with_dbd" "$gpus"
    mkdir -p "$D/spool/$NODE" # SlurmdSpoolDir=%n: slurmd does not create it itself
    STARTED=()
    SECONDS=0
    DEADLINE=$TIMEOUT

    # 1. munge: our own key and socket, independent of any system munged.
    [[ -f $D/munge/munge.key ]] || mungekey --create --keyfile="$D/munge/munge.key" >/dev/null
    chmod 600 "$D/munge/munge.key"
    rm -f "$D/munge/munge.sock" "$D/munge/munge.sock.lock"
    spawn munged munged --foreground --force --key-file="$D/munge/munge.key" \
        --socket="$D/munge/munge.sock" --pid-file="$RUN/munged.daemon.pid" \
        --seed-file="$D/munge/munged.seed" --log-file="$LOGD/munged.log"
    wait_until "munged to answer on $D/munge/munge.sock" munged -- munge_works

    # 2. accounting (optional): MariaDB, then slurmdbd, then register the cluster.
    if [[ $with_dbd == 1 ]]; then
        mkdir -p "$D/mysql/data" "$D/mysql/run"
        if [[ ! -d $D/mysql/data/mysql ]]; then
            # "normal" root auth: unix_socket auth would tie the DB to the OS user, and slurmdbd
            # connects over TCP as root without a password.
            mariadb-install-db --no-defaults --user=root --auth-root-authentication-method=normal \
                --datadir="$D/mysql/data" >"$LOGD/mariadb-install.log" 2>&1 ||
                fail_start "mariadb-install-db failed"
        fi
        spawn mariadbd mariadbd --no-defaults --user=root --datadir="$D/mysql/data" \
            --socket="$D/mysql/run/mysqld.sock" --pid-file="$D/mysql/run/mysqld.pid" \
            --bind-address=127.0.0.1 --port=$((PORT_BASE + 3)) --innodb-buffer-pool-size=64M \
            --log-error="$LOGD/mariadb.err"
        wait_until "MariaDB to answer on $D/mysql/run/mysqld.sock" mariadbd -- mariadb_answers
        # slurmdbd reads slurmdbd.conf next to $SLURM_CONF.
        spawn slurmdbd slurmdbd -D
        wait_until "slurmdbd to answer (sacctmgr)" slurmdbd -- sacctmgr -n show cluster
        if ! sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER_NAME"; then
            sacctmgr -i add cluster "$CLUSTER_NAME" >"$LOGD/sacctmgr.out" 2>&1 ||
                fail_start "sacctmgr add cluster $CLUSTER_NAME failed"
        fi
    fi

    # 3. controller, then the compute node.
    spawn slurmctld slurmctld -D -f "$CONF"
    wait_until "slurmctld to answer (scontrol ping)" slurmctld -- ctld_up
    spawn slurmd slurmd -D -f "$CONF" -N "$NODE"
    wait_until "node $NODE to be idle in sinfo" slurmd -- node_idle

    log "SLURM cluster '$CLUSTER_NAME' is up in ${SECONDS}s (partition $PARTITION, node $NODE," \
        "$(nproc) CPUs, ${gpus} fake GPUs, accounting: $([[ $with_dbd == 1 ]] && echo slurmdbd || echo none))"
    sinfo
    echo "export SLURM_CONF=$CONF"
}

cmd_stop_inner() {
    local i
    # Cancel leftover jobs, so that no job steps outlive their slurmd.
    if live_pid slurmctld >/dev/null; then
        if [[ -n $(timeout 10 squeue -h -o %i 2>/dev/null) ]]; then
            timeout 10 scancel --full --quiet --user=root 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                [[ -z $(timeout 5 squeue -h -o %i 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    for ((i = ${#ALL_DAEMONS[@]} - 1; i >= 0; i--)); do
        stop_daemon "${ALL_DAEMONS[i]}"
    done
}

cmd_stop() {
    (($# == 0)) || die "stop takes no options"
    [[ -d $RUN ]] || {
        log "nothing to stop in $D"
        return 0
    }
    require_root
    export PATH=$PATH:/usr/sbin:/sbin
    export SLURM_CONF=$CONF
    cmd_stop_inner
    rm -f "$D/munge/munge.sock" "$D/munge/munge.sock.lock"
    log "stopped (state and logs kept in $D)"
}

cmd_status() {
    (($# == 0)) || die "status takes no options"
    local name pid any=0 ok=1
    for name in "${ALL_DAEMONS[@]}"; do
        [[ -f $(pidfile "$name") ]] || continue
        any=1
        if pid=$(live_pid "$name"); then
            echo "$name: running (pid $pid)"
        else
            echo "$name: NOT running (stale $(pidfile "$name"))"
            ok=0
        fi
    done
    if ((!any)); then
        echo "not running (no PID files in $RUN)"
        return 1
    fi
    export SLURM_CONF=$CONF
    if ! timeout 10 sinfo; then
        echo "sinfo does not answer with SLURM_CONF=$CONF; logs: $LOGD/"
        ok=0
    fi
    ((ok)) && echo "export SLURM_CONF=$CONF"
    ((ok))
}

cmd_env() {
    (($# == 0)) || die "env takes no options"
    [[ -f $CONF ]] || die "$CONF does not exist; start the cluster first: $PROG start $D"
    echo "export SLURM_CONF=$CONF"
}

main() {
    ARGS=("$@")
    if (($# == 0)) || [[ $1 == -h || $1 == --help || $1 == help ]]; then
        usage
        (($#)) || exit 2
        exit 0
    fi
    local cmd=$1
    shift
    case $cmd in
    start | stop | status | env) ;;
    *)
        usage >&2
        die "unknown command: $cmd"
        ;;
    esac
    (($# >= 1)) || die "$cmd needs a directory: $PROG $cmd DIR"
    local dir=$1
    shift
    if [[ $cmd == start ]]; then
        set_paths "$dir"
    else
        [[ -d $dir ]] || {
            [[ $cmd == stop ]] && {
                log "nothing to stop: $dir does not exist"
                exit 0
            }
            die "$dir does not exist; start a cluster there first: $PROG start $dir"
        }
        set_paths "$dir"
    fi
    "cmd_$cmd" "$@"
}

main "$@"
