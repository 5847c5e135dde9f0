#!/usr/bin/env bash
# Slow-client load on `memobuild server` (issue 12, item 7): thousands of connections that send
# part of a request head and then nothing, plus one upload that declares 2 GB, sends 100 bytes and
# stalls, against a server on loopback. Prints what a team would ask of the server under that:
#   - /healthz latency during the attack (a fresh connection every 0.5 s),
#   - the server's open descriptors (most seen, and its limit),
#   - how many attack connections the server closed (header timeout or eviction),
#   - whether the stalled upload was cut off, with what status and after how long.
#   bash hack/stress/server-slow-clients.sh [CONNECTIONS [SECONDS]]   (default 10000, 45)
# MB=/path/to/memobuild skips `cargo build --release`. NOFILE=N runs the server with an open-file
# limit of N (soft and hard, via prlimit), as on a host with a low limit: the flood then outnumbers
# the server's descriptors. Needs python3; no root, no services.
set -eu -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=hack/lib.sh
. hack/lib.sh
conns=${1:-10000}
secs=${2:-45}

if [[ -z "${MB:-}" ]]; then
	ensure_cargo
	cargo build --release --locked -q
	MB="$PWD/target/release/memobuild"
fi
work=$(mktemp -d /tmp/mb-stress-server.XXXXXX)
cleanup() {
	[[ -n "${server_pid:-}" ]] && kill "$server_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# The server as a team runs it: with a token, default limits.
limit=()
[[ -n "${NOFILE:-}" ]] && limit=(prlimit "--nofile=$NOFILE:$NOFILE")
MEMOBUILD_SERVER_TOKEN=stress "${limit[@]}" "$MB" server --listen 127.0.0.1:0 --store "$work/store" \
	>"$work/out" 2>"$work/log" &
server_pid=$!
for _ in $(seq 200); do
	grep -q '^listening on ' "$work/out" 2>/dev/null && break
	kill -0 "$server_pid" 2>/dev/null || die "server exited: $(cat "$work/log")"
	sleep 0.05
done
addr=$(sed -n 's|^listening on http://||p' "$work/out")
[[ -n "$addr" ]] || die "server did not start: $(cat "$work/log")"
log "server pid $server_pid on $addr; $conns slow connections for ${secs}s"

python3 - "$addr" "$server_pid" "$conns" "$secs" <<'PY'
import resource, selectors, socket, statistics, sys, threading, time

addr, pid, want, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
host, port = addr.rsplit(":", 1)
port = int(port)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
want = min(want, hard - 200)
stop = time.monotonic() + secs

def server_fds():
    try:
        import os
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1

def fd_limit():
    try:
        for line in open(f"/proc/{pid}/limits"):
            if line.startswith("Max open files"):
                return line.split()[3]
    except OSError:
        pass
    return "?"

# --- one upload that declares 2 GB, sends 100 bytes and stalls ---
stalled = {}
def stalled_upload():
    s = socket.create_connection((host, port))
    s.sendall(("PUT /cas/" + "ab" * 32 + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer stress\r\n"
               "Content-Length: 2000000000\r\n\r\n").encode() + b"x" * 100)
    t0 = time.monotonic()
    s.settimeout(max(1.0, stop - t0 + 30))
    got = b""
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
            got += b
    except socket.timeout:
        stalled["open"] = True
    except OSError as e:
        stalled["error"] = str(e)
    stalled["after"] = time.monotonic() - t0
    stalled["status"] = got.split(b"\r\n", 1)[0].decode(errors="replace") if got else "(no answer)"
    s.close()
threading.Thread(target=stalled_upload, daemon=True).start()

# --- /healthz probes: a fresh connection every 0.5 s ---
lat, fails = [], []
def probe():
    while time.monotonic() < stop:
        t0 = time.monotonic()
        try:
            s = socket.create_connection((host, port), timeout=10)
            s.settimeout(10)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = b""
            while True:
                b = s.recv(4096)
                if not b:
                    break
                got += b
            s.close()
            if got.startswith(b"HTTP/1.1 200"):
                lat.append(time.monotonic() - t0)
            else:
                fails.append(got[:40] or b"closed")
        except OSError as e:
            fails.append(str(e).encode())
        time.sleep(max(0.0, 0.5 - (time.monotonic() - t0)))
probe_thread = threading.Thread(target=probe, daemon=True)

# --- the attack: keep `want` connections open, each with half a request head ---
sel = selectors.DefaultSelector()
open_now, opened, closed_by_server, connect_errors, max_fds = 0, 0, 0, 0, 0
def open_one():
    global open_now, opened, connect_errors
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect_ex((host, port))
        sel.register(s, selectors.EVENT_WRITE, "connecting")
        open_now += 1
        opened += 1
    except OSError:
        connect_errors += 1
        s.close()

t_start = time.monotonic()
while open_now < want:
    open_one()
probe_thread.start()
last_sample = 0.0
while time.monotonic() < stop:
    for key, ev in sel.select(timeout=0.2):
        s = key.fileobj
        if key.data == "connecting":
            try:
                s.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                sel.modify(s, selectors.EVENT_READ, "waiting")
                continue
            except OSError:
                pass
        else:
            try:
                if s.recv(4096):
                    continue
            except OSError:
                pass
        # Closed by the server (or refused): replace it, to keep the pressure on.
        sel.unregister(s)
        s.close()
        open_now -= 1
        closed_by_server += 1
        open_one()
    if time.monotonic() - last_sample > 0.5:
        max_fds = max(max_fds, server_fds())
        last_sample = time.monotonic()
probe_thread.join()
for key in list(sel.get_map().values()):
    key.fileobj.close()

print(f"slow connections kept open:   {want} (opened {opened} in {secs:.0f} s, "
      f"{closed_by_server} closed by the server, {connect_errors} connect errors)")
if lat:
    q = sorted(lat)
    p95 = q[min(len(q) - 1, int(len(q) * 0.95))]
    print(f"/healthz during the attack:   {len(lat)} ok, {len(fails)} failed; "
          f"latency p50 {statistics.median(q)*1000:.1f} ms, p95 {p95*1000:.1f} ms, "
          f"max {q[-1]*1000:.1f} ms")
else:
    print(f"/healthz during the attack:   0 ok, {len(fails)} failed")
if fails:
    print(f"  failures: {sorted(set(f.decode(errors='replace') for f in fails))[:5]}")
print(f"server descriptors:           at most {max_fds} open (limit {fd_limit()})")
deadline = time.monotonic() + 60
while "after" not in stalled and time.monotonic() < deadline:
    time.sleep(0.2)
if stalled.get("open"):
    print(f"stalled 2 GB upload:          still open after {stalled['after']:.1f} s")
elif "after" in stalled:
    print(f"stalled 2 GB upload:          cut off after {stalled['after']:.1f} s: "
          f"{stalled['status']}{' (' + stalled['error'] + ')' if 'error' in stalled else ''}")
else:
    print("stalled 2 GB upload:          no outcome within 60 s after the attack")
PY
left=$(find "$work/store/tmp" -type f | wc -l)
echo "temporary upload files left:  $left"
kill -0 "$server_pid" 2>/dev/null || die "the server died: $(tail -5 "$work/log")"
grep -c 'Too many open files' "$work/log" | sed 's/^/"Too many open files" in the log: /' || true
