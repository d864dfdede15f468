#!/usr/bin/env bash
# Installs the Debian packages listed in scripts/packages.txt that are not installed yet.
# Idempotent: does nothing (and no network access) when everything is present; runs
# 'apt-get update' once, only when something is missing. Needs root or sudo.
# --build-only: only what building kvstash needs (packages.txt up to its "---- end of build
# dependencies" line), as the images' build stage runs it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
list=$here/packages.txt
# shellcheck disable=SC2016 # sed ranges, not shell expansions
case ${1:-} in
'') range='1,$p' ;;
--build-only) range='1,/^# ---- end of build dependencies/p' ;;
-h | --help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
*) echo "install-deps: unknown option '$1' (want --build-only or nothing)" >&2; exit 2 ;;
esac
mapfile -t pkgs < <(sed -n "$range" "$list" | sed -e 's/#.*//' -e 's/[[:space:]]//g' | grep -v '^$')
missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
# npm goes with nodejs: Debian's nodejs comes without it (package npm), a NodeSource nodejs
# brings its own and conflicts with Debian's npm package; so npm is asked for only when the list
# names nodejs and no npm command exists (the images' runtime lists do not name nodejs).
if printf '%s\n' "${pkgs[@]}" | grep -qx nodejs && ! command -v npm >/dev/null 2>&1; then
  missing+=(npm)
fi
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
SUDO=
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1
  fi
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends keeps images small; policy-rc.d keeps postinst scripts from starting
# redis/nginx/etcd services on the host (tests start their own on free ports).
if [ ! -e /usr/sbin/policy-rc.d ] && [ -z "$SUDO" ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
