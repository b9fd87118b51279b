#!/usr/bin/env bash
# Put mermaid's browser bundle where the guide loads it from, so diagrams
# render with no internet (mkdocs-material fetches mermaid from a CDN unless
# a global `mermaid` already exists; mkdocs.yml loads this file first).
#
#   scripts/docs/fetch-mermaid.sh        # quick no-op when the right version is there
#
# The file is fetched at build time with `npm pack` (the npm registry) and is
# not committed (docs/assets/vendor/ is in .gitignore). The version and the
# registry's integrity hash are pinned here: a different tarball is refused.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VERSION=11.17.2
INTEGRITY=sha512-V6K3C8EBdEsPFZXSKMJe6ppQOENxuHARr9GvHX4hh47lAbhMRD9qf4oEK7LoaRQxULMa80/qt5gHO73aCleBBg==
DEST_DIR=$ROOT/docs/assets/vendor
DEST=$DEST_DIR/mermaid.min.js
STAMP=$DEST_DIR/mermaid.version

if [ -s "$DEST" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$VERSION" ]; then
    exit 0
fi
command -v npm >/dev/null || {
    echo "[docs] npm is needed once to fetch mermaid $VERSION for the guide's diagrams" \
         "(Debian: apt-get install npm)." >&2
    exit 1
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "[docs] fetching mermaid@$VERSION with npm pack (once)" >&2
(cd "$tmp" && npm pack --silent --json "mermaid@$VERSION" > pack.json)
got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["integrity"])' "$tmp/pack.json")
if [ "$got" != "$INTEGRITY" ]; then
    echo "[docs] mermaid@$VERSION: integrity $got, expected $INTEGRITY; not using it." >&2
    exit 1
fi
tar -xzf "$tmp/mermaid-$VERSION.tgz" -C "$tmp" package/dist/mermaid.min.js package/LICENSE
mkdir -p "$DEST_DIR"
cp "$tmp/package/dist/mermaid.min.js" "$DEST.part"
cp "$tmp/package/LICENSE" "$DEST_DIR/mermaid.LICENSE"
mv "$DEST.part" "$DEST"          # never leave a half-written file behind
echo "$VERSION" > "$STAMP"
echo "[docs] $DEST ($(du -k "$DEST" | cut -f1) KB)" >&2
