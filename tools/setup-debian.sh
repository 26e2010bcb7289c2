#!/usr/bin/env bash
# Sets flowprobe up on Debian 12 from scratch: system packages, a virtual environment in .venv,
# the Python dependencies and the Cython build. With --test, also the test tools and the real
# peers the tests run (softflowd, pmacct, nfdump, tshark, nDPI's TLV decoder, iproute2).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

packages=(python3 python3-venv python3-dev gcc libc6-dev libpcap-dev)
extras=""
if [ "${1:-}" = "--test" ]; then
    packages+=(iproute2 softflowd nfdump tshark tcpdump pmacct libndpi-dev tcpreplay)
    extras="[test]"
fi
echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections 2>/dev/null || true
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"
# an editable install is not byte-compiled, and where PYTHONDONTWRITEBYTECODE is set nothing
# would ever be: every start would compile the package again (~80 ms of a 0.3 s start)
.venv/bin/python -m compileall -q engine bench tools >/dev/null
# the load generator of the live tests and benchmarks (C, libpcap)
.venv/bin/python tools/loadgen.py --build >/dev/null
