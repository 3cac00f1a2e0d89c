#!/usr/bin/env bash
# Mutation check: plants each bug of tests/mutation/mutations.tsv in the working tree (one at a
# time), rebuilds only the targets the line names, runs the test command that must catch it, and
# restores the file (also on Ctrl-C or error). A bug is "caught" when the command exits non-zero;
# "MISSED" when it passes; "not applied" when the sed expression no longer matches the source (the
# list needs updating); "build failed" when the mutant does not compile. Prints a table and writes
# it to $OUT (default build/mutation_results.tsv). Run from anywhere:
#   tests/mutation/run.sh [BUILD_DIR] [NAME_REGEX]
# The tree must have no uncommitted changes in the files it mutates (checked). The build dir is
# rebuilt from the restored sources at the end.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
B=$(realpath "${1:-build}")
filter=${2:-.}
list=tests/mutation/mutations.tsv
out=${OUT:-$B/mutation_results.tsv}
export B OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader \
  OMPI_MCA_btl_vader_single_copy_mechanism=none KILN_NUM_THREADS=1
backup=$(mktemp)
current=""
restore() {
  if [ -n "$current" ]; then
    cp "$backup" "$current"  # a fresh mtime, so the next build recompiles it
    current=""
  fi
}
trap 'restore; rm -f "$backup"' EXIT
trap 'restore; exit 130' INT TERM
printf "%-30s %-14s %s\n" "planted bug" "result" "test command" | tee "$out"
rebuild=()
# The list is read on fd 3: a test command (mpirun) must not swallow the rest of it from stdin.
while IFS=$'\t' read -r -u 3 name file expr targets cmd; do
  [[ -z "$name" || "$name" == \#* ]] && continue
  [[ "$name" =~ $filter ]] || continue
  result=""
  if [ "$file" != "-" ]; then
    if ! git diff --quiet -- "$file"; then
      echo "run.sh: $file has uncommitted changes; commit or stash them first" >&2
      exit 2
    fi
    cp "$file" "$backup"
    current=$file
    sed -i -E "$expr" "$file"
    if cmp -s "$file" "$backup"; then result="not applied"; fi
  fi
  if [ -z "$result" ]; then
    # shellcheck disable=SC2086
    if ! cmake --build "$B" -j2 --target $targets > "$B/mutation_build.log" 2>&1; then
      result="build failed"
    fi
  fi
  if [ -z "$result" ]; then
    log="$B/mutation_$name.log"
    if timeout 900 bash -c "$cmd" < /dev/null > "$log" 2>&1; then result="MISSED"; else result="caught"; fi
  fi
  restore
  # shellcheck disable=SC2206
  rebuild+=($targets)
  printf "%-30s %-14s %s\n" "$name" "$result" "$cmd" | tee -a "$out"
done 3< "$list"
if [ ${#rebuild[@]} -gt 0 ]; then
  echo "rebuilding ${rebuild[*]} from the restored sources" >&2
  cmake --build "$B" -j2 --target $(printf "%s\n" "${rebuild[@]}" | sort -u) > "$B/mutation_build.log" 2>&1 ||
    echo "run.sh: rebuild from restored sources FAILED (see $B/mutation_build.log)" >&2
fi
