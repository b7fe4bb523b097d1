#!/usr/bin/env python3
"""Split a burst's TTFT at the handler, from `quorum serve`'s access log (for serve_burst.sh).

Each access line has its end time, latency_ms and ttft_ms (both counted from when the handler
took the request). Per burst of chat requests (gaps > 0.5 s split bursts) this prints:
  handled_span  ms from the first to the last request the handler took (how far setup lagged);
  gw_ttft       the gateway's own TTFT, handler to first token (p10/median/p90), which includes
                the upstream's own time to first token.
A client TTFT well above gw_ttft is time spent before the handler (accept, queueing, reading).
"""
import datetime
import re
import sys

rows = []
for line in open(sys.argv[1], errors="replace"):
    if "route=/v1/chat/completions" not in line:
        continue
    end = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
    lat = re.search(r"latency_ms=([\d.]+)", line)
    ttft = re.search(r"ttft_ms=([\d.]+)", line)
    if lat:
        rows.append((end - float(lat.group(1)) / 1000, float(ttft.group(1)) if ttft else None))
rows.sort()
bursts = []
for r in rows:
    if not bursts or r[0] - bursts[-1][-1][0] > 0.5:
        bursts.append([])
    bursts[-1].append(r)
for b in bursts:
    t = sorted(x[1] for x in b if x[1] is not None)
    q = lambda f: t[min(len(t) - 1, int(len(t) * f))] if t else float("nan")
    print(
        "  %d requests: handled_span=%.1f ms gw_ttft p10/med/p90=%.1f/%.1f/%.1f ms"
        % (len(b), (b[-1][0] - b[0][0]) * 1000, q(0.1), q(0.5), q(0.9))
    )
