"""Parse the /metrics exposition from stdin with prometheus_client's own OpenMetrics parser
(run by tests/serve.rs; serve answers `application/openmetrics-text`, which Prometheus asks for).
The parser is strict: it wants `# EOF`, `_total` counters, cumulative `le` buckets with +Inf,
and escaped label values.

Prints {family: {"type": ..., "samples": [[name, labels, value], ...]}} as JSON.
"""
import json
import math
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    out[fam.name] = {
        "type": fam.type,
        "samples": [[s.name, s.labels, None if math.isinf(s.value) else s.value] for s in fam.samples],
    }
print(json.dumps(out))
