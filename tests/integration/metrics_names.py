#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# metrics_names.py DASHBOARD.json PAGE... - for test_metrics_endpoints.sh: prints every metric
# name the dashboard's queries use that none of the Prometheus text pages exports, one a line,
# and exits 1 if there is any (0 when all are exported; 2 on bad input). A query's metric names
# are its identifiers that start with kvstash_ or process_ (histogram names are used with their
# _bucket/_sum/_count series, which is what the pages' sample lines carry).
import json
import re
import sys

IDENT = re.compile(r"\b((?:kvstash|process)_[a-zA-Z0-9_:]*)")


def exprs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                yield v
            else:
                yield from exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from exprs(v)


def main():
    if len(sys.argv) < 3:
        print("usage: metrics_names.py DASHBOARD.json PAGE...", file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        dash = json.load(f)
    used = set()
    for e in exprs(dash):
        used.update(IDENT.findall(e))
    if not used:
        print("the dashboard uses no kvstash_ or process_ metric", file=sys.stderr)
        return 2
    exported = set()
    for page in sys.argv[2:]:
        with open(page) as f:
            for line in f:
                if line.strip() and not line.startswith("#"):
                    exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    missing = sorted(used - exported)
    for m in missing:
        print(m)
    print(f"{len(used)} metric names in the dashboard, {len(used) - len(missing)} exported",
          file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
