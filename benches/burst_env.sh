# Shared by serve_burst.sh and serve_setup.sh (sourced, not run): the mock upstream on core 1,
# `quorum serve` on core 0, and a scratch folder removed at exit.
# Needs before sourcing: TOKENS (chunks per stream) and PORT_BASE; honours MOCKDIR and PORT.
MOCKDIR=${MOCKDIR:-/tmp/mockllm-target/release}
MOCK=$MOCKDIR/mockllm; LOAD=$MOCKDIR/mockload
MP=${PORT:-$PORT_BASE}; QP=$((MP + 1))
OUT=$(mktemp -d /tmp/quorum-bench-XXXXXX)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
taskset -c 1 "$MOCK" --listen 127.0.0.1:$MP --tokens "$TOKENS" --delay-ms 10 >"$OUT/mock.log" 2>&1 & MPID=$!
trap 'kill $MPID 2>/dev/null; rm -rf "$OUT"' EXIT
wait_up() { for _ in $(seq 100); do curl -sf "$1" >/dev/null && break; sleep 0.1; done; }
wait_up http://127.0.0.1:$MP/mock/health
# serve BIN DATA_DIR: `quorum serve` on core 0 against the mock, its pid in QPID (QENV: extra env).
serve() {
  taskset -c 0 env QUORUM_DATA_DIR="$2" QUORUM_CONFIG="$OUT/none.toml" OPENAI_BASE_URL=http://127.0.0.1:$MP/v1 \
    OPENAI_API_KEY=sk-mock ${QENV:-} "$1" serve --listen 127.0.0.1:$QP >"$OUT/q.log" 2>&1 & QPID=$!
  wait_up http://127.0.0.1:$QP/healthz
}
