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
# The registry client knows the protocol and the OCI types only: of rbuild's
# crates it reaches rbuild-oci alone (not the store, the snapshotter, the engine).
reg=$(cargo tree --locked -e normal -p rbuild-registry --prefix none | grep -E '^rbuild-' | grep -vE '^rbuild-(registry|oci) ' | sort -u || true)
if [ -n "$reg" ]; then
  echo "rbuild-registry depends on what it must not:"; echo "$reg"; exit 1
fi
echo "rbuild-registry: of rbuild's crates only rbuild-oci"
python3 tools/module-cycles.py
