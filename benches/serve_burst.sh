#!/usr/bin/env bash
# Bursts of concurrent streams through `quorum serve` on one core (issue #14's 1,000-stream case):
# per rep, direct to the mock once, then for each binary a fresh process: an optional 100-stream
# burst (PRE100=1, as run_gateways.sh does before its 1,000), a first burst of N, a warm burst of N.
# Prints TTFT and wall per burst, the gateway's CPU ticks (1/100 s), the frames it held
# (--hold-under-load) and its peak RSS, then, from
# serve's access log, where the TTFT went (benches/access_split.py: before the handler or after).
#
#   cargo build --profile bench --bin quorum; cp target/release/quorum /tmp/q-a   (and a /tmp/q-b to compare)
#   (cd ../shared/bench/mockllm && CARGO_TARGET_DIR=/tmp/mockllm-target cargo build --release)
#   benches/serve_burst.sh 3 /tmp/q-a /tmp/q-b
# A binary whose name starts with `floor` is run as benches/floor_relay (LISTEN UPSTREAM_URL).
# Settings: N (1000), PRE100, MOCKDIR (/tmp/mockllm-target/release), QENV (extra env for serve).
set -u
REPS=$1; shift
N=${N:-1000}
TOKENS=100; PORT_BASE=18500
. "$(dirname "$0")/burst_env.sh"
load() { taskset -c 1 "$LOAD" --provider openai --url "$1" --model "$2" --stream --expect-tokens 100 --timeout-s 600 --mode conc --requests "$3"; }
summ() { python3 -c 'import json,sys; o=json.loads(sys.stdin.read()); print("ok=%d err=%d wall=%.3f ttft_med=%.1f ttft_p95=%.1f lat_med=%.1f" % (o["ok"],o["errors"],o["wall_s"],o["ttft_ms"]["median"],o["ttft_ms"]["p95"],o["lat_ms"]["median"]))'; }
# user ticks, system ticks and minor page faults, as "U S F" (the kernel's share is mostly
# loopback TCP, alike for any relay; faults are fresh memory touched, mostly in a first burst)
ticks() { awk '{print $14, $15, $10}' "/proc/$1/stat"; }
# frames serve held so far (--hold-under-load; 0 for a relay without /metrics)
held() { curl -s "http://127.0.0.1:$QP/metrics" 2>/dev/null | awk '/^quorum_stream_frames_held_total/ {n = $2} END {print n + 0}'; }
spent() { set -- $1 $2; echo "cpu_ticks=$(($4 + $5 - $1 - $2)) (user $(($4 - $1)), sys $(($5 - $2))) faults=$(($6 - $3))"; }
for r in $(seq "$REPS"); do
  echo "rep $r direct: $(load http://127.0.0.1:$MP/v1/chat/completions gpt-4o-mini "$N" | summ)"
  for B in "$@"; do
    D=$OUT/data-$r-$(basename "$B"); mkdir -p "$D"
    if [[ $(basename "$B") == floor* ]]; then
      taskset -c 0 "$B" 127.0.0.1:$QP http://127.0.0.1:$MP/v1/chat/completions >"$OUT/q.log" 2>&1 & QPID=$!
      wait_up http://127.0.0.1:$QP/healthz
    else
      serve "$B" "$D"
    fi
    [[ -n "${PRE100:-}" ]] && load http://127.0.0.1:$QP/v1/chat/completions openai/gpt-4o-mini 100 >/dev/null
    h0=$(held); c0=$(ticks $QPID); a=$(load http://127.0.0.1:$QP/v1/chat/completions openai/gpt-4o-mini "$N" | summ)
    h1=$(held); c1=$(ticks $QPID); b=$(load http://127.0.0.1:$QP/v1/chat/completions openai/gpt-4o-mini "$N" | summ)
    h2=$(held); c2=$(ticks $QPID); rss=$(awk '/VmHWM/{print $2/1024}' "/proc/$QPID/status")
    echo "rep $r $(basename "$B") first: $a $(spent "$c0" "$c1") held=$((h1 - h0))"
    echo "rep $r $(basename "$B") warm:  $b $(spent "$c1" "$c2") held=$((h2 - h1)) peak_rss_mb=$rss"
    kill $QPID; wait $QPID 2>/dev/null
    [[ $(basename "$B") == floor* ]] || python3 "$(dirname "$0")/access_split.py" "$OUT/q.log"
  done
done
