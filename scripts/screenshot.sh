#!/usr/bin/env bash
# Make assets/screenshot.png from a real run of the TUI: quorum in tmux with the
# offline mock models, a prompt typed and sent, the answers streamed, the pane
# captured with its colours and rendered to PNG by scripts/ansi2png.py.
#
#   scripts/screenshot.sh [path/to/quorum]     (default: target/release/quorum)
#
# Needs tmux, python3 with Pillow, and the DejaVu Sans Mono font.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/quorum}
[ -x "$bin" ] || { echo "no binary at $bin (cargo build --release)" >&2; exit 2; }
bin=$(realpath "$bin")
tmp=$(mktemp -d)
sock="quorum-shot-$$"
trap 'tmux -L "$sock" kill-server 2>/dev/null || true; rm -rf "$tmp"' EXIT

cols=${COLS:-150}
rows=${ROWS:-42}
prompt=${PROMPT:-"What is 2+2? Answer with one number."}
cat >"$tmp/config.toml" <<'EOF'
compare_targets = ["mock/alpha", "mock/beta", "mock/thinker", "mock/contrarian"]
EOF
env_vars=(HOME="$tmp" QUORUM_DATA_DIR="$tmp/data" QUORUM_CONFIG="$tmp/config.toml"
  QUORUM_MOCK_TPS="${QUORUM_MOCK_TPS:-60}" TERM=xterm-256color COLORTERM=truecolor)
tmux -L "$sock" new-session -d -x "$cols" -y "$rows" "env ${env_vars[*]} $bin; sleep 60"
sleep 1
tmux -L "$sock" send-keys -t 0 -l "$prompt"
tmux -L "$sock" send-keys -t 0 Enter
sleep "${WAIT:-6}"
tmux -L "$sock" capture-pane -e -p -t 0 >"$tmp/capture.txt"
python3 scripts/ansi2png.py "$tmp/capture.txt" assets/screenshot.png --cols "$cols" --rows "$rows"
echo "wrote assets/screenshot.png"
# The consensus view of the same answers: focus a pane, press v.
tmux -L "$sock" send-keys -t 0 Tab
sleep 0.3
tmux -L "$sock" send-keys -t 0 v
sleep 1
tmux -L "$sock" capture-pane -e -p -t 0 >"$tmp/consensus.txt"
python3 scripts/ansi2png.py "$tmp/consensus.txt" assets/consensus.png --cols "$cols" --rows "$rows"
echo "wrote assets/consensus.png"
