#!/usr/bin/env bash
# The demo on a fresh machine: venv, install, start the bundled Deepgram emulator on a
# free loopback port with a throwaway key, transcribe manifests/example, show the status
# and one transcript, stop the emulator. No real Deepgram key needed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIPLOG="$(mktemp)"  # setuptools' editable-install notice is noise; shown if pip fails
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e . 2>"$PIPLOG" \
    || { cat "$PIPLOG" >&2; rm -f "$PIPLOG"; exit 1; }  # as scripts/test.sh: one .venv
rm -f "$PIPLOG"

OUT="${DEMO_OUT:-demo-out}"
rm -rf "$OUT"
LOG="$(mktemp)"
KEY="demo-$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(8))')"

.venv/bin/dgbatch emulator --port 0 --key "$KEY" >"$LOG" 2>&1 &
EMU=$!
trap 'kill $EMU 2>/dev/null || true; wait $EMU 2>/dev/null || true; rm -f "$LOG"' EXIT

for _ in $(seq 1 100); do
    grep -q "listening on" "$LOG" && break
    kill -0 "$EMU" 2>/dev/null || break  # it exited: no use waiting
    sleep 0.1
done
API_URL="$(grep -o 'http://[0-9.:]*' "$LOG" | head -1 || true)"  # none: said below
[ -n "$API_URL" ] || { echo "emulator did not start:" >&2; cat "$LOG" >&2; exit 1; }
echo "emulator: $API_URL"

export DEEPGRAM_API_KEY="$KEY"
echo
echo "\$ dgbatch run manifests/example/audio manifests/example/recordings.jsonl --out $OUT"
.venv/bin/dgbatch run manifests/example/audio manifests/example/recordings.jsonl \
    --out "$OUT" --api-url "$API_URL" --progress log
echo
echo "\$ dgbatch status --out $OUT"
.venv/bin/dgbatch status --out "$OUT"
echo
FIRST_TXT="$(find "$OUT" -name '*.txt' | sort | head -1)"
echo "\$ cat $FIRST_TXT"
cat "$FIRST_TXT"
echo
echo "\$ dgbatch run ... again: nothing is sent twice"
.venv/bin/dgbatch run manifests/example/audio manifests/example/recordings.jsonl \
    --out "$OUT" --api-url "$API_URL" --progress none
