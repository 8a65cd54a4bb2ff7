# Shared by scripts/demo and scripts/test: package installation and build.
# Sourced, not run.

MM_PACKAGES=(build-essential cmake pkg-config libuv1-dev libhiredis-dev libjansson-dev
             libcmocka-dev node-llhttp redis-server python3 curl)

# Install whatever of MM_PACKAGES (plus "$@") is missing. apt-get update runs
# only when something must be installed, so a ready machine starts at once.
mm_ensure_packages() {
    local missing=() p
    for p in "${MM_PACKAGES[@]}" "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# mm_build DIR [cmake args...]: configure (once) and build into DIR.
mm_build() {
    local dir=$1; shift
    mkdir -p "$dir"
    if ! { cmake -S "$MM_ROOT" -B "$dir" "$@" && cmake --build "$dir" -j"$(nproc)"; } \
            >"$dir/build.log" 2>&1; then
        tail -n 60 "$dir/build.log"
        echo "build failed (full log: $dir/build.log)" >&2
        return 1
    fi
}

mm_free_port() {
    mm_free_ports 1
}

# N distinct free loopback ports, one per line: the sockets are held until
# all are chosen, so two picks cannot be the same port.
mm_free_ports() {
    python3 -c 'import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held: s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in held))' "$1"
}
