#!/usr/bin/env bash
# Runs one libFuzzer binary for a while from a seed corpus and prints a one-line verdict.
#   libfuzzer.sh FUZZER SEED_DIR WORK_DIR SECONDS [libFuzzer flags...]
# New inputs go to WORK_DIR/corpus (the committed seeds are never written); a crash is
# saved as WORK_DIR/crash-* (or leak-*, timeout-*, oom-*). Exit 0 only when nothing failed.
set -uo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,5p' "$0" >&2
  exit 2
fi
fuzzer=$1 seeds=$2 work=$3 secs=$4
shift 4
name=$(basename "$fuzzer")
mkdir -p "$work/corpus"
log="$work/last-run.log"
# The sanitizers abort (core-dump-free) so that libFuzzer saves the input.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:disable_coredump=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
SECONDS=0
"$fuzzer" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -error_exitcode=1 -timeout_exitcode=1 \
  -print_final_stats=1 -artifact_prefix="$work/" "$@" "$work/corpus" "$seeds" >"$log" 2>&1
rc=$?
elapsed=$SECONDS

stat() { sed -n "s/^stat::$1: *\([0-9]*\).*/\1/p" "$log" | tail -1; }
last=$(grep -E '^#[0-9]+' "$log" | tail -1)
cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
runs=$(stat number_of_executed_units)
eps=$(stat average_exec_per_sec)
summary="${runs:-?} runs in ${elapsed} s (${eps:-?} exec/s), coverage: ${cov:-?} edges, ${ft:-?} features, corpus ${corp:-?} inputs"
if [ "$rc" -eq 0 ] && ! grep -qE '^==[0-9]+==ERROR|runtime error:|invariant violated' "$log"; then
  echo "fuzz $name: PASS: $summary"
  exit 0
fi
echo "fuzz $name: FAIL (exit $rc): $summary"
grep -E 'ERROR:|runtime error:|invariant violated|terminate called|what\(\):|SUMMARY:' "$log" | head -6 | sed 's/^/  /'
artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
[ -n "$artifact" ] && echo "  input saved to $artifact; reproduce: $fuzzer $artifact"
echo "  full log: $log"
exit 1
