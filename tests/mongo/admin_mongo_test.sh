#!/usr/bin/env bash
# trollproxy-admin against MongoDB (run by run.sh, which sets TROLLPROXY_TEST_LEDGER_URI):
# user add, key add, credit, balance, usage, key revoke, and errors change nothing.
# On CongoDB (TROLLPROXY_TEST_OBJECTID_IDS=1) user names are "oid:<24 hex>", the
# backend's spelling of an ObjectId `_id`, since that server cannot store string ids.
set -u
ADMIN=$1
L="--ledger $TROLLPROXY_TEST_LEDGER_URI"
hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
if [ "${TROLLPROXY_TEST_OBJECTID_IDS:-0}" = 1 ]; then
  alice="oid:$(hex 12)"; bob="oid:$(hex 12)"
else
  alice="alice-$(hex 5)"; bob="bob-$(hex 5)"
fi
fails=0
check() { # check NAME EXPECTED_EXIT COMMAND... ; output in $out
  local name=$1 want=$2; shift 2
  out=$("$@" 2>&1); local rc=$?
  if [ "$rc" -ne "$want" ]; then echo "FAIL $name: exit $rc, wanted $want: $out"; fails=$((fails+1)); else echo "ok   $name"; fi
}
expect() { # expect NAME PATTERN
  if ! grep -qE -- "$2" <<<"$out"; then echo "FAIL $1: output lacks $2: $out"; fails=$((fails+1)); fi
}
check "user add" 0 "$ADMIN" $L user add "$alice"
check "user add twice" 1 "$ADMIN" $L user add "$alice"; expect "dup message" "already exists"
check "key add" 0 "$ADMIN" $L key add "$alice"; key=$(grep -E "^sk-trollllm-" <<<"$out") # stderr may hold a mongoc warning
expect "key format" '^sk-trollllm-[0-9a-f]{64}$'
check "key add unknown" 1 "$ADMIN" $L key add "$bob"; expect "unknown user" "no user"
check "credit" 0 "$ADMIN" $L credit "$alice" creditsNew 1.5
check "credit refCredits" 0 "$ADMIN" $L credit "$alice" refCredits 0.000000001
check "credit credits" 0 "$ADMIN" $L credit "$alice" credits 12.345678901
check "credit negative" 1 "$ADMIN" $L credit "$alice" credits -1
check "credit unknown pool" 1 "$ADMIN" $L credit "$alice" coins 1; expect "pool message" "unknown pool"
check "credit unknown user" 1 "$ADMIN" $L credit "$bob" credits 1
check "balance" 0 "$ADMIN" $L balance "$alice"
expect "creditsNew" "^creditsNew 1.500000000$"
expect "refCredits" "^refCredits 0.000000001$"
expect "credits" "^credits 12.345678901$"
expect "creditsUsed" "^creditsUsed 0.000000000$"
expect "nothing held" "^heldCreditsNew 0.000000000$"
holds="hold$(hex 4)-"
worker="${TROLLPROXY_BUILD_ROOT:-.}/tests/ledger/ledger_worker"
check "holds left by a dead process" 0 "$worker" hold "$TROLLPROXY_TEST_LEDGER_URI" "$alice" 2 "$holds"
check "balance with holds" 0 "$ADMIN" $L balance "$alice"
expect "held" "^heldCreditsNew 0.020000000$"
expect "held elsewhere" "^heldCredits 0.000000000$"
expect "held out of creditsNew" "^creditsNew 1.480000000$"
check "release the dead process's holds" 0 "$worker" release-holds "$TROLLPROXY_TEST_LEDGER_URI" - 0 "$holds"
expect "both" "^released 2$"
check "balance after release" 0 "$ADMIN" $L balance "$alice"
expect "given back" "^creditsNew 1.500000000$"
expect "none held" "^heldCreditsNew 0.000000000$"
check "balance unknown" 1 "$ADMIN" $L balance "$bob"
check "usage empty" 0 "$ADMIN" $L usage "$alice" --last 5
# (mongoc warns on stderr when a stale /dev/shm/mongoc-PID has this process's pid)
[ -z "$(grep -v -e '^$' -e 'mongoc: Falling back to malloc for counters' <<<"$out")" ] ||
  expect "usage header only" "^[^0-9]"
# Two charges through the library (the admin tool cannot charge), then usage lists them.
prefix="adm$(hex 4)-"
check "charge twice" 0 "$worker" settle "$TROLLPROXY_TEST_LEDGER_URI" "$alice" 2 "$prefix"
check "usage" 0 "$ADMIN" $L usage "$alice" --last 5
expect "usage newest" "${prefix}1"
expect "usage older" "${prefix}0"
expect "usage cost" "0\.010000000"
check "balance after charges" 0 "$ADMIN" $L balance "$alice"
expect "charged" "^creditsNew 1.480000000$"
expect "used" "^creditsNewUsed 0.020000000$"
check "key revoke" 0 "$ADMIN" $L key revoke "$key"
check "key revoke unknown" 1 "$ADMIN" $L key revoke "sk-trollllm-$(hex 32)"
check "balance after bad input" 0 "$ADMIN" $L balance "$alice"
expect "unchanged" "^creditsNew 1.480000000$"
check "down server" 1 timeout 20 "$ADMIN" --ledger "mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=500" balance "$alice"
echo "$fails failures"
[ "$fails" -eq 0 ]
