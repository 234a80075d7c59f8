# shellcheck shell=bash
# The case machinery shared by netns-tests/run.sh and netns-tests/p2p.sh: counters,
# the summary line ("N passed, M failed") that scripts/test.sh reads, and run_case
# with fail/note/logs. Source it after lib.sh; the caller sets ONLY (a regex of case
# names to run, empty for all).

PASSED=0
FAILED=0
FAILED_NAMES=()
SUMMARY_DONE=0
summary() {
  [ "$SUMMARY_DONE" = 1 ] && return
  SUMMARY_DONE=1
  [ ${#FAILED_NAMES[@]} -gt 0 ] && echo "# failed: ${FAILED_NAMES[*]}"
  echo "$PASSED passed, $FAILED failed"
}
# A failure before or outside the cases: report it and end with a summary line.
abort() {
  echo "FAIL setup: $*"
  FAILED=$((FAILED + 1))
  FAILED_NAMES+=(setup)
  exit 1
}

CASE_REASON=''
CASE_NOTES=()
CASE_LOGS=()
fail() { CASE_REASON=$*; return 1; }
note() { CASE_NOTES+=("$*"); }
logs() { CASE_LOGS+=("$@"); }
selected() { [ -z "$ONLY" ] || [[ $1 =~ $ONLY ]]; }

run_case() {
  local name=$1 fn=$2 n f
  selected "$name" || return 0
  CASE_REASON=''
  CASE_NOTES=()
  CASE_LOGS=()
  if "$fn"; then
    PASSED=$((PASSED + 1))
    echo "PASS $name"
    for n in "${CASE_NOTES[@]}"; do echo "    $n"; done
  else
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$name")
    echo "FAIL $name: ${CASE_REASON:-(no reason given)}"
    for n in "${CASE_NOTES[@]}"; do echo "    $n"; done
    for f in "${CASE_LOGS[@]}"; do an_tail "$f"; done
  fi
}
