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
check "key add" 0 "$ADMIN" $L key add alice; key=$(grep -E "^sk-trollllm-" <<<"$out") # stderr may hold a mongoc warning
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
expect "nothing held" "^heldCreditsNew 0.000000000$"
worker="${TROLLPROXY_BUILD_ROOT:-.}/tests/ledger/ledger_worker"
check "holds left by a dead process" 0 "$worker" hold "sqlite:$dir/l.db" alice 2 dead-
check "balance with holds" 0 "$ADMIN" $L balance alice
expect "held" "^heldCreditsNew 0.020000000$"
expect "held elsewhere" "^heldCredits 0.000000000$"
expect "held out of creditsNew" "^creditsNew 1.480000000$"
check "release the dead process's holds" 0 "$worker" release-holds "sqlite:$dir/l.db" - 0 dead-
expect "both" "^released 2$"
check "balance after release" 0 "$ADMIN" $L balance alice
expect "given back" "^creditsNew 1.500000000$"
expect "none held" "^heldCreditsNew 0.000000000$"
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

# journal replay finds the server's journal: --journal PATH, else the one --config names
# (journal_path, else trollproxy-PORT.journal), else every trollproxy-*.journal here.
work=$dir/work; mkdir -p "$work/.run"
inwork() { (cd "$work" && "$@"); }
charge() { # charge FILE ID: appends a journalled charge of 0.001 from carol's creditsNew
  printf '{"requestId":"%s","userId":"carol","keyId":"k","model":"m","pool":"creditsNew","input":1,"cacheWrite":0,"cacheRead":0,"output":1,"estimated":false,"costNanos":1000000,"statusCode":200,"latencyMs":1,"success":true,"createdAtMs":1700000000000}\n' "$2" >>"$1"
}
PROD=$SRC/configs/goproxy/config-ohmygpt-prod.json # port 8005, no journal_path
check "carol" 0 "$ADMIN" $L user add carol
check "carol credit" 0 "$ADMIN" $L credit carol creditsNew 1
check "replay: no journal here" 0 inwork "$ADMIN" $L journal replay; expect "says none" "no trollproxy-\*\.journal"
charge "$work/trollproxy-8005.journal" j1; charge "$work/trollproxy-9000.journal" j2
check "replay: every server journal here" 0 inwork "$ADMIN" $L journal replay
expect "names 8005" "^trollproxy-8005\.journal: applied 1,"
expect "names 9000" "^trollproxy-9000\.journal: applied 1,"
charge "$work/trollproxy-8005.journal" j3; charge "$work/trollproxy-9000.journal" j4
check "replay --config: that port's journal" 0 inwork "$ADMIN" $L --config "$PROD" journal replay
expect "names 8005 only" "^trollproxy-8005\.journal: applied 1,"
[ -e "$work/trollproxy-9000.journal" ] || { echo "FAIL --config replayed another port's journal"; fails=$((fails+1)); }
charge "$work/.run/trollproxy-8080.journal" j5
check "replay --config: journal_path" 0 inwork "$ADMIN" $L --config "$SRC/configs/example.json" journal replay
expect "names journal_path" "^\.run/trollproxy-8080\.journal: applied 1,"
check "replay --journal wins over --config" 0 inwork "$ADMIN" $L --config "$PROD" --journal "$work/trollproxy-9000.journal" journal replay
expect "names --journal" "trollproxy-9000\.journal: applied 1,"
check "replay --config unreadable" 1 "$ADMIN" $L --config "$dir/none.json" journal replay
check "carol charged once each" 0 "$ADMIN" $L balance carol
expect "five charges" "^creditsNew 0.995000000$"
rm -rf "$dir"
echo "$fails failures"
[ "$fails" -eq 0 ]
