#!/usr/bin/env bash
# Fingerprinting benchmark: MemoBuild's context fingerprint (cold: no stat cache; warm: stat
# cache from the previous run) against b3sum over the same generated tree.
#   bash hack/bench/fingerprint.sh [FILES] [TOTAL_MB]      (default 100000 files, 1024 MB)
set -eu -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
files=${1:-100000}
total_mb=${2:-1024}
command -v b3sum >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq b3sum >/dev/null

work=$(mktemp -d /tmp/memobuild-bench-fp.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "generating $files files, $total_mb MB in $work/tree"
python3 - "$work/tree" "$files" "$total_mb" <<'PY'
import os, sys, random
root, n, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) * 1024 * 1024
random.seed(1)
size = max(1, total // n)
block = os.urandom(1 << 20)
for i in range(n):
    d = os.path.join(root, f"d{i % 100:02d}", f"s{(i // 100) % 100:02d}")
    os.makedirs(d, exist_ok=True)
    off = random.randrange(0, len(block) - size) if size < len(block) else 0
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        f.write(block[off:off + size] if size < len(block) else os.urandom(size))
PY

cargo build --release --locked -q -p memobuild-worker --example fingerprint
fp=target/release/examples/fingerprint
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

drop_caches
t0=$(date +%s.%N)
(cd "$work/tree" && find . -type f -print0 | xargs -0 -n 2000 -P "$(nproc)" b3sum >/dev/null)
t1=$(date +%s.%N)
b3=$(echo "$t1 - $t0" | bc)

drop_caches
cold=$("$fp" "$work/tree" "$work/stat")
sleep 2.1   # let every file age past the racy window, as real contexts are
rm -f "$work/stat"
"$fp" "$work/tree" "$work/stat" >/dev/null   # records the stat cache
warm=$("$fp" "$work/tree" "$work/stat")

echo "b3sum (cold page cache, $(nproc) procs): ${b3}s"
echo "memobuild cold (no stat cache):      $cold"
echo "memobuild warm (stat cache):         $warm"
