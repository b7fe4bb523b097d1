#!/usr/bin/env bash
# `quorum serve` non-streamed throughput by ledger mode, in one run:
#   off (--no-ledger) | sqlite | sqlite + daily budget (reservations) | postgres | postgres + daily budget
# Everything on 127.0.0.1: mockllm (shared/bench/mockllm) upstream, wrk as the client,
# the data dir and the PostgreSQL cluster on the VM's disk (fsync on). Release build.
#
#   cargo build --profile bench --bin quorum   (thin LTO; QUORUM=target/release/quorum)
#   (cd ../shared/bench/mockllm && CARGO_TARGET_DIR=/tmp/mockllm-target cargo build --release)
#   MOCK=/tmp/mockllm-target/release/mockllm benches/serve_ledger.sh
#
# The last column is the serve process's CPU time (user + system) per request served.
# Settings: DUR (wrk duration, 15s), CONC (connections, 64), MODES, TOKENS (mock answer tokens, 20).
set -euo pipefail
cd "$(dirname "$0")/.."
QUORUM=${QUORUM:-target/release/quorum}
MOCK=${MOCK:-/tmp/mockllm-target/release/mockllm}
DUR=${DUR:-15s}
CONC=${CONC:-64}
TOKENS=${TOKENS:-20}
MODES=${MODES:-"off sqlite sqlite-budget postgres postgres-budget"}
WORK=$(mktemp -d /tmp/quorum-bench-XXXXXX)
PIDS=()
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort | tail -1 || true)
PG_DATA=""
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$PG_DATA" ]; then as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The upstream.
"$MOCK" --listen 127.0.0.1:0 --port-file "$WORK/mock.port" --threads 1 --tokens "$TOKENS" >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$WORK/mock.port" ] && break; sleep 0.1; done
UP="http://127.0.0.1:$(cat "$WORK/mock.port")"

# PostgreSQL, when a mode needs it.
PG_URL=""
if [[ "$MODES" == *postgres* ]]; then
  [ -n "$PG_BIN" ] || { echo "no PostgreSQL binaries (apt-get install postgresql)" >&2; exit 1; }
  mkdir -p "$WORK/pg"; chmod 755 "$WORK"
  PW="bench-$RANDOM$RANDOM"; echo "$PW" > "$WORK/pg/pw"
  [ "$(id -u)" = 0 ] && chown -R postgres: "$WORK/pg"
  PG_DATA="$WORK/pg/data"; PG_PORT=$(free_port)
  as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U quorum --pwfile="$WORK/pg/pw" --auth-host=scram-sha-256 \
    --auth-local=trust -E UTF8 --no-instructions >/dev/null
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$WORK/pg/log" -w \
    -o "-p $PG_PORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
  PG_URL="postgres://quorum:$PW@127.0.0.1:$PG_PORT/postgres"
fi

cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Write a short story."}], "max_tokens": 100}'
LUA

printf "| ledger | req/s | p50 | p99 | non-2xx | rows recorded | serve CPU µs/req |\n|---|---|---|---|---|---|---|\n"
for mode in $MODES; do
  dir="$WORK/$mode"; mkdir -p "$dir/data"
  cfg="$dir/config.toml"; : > "$cfg"
  extra=()
  case "$mode" in
    off) extra=(--no-ledger) ;;
    sqlite) ;;
    sqlite-budget) printf '[budget]\ndaily_usd = 1000000.0\n' >> "$cfg" ;;
    postgres) printf '[ledger]\nurl = "${BENCH_PG_URL}"\n' >> "$cfg" ;;
    postgres-budget) printf '[budget]\ndaily_usd = 1000000.0\n[ledger]\nurl = "${BENCH_PG_URL}"\n' >> "$cfg" ;;
  esac
  if [[ "$mode" == postgres* ]]; then
    as_pg "$PG_BIN/psql" -h "$WORK/pg" -p "$PG_PORT" -U quorum -d postgres -qc \
      "DROP TABLE IF EXISTS requests, runs, sessions, prices, votes, eval_runs, eval_cases, budget_spend, quorum_schema" >/dev/null
  fi
  env -i PATH="$PATH" HOME="$dir" QUORUM_DATA_DIR="$dir/data" QUORUM_CONFIG="$cfg" \
    QUORUM_NO_DISCOVERY=1 OPENAI_API_KEY=sk-bench OPENAI_BASE_URL="$UP/v1" BENCH_PG_URL="$PG_URL" \
    "$QUORUM" "${extra[@]}" serve --listen 127.0.0.1:0 --max-per-client 100000 \
    2> "$dir/serve.log" &
  spid=$!; PIDS+=($spid)
  for _ in $(seq 200); do grep -q "listening on http://" "$dir/serve.log" && break; sleep 0.1; done
  url=$(grep -o "listening on http://[0-9.:]*" "$dir/serve.log" | head -1 | sed 's/listening on //')
  # Warm up (opens the ledger, fills pools), then measure.
  wrk -t2 -c"$CONC" -d3s -s "$WORK/post.lua" "$url/v1/chat/completions" >/dev/null
  tck=$(getconf CLK_TCK); c0=$(awk '{print $14+$15}' "/proc/$spid/stat")
  wrk -t2 -c"$CONC" -d"$DUR" --latency -s "$WORK/post.lua" "$url/v1/chat/completions" > "$dir/wrk.txt"
  c1=$(awk '{print $14+$15}' "/proc/$spid/stat")
  reqs=$(awk '/requests in/ {print $1}' "$dir/wrk.txt")
  cpu=$(python3 -c "print(round(($c1-$c0)/$tck/max($reqs,1)*1e6))")
  rps=$(awk '/Requests\/sec/ {print $2}' "$dir/wrk.txt")
  p50=$(awk '$1=="50%" {print $2}' "$dir/wrk.txt")
  p99=$(awk '$1=="99%" {print $2}' "$dir/wrk.txt")
  non2xx=$(awk '/Non-2xx/ {print $4}' "$dir/wrk.txt"); non2xx=${non2xx:-0}
  kill "$spid"; wait "$spid" 2>/dev/null || true
  rows="-"
  case "$mode" in
    sqlite*) rows=$(env -i PATH="$PATH" HOME="$dir" QUORUM_DATA_DIR="$dir/data" QUORUM_CONFIG="$cfg" \
      "$QUORUM" ledger --by provider --json | python3 -c 'import json,sys; print(sum(r["requests"] for r in json.load(sys.stdin)["by_provider"]))') ;;
    postgres*) rows=$(env -i PATH="$PATH" HOME="$dir" QUORUM_DATA_DIR="$dir/data" QUORUM_CONFIG="$cfg" BENCH_PG_URL="$PG_URL" \
      "$QUORUM" ledger --by provider --json | python3 -c 'import json,sys; print(sum(r["requests"] for r in json.load(sys.stdin)["by_provider"]))') ;;
  esac
  printf "| %s | %s | %s | %s | %s | %s | %s |\n" "$mode" "$rps" "$p50" "$p99" "$non2xx" "$rows" "$cpu"
done
