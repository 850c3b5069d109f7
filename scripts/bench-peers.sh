#!/usr/bin/env bash
# The gateway-overhead table against peers, from one command (see scripts/bench_peers.py):
#   scripts/bench-peers.sh tollgate litellm portkey
#   scripts/bench-peers.sh tollgate=/path/to/an/older/tollgate tollgate   # before / after
# Installs what it needs: oha (crates.io), nginx with its Lua module (Debian), and builds
# tollgate; LiteLLM (PyPI) and Portkey (npm) are installed under target/bench-peers when named.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! [ -e /usr/lib/nginx/modules/ngx_http_lua_module.so ] || ! command -v nginx >/dev/null || ! command -v taskset >/dev/null; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    pkgs="libnginx-mod-http-lua util-linux python3 python3-venv nodejs npm"
    # An nginx already there (scripts/setup.sh --servers installs Debian's) takes the module.
    command -v nginx >/dev/null || pkgs="nginx-light $pkgs"
    # RUNLEVEL=1: install without starting the system's nginx.
    as_root env RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs
fi
export PATH="$HOME/.cargo/bin:$PATH"
command -v oha >/dev/null || cargo install oha --locked
case " $* " in *" tollgate "*|*" tollgate-off "*|"  ") cargo build --release --locked ;; esac
exec python3 scripts/bench_peers.py "$@"
