#!/usr/bin/env bash
# Stop the single-node Slurm that slurm_up.sh started (the state folders stay).
for d in slurmd slurmctld slurmdbd; do pkill -x "$d" 2>/dev/null || true; done
mysqladmin shutdown 2>/dev/null || true
echo "slurm_down: stopped"
