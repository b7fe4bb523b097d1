#!/usr/bin/env bash
# Instructions per request and per relayed chunk of `quorum serve`, counted by callgrind: the
# same figure for the same binary whatever else the machine is doing, so two builds can be
# compared on a busy 2-core box where the wall-clock benches (serve_burst.sh, serve_setup.sh)
# need many reps to see a 5% change (issue #14). Per binary: one burst of N one-chunk streams
# and one of N/2 hundred-chunk streams, each after an unmeasured burst of the same.
#
#   benches/serve_callgrind.sh /tmp/q-a /tmp/q-b          (binaries built with --profile bench)
# Prints, per binary: instructions per one-chunk request (setup: accept, parse, front door,
# upstream request, one chunk, finish, ledger) and per extra chunk; keeps the callgrind files
# in KEEP (if set) for `callgrind_annotate --inclusive=yes FILE`.
# With the ledger on, the per-request figure moves by several % between runs (how many rows
# share a commit depends on timing); QENV=QUORUM_NO_LEDGER=1 gives a steadier one.
# A binary whose name starts with `floor` is run as benches/floor_relay (LISTEN UPSTREAM_URL),
# the lowest any relay here can cost.
# Settings: N (200), QENV (e.g. QUORUM_NO_LEDGER=1), MOCKDIR as for serve_burst.sh.
set -u
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)"; exit 1; }
N=${N:-200}
TOKENS=1; PORT_BASE=18900
. "$(dirname "$0")/burst_env.sh"
kill $MPID 2>/dev/null; wait $MPID 2>/dev/null
# measure BIN TOKENS REQUESTS: instructions per request
measure() {
  taskset -c 1 "$MOCK" --listen 127.0.0.1:$MP --tokens "$2" --delay-ms 10 >"$OUT/mock.log" 2>&1 & local mp=$!
  wait_up http://127.0.0.1:$MP/mock/health
  local d; d=$(mktemp -d "$OUT/data-XXXX")
  local cg=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/cg.%p")
  local model=openai/gpt-4o-mini
  if [[ $(basename "$1") == floor* ]]; then
    model=gpt-4o-mini
    "${cg[@]}" "$1" 127.0.0.1:$QP http://127.0.0.1:$MP/v1/chat/completions >"$OUT/q.log" 2>&1 & local qp=$!
  else
    env QUORUM_DATA_DIR="$d" QUORUM_CONFIG="$OUT/none.toml" OPENAI_BASE_URL=http://127.0.0.1:$MP/v1 \
      OPENAI_API_KEY=sk-mock ${QENV:-} "${cg[@]}" "$1" serve --listen 127.0.0.1:$QP >"$OUT/q.log" 2>&1 & local qp=$!
  fi
  for _ in $(seq 300); do curl -sf http://127.0.0.1:$QP/healthz >/dev/null && break; sleep 0.2; done
  burst() { "$LOAD" --provider openai --url http://127.0.0.1:$QP/v1/chat/completions \
    --model "$model" --stream --expect-tokens "$2" --timeout-s 600 --mode conc --requests "$1" |
    python3 -c 'import json,sys; o=json.loads(sys.stdin.read()); sys.exit(0 if o["errors"] == 0 else 1)' ||
    echo "errors in a burst" >&2; }
  burst "$3" "$2"
  callgrind_control -i on $qp >/dev/null 2>&1
  burst "$3" "$2"
  callgrind_control -i off $qp >/dev/null 2>&1
  callgrind_control -d $qp >/dev/null 2>&1
  kill $qp; wait $qp 2>/dev/null; kill $mp; wait $mp 2>/dev/null
  local f; f=$(ls -t "$OUT"/cg.$qp.* | head -1)
  [[ -n "${KEEP:-}" ]] && mkdir -p "$KEEP" && cp "$f" "$KEEP/$(basename "$1")-$2chunks.callgrind"
  awk -v n="$3" '/^totals:/ {printf "%d", $2 / n}' "$f"
}
for B in "$@"; do
  one=$(measure "$B" 1 "$N")
  hundred=$(measure "$B" 100 $((N / 2)))
  echo "$(basename "$B"): $one instructions per one-chunk request; $(( (hundred - one) / 99 )) per further chunk (100-chunk request: $hundred)"
done
