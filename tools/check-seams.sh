#!/usr/bin/env bash
# The dependency picture of ARCHITECTURE.md, checked: the frontend reaches no
# executor (sandbox, snapshotter, worker, solver), no async runtime and no TLS; no
# crate has a cycle between its modules.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(cargo tree --locked -e normal -p rbuild-frontend --prefix none)
bad=$(grep -E '^(rbuild-(sandbox|snapshotter|worker|solver|image|engine)|tokio|rustls|native-tls|openssl|ring) ' <<<"$tree" | sort -u || true)
if [ -n "$bad" ]; then
  echo "rbuild-frontend depends on what it must not:"; echo "$bad"; exit 1
fi
echo "rbuild-frontend: $(wc -l <<<"$(sort -u <<<"$tree")") crates, none of sandbox/snapshotter/worker/solver/image/engine/tokio/TLS"
python3 tools/module-cycles.py
