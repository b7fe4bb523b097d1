"""Parse Prometheus text from stdin with prometheus_client's own parser (run by tests/serve.rs).

Prints {family: {"type": ..., "samples": [[name, labels, value], ...]}} as JSON.
"""
import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families

out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    out[fam.name] = {
        "type": fam.type,
        "samples": [[s.name, s.labels, None if math.isinf(s.value) else s.value] for s in fam.samples],
    }
print(json.dumps(out))
