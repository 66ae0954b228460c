#!/usr/bin/env bash
# `cargo test` with the arguments of scripts/test.sh, which runs it after its checks:
#   scripts/cargo-test.sh                 every test
#   scripts/cargo-test.sh failover        a word naming a file tests/<word>.rs: that file's tests
#   scripts/cargo-test.sh leader_lease    any other word: the tests whose name contains it
#   scripts/cargo-test.sh --test failover --lib hybrid -- --nocapture   cargo test's own arguments
# A filter that runs no test is an error (cargo test alone exits 0 for it).
set -euo pipefail
cd "$(dirname "$0")/.."

# A word naming a file becomes `--test <word>`; everything else goes on unchanged (a value
# after an option such as --test, and everything after `--`, too).
args=()
previous=""
passthrough=0
for arg in "$@"; do
  if [ "$arg" = "--" ]; then
    passthrough=1
  fi
  if [ "$passthrough" = 0 ] && [[ "$arg" != -* ]] && [[ "$previous" != -* ]] &&
     [ -f "tests/$arg.rs" ]; then
    args+=(--test "$arg")
  else
    args+=("$arg")
  fi
  previous=$arg
done

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked "${args[@]+"${args[@]}"}" 2>&1 | tee "$log" || status=$?
if [ "$status" != 0 ]; then
  exit "$status"
fi
if [ $# -gt 0 ]; then
  ran=$(grep -oE '^test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$log" |
    awk '{ n += $4 + $6 } END { print n + 0 }')
  if [ "$ran" = 0 ]; then
    printf '\033[1m[oddsfeed]\033[0m no test matched %s: a word names a file in tests/ (%s) or part of a test name\n' \
      "$*" "$(cd tests && ls ./*.rs | sed 's|^\./||; s|\.rs$||' | paste -sd ' ')" >&2
    exit 1
  fi
fi
