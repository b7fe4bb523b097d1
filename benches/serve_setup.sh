#!/usr/bin/env bash
# CPU per request of `quorum serve` with one-chunk streams, i.e. almost pure setup: accept, parse,
# the front door, the upstream request, one chunk, the finish (issue #14: at 1,000 streams on one
# core, each µs here costs about 1.5 ms of median TTFT). Per rep and binary: a fresh process, one
# unmeasured burst, then K bursts of N concurrent streams; CPU from /proc ticks over all K×N.
#
#   benches/serve_setup.sh 3 /tmp/q-a /tmp/q-b       (binaries built with --profile bench)
# Settings: K (10), N (1000), MOCKDIR (/tmp/mockllm-target/release), QENV (extra env for serve,
# e.g. QUORUM_NO_LEDGER=1 to leave the ledger's SQLite work out).
set -u
REPS=$1; shift
K=${K:-10}; N=${N:-1000}
TOKENS=1; PORT_BASE=18700
. "$(dirname "$0")/burst_env.sh"
burst() { taskset -c 1 "$LOAD" --provider openai --url http://127.0.0.1:$QP/v1/chat/completions \
  --model openai/gpt-4o-mini --stream --expect-tokens 1 --timeout-s 600 --mode conc --requests "$N" |
  python3 -c 'import json,sys; o=json.loads(sys.stdin.read()); sys.exit(0 if o["errors"] == 0 else 1)'; }
for r in $(seq "$REPS"); do
  for B in "$@"; do
    D=$OUT/data-$r-$(basename "$B"); mkdir -p "$D"
    serve "$B" "$D"
    burst || echo "errors in the unmeasured burst"
    sleep 1
    read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$QPID/stat")
    for _ in $(seq "$K"); do burst || echo "errors in a burst"; sleep 0.5; done
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$QPID/stat")
    # ticks are 1/100 s: µs per request = ticks * 10^4 / (K*N)
    python3 -c "import sys; u,s,n=$((u1 - u0)),$((s1 - s0)),$K*$N; print('rep $r $(basename "$B"): %.1f us/request (user %.1f, sys %.1f) over %d requests' % ((u+s)*1e4/n, u*1e4/n, s*1e4/n, n))"
    kill $QPID; wait $QPID 2>/dev/null
  done
done
