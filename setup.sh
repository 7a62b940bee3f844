#!/usr/bin/env bash
# One-time (idempotent) set-up of a fresh Debian machine for hmmfuzz: QEMU and the tools
# that build the runner and kernels (Debian packages), and a virtual environment in .venv
# with hmmfuzz and its Python dependencies. Says what it does; quiet when already done.
set -euo pipefail
cd "$(dirname "$0")"

debian_packages=(qemu-system-x86 cpio gcc libc6-dev make flex bison bc libelf-dev libssl-dev
                 xz-utils dpkg-dev)
missing=()
for package in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=(); [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

stamp=.venv/.hmmfuzz-installed
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating the virtual environment .venv"
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing hmmfuzz and its Python dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
