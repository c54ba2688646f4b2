#!/usr/bin/env bash
# Debian packages the test suite uses beyond Python's: headless Chromium (the Snakemake report
# and the MLflow UI, checked in a real browser) and a LaTeX engine (the tables' .tex compile).
# The real Slurm is brought up by the Slurm tests themselves (tests/slurm/slurm_up.sh).
# Installs only what is missing; needs root (or sudo) and Debian's package mirror.
set -euo pipefail
apt=()
command -v chromium >/dev/null || apt+=("chromium")
command -v pdflatex >/dev/null || apt+=("--no-install-recommends texlive-latex-base texlive-latex-recommended")
if [ ${#apt[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq
  for pkgs in "${apt[@]}"; do
    # shellcheck disable=SC2086  # one word per option and package
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $pkgs >/dev/null
  done
fi
