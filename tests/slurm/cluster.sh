#!/usr/bin/env bash
# A throw-away single-node SLURM cluster (munge + slurmctld + slurmd) for the SLURM profile's tests.
#   tests/slurm/cluster.sh install   # Debian packages (needs root and the package registry)
#   tests/slurm/cluster.sh start     # configure and start; fake GPUs as GRES (FAKE_GPUS, default 2)
#   tests/slurm/cluster.sh stop      # stop what start started
# No systemd and no cgroups are assumed: process tracking by /proc, no task confinement. Accounting is
# off, so Snakemake must poll with squeue (finished jobs stay listed for MinJobAge seconds).
set -euo pipefail

conf_dir=/etc/slurm
state_dirs=(/var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge)

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return 0
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
  local host ncpu mem ngpu gres_node devices
  host=$(hostname -s)
  ncpu=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
  ngpu=${FAKE_GPUS:-2}
  gres_node=""
  : > "$conf_dir/gres.conf"
  if [ "$ngpu" -gt 0 ]; then
    # Character devices that exist everywhere stand in for GPUs: SLURM then hands out GRES and sets
    # CUDA_VISIBLE_DEVICES per job exactly as with real ones.
    devices=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom)
    [ "$ngpu" -le ${#devices[@]} ] || { echo "at most ${#devices[@]} fake GPUs" >&2; exit 2; }
    gres_node="Gres=gpu:${ngpu}"
    echo "AutoDetect=off" >> "$conf_dir/gres.conf"
    for i in $(seq 0 $((ngpu - 1))); do
      echo "NodeName=${host} Name=gpu File=${devices[$i]}" >> "$conf_dir/gres.conf"
    done
  fi
  cat > "$conf_dir/slurm.conf" <<CONF
ClusterName=vislaw-test
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
MinJobAge=7200
GresTypes=gpu
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${ncpu} RealMemory=${mem} ${gres_node} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
  mkdir -p "$conf_dir" "${state_dirs[@]}"
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*   # a clean state: no jobs from an earlier run
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  write_config
  [ -s /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null \
    || runuser -u munge -- /usr/sbin/munged
  /usr/sbin/slurmctld
  /usr/sbin/slurmd
  for _ in $(seq 1 120); do
    sinfo -h -o '%T' 2>/dev/null | grep -qx idle && { sinfo; return 0; }
    sleep 0.5
  done
  echo "the SLURM node did not become idle; slurmctld log:" >&2
  tail -n 20 /var/log/slurm/slurmctld.log >&2 || true
  exit 1
}

stop_pid() {
  local file=$1 pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  stop_pid /run/slurmd.pid
  stop_pid /run/slurmctld.pid
  stop_pid /run/munge/munged.pid
  # Our configuration goes too: with it and no controller, every SLURM client call waits ~9 s for one, and the
  # SLURM executor plugin calls `scontrol show config` when Snakemake starts, so every later local Snakemake
  # run on this machine (the tests after this one, the default workflow) would start 9 s late.
  if grep -qx "ClusterName=vislaw-test" "$conf_dir/slurm.conf" 2>/dev/null; then
    rm -f "$conf_dir/slurm.conf" "$conf_dir/gres.conf"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
