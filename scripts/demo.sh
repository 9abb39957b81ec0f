#!/bin/sh
# The demo: a Python process that holds state and keeps counting is
# checkpointed, killed, restored, and carries on where it stopped.
set -eu
STASIS=${STASIS:-$(command -v stasis || echo "$(dirname "$0")/../build/stasis")}
WORK=$(mktemp -d /tmp/stasis-demo-XXXXXX)
LOG="$WORK/counter.log"
PID=""
cleanup() {
  [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "Starting a Python process that builds state and counts once a second"
cat >"$WORK/counter.py" <<'PY'
import hashlib, os, random, time
state = {"started": time.time(), "data": random.randbytes(50 << 20)}
digest = hashlib.sha256(state["data"]).hexdigest()[:16]
print(f"pid {os.getpid()}: holding 50 MiB, sha256 {digest}")
n = 0
while True:
    n += 1
    print(f"pid {os.getpid()}: count {n}, sha256 {hashlib.sha256(state['data']).hexdigest()[:16]}")
    time.sleep(1)
PY
# Only files the engine carries: stdin from /dev/null, output to a file, and
# no fd inherited from whatever started this script.
/usr/bin/python3 -c 'import os, sys; os.closerange(3, 1 << 16); os.execv(sys.argv[1], sys.argv[1:])' \
  /usr/bin/python3 -u "$WORK/counter.py" >"$LOG" 2>&1 </dev/null &
PID=$!
sleep 3.5
cat "$LOG"

step "Checkpointing pid $PID into $WORK/image (the process is killed once the image is complete)"
"$STASIS" dump -t "$PID" -D "$WORK/image"
wait "$PID" 2>/dev/null || true
PID=""
ls -lh "$WORK/image"
"$STASIS" inspect "$WORK/image" | head -n 12

step "The process is gone; restoring it"
NEW=$("$STASIS" restore -D "$WORK/image")
PID=$NEW
echo "restored: host pid $NEW (inside its PID namespace it is still the original pid)"
sleep 3.5

step "It carries on counting from where it stopped, with the same state"
tail -n 5 "$LOG"
kill -9 "$NEW"
PID=""
step "Done"
