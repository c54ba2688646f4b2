#!/usr/bin/env bash
# Bring up a real single-node Slurm with accounting on this machine (docs/orchestration.md):
# munge, MariaDB, slurmdbd, slurmctld, slurmd; one partition "debug" with every CPU.
# Idempotent: exits at once when the cluster already answers. Needs root and apt (Debian 12).
#   bash tests/slurm/slurm_up.sh        # then: sinfo, sbatch, squeue, scancel, sacct
set -euo pipefail
log() { echo "slurm_up: $*"; }
die() { echo "slurm_up: cannot bring Slurm up: $*" >&2; exit 1; }

if command -v sinfo >/dev/null && timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc" \
   && timeout 5 sacct -n -X -S now-1minutes >/dev/null 2>&1; then
  log "already up"; exit 0
fi
[ "$(id -u)" = 0 ] || die "not root"
command -v apt-get >/dev/null || die "no apt-get"

if ! command -v slurmctld >/dev/null || ! command -v slurmdbd >/dev/null || ! command -v mysqld_safe >/dev/null; then
  log "installing munge, slurm and mariadb from apt"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client slurmdbd mariadb-server \
    >/dev/null || die "apt-get install failed"
fi

HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /run/mysqld
chown munge:munge /run/munge 2>/dev/null || true
chown mysql:mysql /run/mysqld 2>/dev/null || true

# munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged

# MariaDB and the accounting database
if ! pgrep -f mariadbd >/dev/null && ! pgrep -x mysqld >/dev/null; then
  [ -d /var/lib/mysql/mysql ] || mysql_install_db --user=mysql >/dev/null 2>&1 || true
  (mysqld_safe --bind-address=127.0.0.1 >/dev/null 2>&1 &)
fi
for _ in $(seq 60); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.5; done
mysqladmin ping >/dev/null 2>&1 || die "mariadb did not start"
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db; CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
CONF
chmod 600 /etc/slurm/slurmdbd.conf

cat > /etc/slurm/slurm.conf <<CONF
ClusterName=tokendrift
SlurmctldHost=${HOST}
SlurmUser=root
AuthType=auth/munge
# A requeued job waits the credential lifetime before it may start again (slurm.conf(5),
# AuthInfo cred_expire: 120 s by default), then the next pass of the scheduler's main loop
# (SchedulerParameters sched_interval: 60 s by default): 20 s and 5 s on this one-node cluster.
AuthInfo=cred_expire=20
SchedulerParameters=sched_interval=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
JobAcctGatherType=jobacct_gather/linux
JobRequeue=1
ReturnToService=2
MinJobAge=30
KillWait=5
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=${HOST} CPUs=${CPUS} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP
CONF

pgrep -x slurmdbd >/dev/null || slurmdbd
for _ in $(seq 40); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
sacctmgr -i add cluster tokendrift >/dev/null 2>&1 || true
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc"; then break; fi
  scontrol update nodename="${HOST}" state=resume >/dev/null 2>&1 || true
  sleep 0.5
done
sinfo -h -o %T | grep -qE "idle|mix|alloc" || die "node not idle: $(sinfo 2>&1 | tail -1); see /var/log/slurm/"
for _ in $(seq 20); do sacct -n -X -S now-1minutes >/dev/null 2>&1 && break; sleep 0.5; done
sacct -n -X -S now-1minutes >/dev/null 2>&1 || die "sacct does not answer (slurmdbd); see /var/log/slurm/slurmdbd.log"
log "up: node ${HOST}, ${CPUS} CPUs, ${MEM} MB, partition debug, accounting on"
