#!/usr/bin/env bash
# Sets flowprobe up on Debian 12 from scratch: system packages (libndpi-dev: L7 detection), a
# virtual environment in .venv, the Python dependencies and the Cython build. With --test, also
# the test tools and the real peers the tests run (softflowd, pmacct, nfdump, tshark, ndpiReader,
# iproute2).
# A rerun does only what changed: apt when a package is missing, the build when a source is newer.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

packages=(python3 python3-venv python3-dev gcc libc6-dev libpcap-dev libndpi-dev)
extras=""
if [ "${1:-}" = "--test" ]; then
    packages+=(iproute2 softflowd nfdump tshark tcpdump pmacct libndpi-bin tcpreplay)
    extras="[test]"
fi
missing=$(dpkg-query -W -f='${Package} ${Status}\n' "${packages[@]}" 2>/dev/null \
          | awk '$4 != "installed" {print $1}'; \
          for p in "${packages[@]}"; do dpkg-query -W "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
    # another apt (unattended-upgrades at boot) may hold the lock: wait for it
    apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -qq)
    echo "wireshark-common wireshark-common/install-setuid boolean false" \
        | $SUDO debconf-set-selections 2>/dev/null || true
    $SUDO "${apt[@]}" update
    $SUDO "${apt[@]}" install -y --no-install-recommends "${packages[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=".venv/.flowprobe-installed${extras}"
sources=(pyproject.toml setup.py tools/setup-debian.sh $(git ls-files 'engine/*.pyx' 'engine/*.pxd' \
         'engine/*.h' 'bindings/*' 2>/dev/null || true))
if [ ! -e "$stamp" ] || [ -n "$(find "${sources[@]}" -newer "$stamp" 2>/dev/null | head -1)" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # the editable install's notice (folders named like the package) is expected here: keep the
    # rest of what pip says, all of it when it fails
    log=$(mktemp)
    if ! .venv/bin/python -m pip install -q -e ".${extras}" >"$log" 2>&1; then
        cat "$log" >&2
        exit 1
    fi
    grep -v -e "^ *$" -e "!!" -e "\*\*\*\*" -e "Editable installation" -e "folders in your working" \
            -e "name as your package" -e "with strategy, WheelFile" -e "ignored: it is neither" \
            "$log" >&2 || true
    rm -f "$log"
    # an editable install is not byte-compiled, and where PYTHONDONTWRITEBYTECODE is set nothing
    # would ever be: every start would compile the package again (~80 ms of a 0.3 s start)
    .venv/bin/python -m compileall -q engine bench tools >/dev/null
    touch "$stamp"
fi
# the load generator of the live tests and benchmarks (C, libpcap)
.venv/bin/python tools/loadgen.py --build >/dev/null
