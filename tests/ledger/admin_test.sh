#!/usr/bin/env bash
# trollproxy-admin end to end: every subcommand, and bad input changes nothing.
set -u
ADMIN=$1
SRC=$2
dir=$(mktemp -d)
L="--ledger sqlite:$dir/l.db"
fails=0
check() { # check NAME EXPECTED_EXIT COMMAND... ; output in $out
  local name=$1 want=$2; shift 2
  out=$("$@" 2>&1); local rc=$?
  if [ "$rc" -ne "$want" ]; then echo "FAIL $name: exit $rc, wanted $want: $out"; fails=$((fails+1)); else echo "ok   $name"; fi
}
expect() { # expect NAME PATTERN
  if ! grep -qE -- "$2" <<<"$out"; then echo "FAIL $1: output lacks $2: $out"; fails=$((fails+1)); fi
}
check "user add" 0 "$ADMIN" $L user add alice
check "user add twice" 1 "$ADMIN" $L user add alice; expect "dup message" "already exists"
check "key add" 0 "$ADMIN" $L key add alice; key=$out
expect "key format" '^sk-trollllm-[0-9a-f]{64}$'
check "key add unknown" 1 "$ADMIN" $L key add bob; expect "unknown user" "no user bob"
check "credit" 0 "$ADMIN" $L credit alice creditsNew 1.5
check "credit refCredits" 0 "$ADMIN" $L credit alice refCredits 0.000000001
check "credit negative" 1 "$ADMIN" $L credit alice credits -1
check "credit non-numeric" 1 "$ADMIN" $L credit alice credits abc
check "credit too precise" 1 "$ADMIN" $L credit alice credits 0.0000000001
check "credit unknown pool" 1 "$ADMIN" $L credit alice coins 1; expect "pool message" "unknown pool"
check "credit unknown user" 1 "$ADMIN" $L credit bob credits 1
check "balance" 0 "$ADMIN" $L balance alice
expect "creditsNew" "^creditsNew 1.500000000$"
expect "refCredits" "^refCredits 0.000000001$"
expect "credits untouched" "^credits 0.000000000$"
check "balance unknown" 1 "$ADMIN" $L balance bob
check "usage empty" 0 "$ADMIN" $L usage alice --last 5
check "usage bad --last" 1 "$ADMIN" $L usage alice --last x
check "key revoke" 0 "$ADMIN" $L key revoke "$key"
check "key revoke unknown" 1 "$ADMIN" $L key revoke sk-trollllm-nope
check "journal replay (none)" 0 "$ADMIN" $L journal replay --journal "$dir/none.journal"
check "quote" 0 "$ADMIN" quote --config "$SRC/configs/goproxy/config-ohmygpt-prod.json" --model claude-sonnet-4-5-20250929 \
  --input 1000 --output 500 --cache-write 2000 --cache-read 10000
expect "quote value" "^0.023100000$"
# 1-hour cache writes at 2 x input (3 USD/Mtok) = 6 USD/Mtok, x 1.1; 5-minute writes at 3.75.
check "quote 1h writes" 0 "$ADMIN" quote --config "$SRC/configs/goproxy/config-ohmygpt-prod.json" --model claude-sonnet-4-5-20250929 \
  --input 0 --output 0 --cache-write 1000000 --cache-write-1h 1000000
expect "quote 1h value" "^10.725000000$"
check "quote unknown model" 1 "$ADMIN" quote --config "$SRC/configs/goproxy/config-ohmygpt-prod.json" --model nope --input 1 --output 1
check "quote bad count" 1 "$ADMIN" quote --config "$SRC/configs/goproxy/config-ohmygpt-prod.json" --model claude-sonnet-4-5 --input -1 --output 1
check "no command" 1 "$ADMIN" $L
check "unknown command" 1 "$ADMIN" $L frobnicate
check "bad ledger uri" 1 "$ADMIN" --ledger "postgres://x" balance alice
check "balance after bad input" 0 "$ADMIN" $L balance alice
expect "unchanged" "^creditsNew 1.500000000$"
rm -rf "$dir"
echo "$fails failures"
[ "$fails" -eq 0 ]
