#!/usr/bin/env bash
# Re-fetch the vendored three.js build from the npm registry and check it.
# Usage: inpaint/assets/update.sh [VERSION]   (default: the pinned version below)
# Changing the version: run with the new one, then put the printed sha256 sums into README.md
# and into THREE_SHA256 in inpaint/report.py (the report refuses assets that do not match).
set -euo pipefail
VERSION="${1:-0.181.0}"
HERE="$(cd "$(dirname "$0")" && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
npm pack --silent "three@${VERSION}" >/dev/null
tar xzf "three-${VERSION}.tgz"
cp package/build/three.core.min.js package/build/three.module.min.js "$HERE/"
cp package/LICENSE "$HERE/three.LICENSE"
echo "three@${VERSION}"
sha256sum "three-${VERSION}.tgz"
cd "$HERE" && sha256sum three.core.min.js three.module.min.js three.LICENSE
