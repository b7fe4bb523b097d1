#!/usr/bin/env bash
# benches/peers.sh - put the engine and `quorum ask` into the shared peer
# tables (../shared/bench), measured in the same run as the peers.
#
#   benches/peers.sh              # run_peers.sh with the engine as an extra client
#   benches/peers.sh oneshot      # run_aichat.sh with `quorum ask` as an extra one-shot row
#   QUICK=1 benches/peers.sh      # small sizes, to check the plumbing
#
# ../shared/bench is read-only here, so it is copied to $WORK (default
# /tmp/quorum-bench) where run_peers.sh can build mockllm and its Python venv.
# Other variables (REQ, CONC, REPEATS, SKIP, ...) pass through to the scripts.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SRC=${BENCH:-$ROOT/../shared/bench}
WORK=${WORK:-/tmp/quorum-bench}
if [[ ! -d $WORK/bench ]]; then
  mkdir -p "$WORK"
  cp -r "$SRC" "$WORK/bench"
  chmod -R u+w "$WORK/bench"
fi
cargo build --release --locked --example load --bin quorum --manifest-path "$ROOT/Cargo.toml"
LOAD=$ROOT/target/release/examples/load
QUORUM=$ROOT/target/release/quorum

case "${1:-peers}" in
  peers)
    EXTRA_CLIENTS="quorum=$LOAD" "$WORK/bench/run_peers.sh"
    ;;
  oneshot)
    # run_aichat.sh needs an aichat binary; without one ($AICHAT unset) a stub
    # stands in and its rows are meaningless (drop them from the table).
    if [[ -z ${AICHAT:-} ]]; then
      AICHAT=$WORK/no-aichat
      printf '#!/bin/sh\nexit 0\n' >"$AICHAT"
      chmod +x "$AICHAT"
    fi
    PORT=${PORT:-18120}
    DATA=$(mktemp -d)
    export AICHAT PORT
    export OPENAI_BASE_URL=http://127.0.0.1:$PORT/v1 OPENAI_API_KEY=sk-mock
    export QUORUM_DATA_DIR=$DATA QUORUM_CONFIG=$DATA/none.toml
    EXTRA_ONESHOT="quorum ask (stream, ledger on)=$QUORUM ask -m openai/gpt-4o-mini;quorum ask --no-stream=$QUORUM ask --no-stream -m openai/gpt-4o-mini" \
      "$WORK/bench/run_aichat.sh"
    ;;
  *)
    echo "usage: benches/peers.sh [peers|oneshot]" >&2
    exit 2
    ;;
esac
