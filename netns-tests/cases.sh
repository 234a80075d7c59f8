# shellcheck shell=bash
# The case machinery shared by netns-tests/run.sh and netns-tests/p2p.sh: counters,
# the summary line ("N passed, M failed") that scripts/test.sh reads, and run_case
# with fail/note/logs, and the start of a run: arguments, preflight, log directory and
# the exit and signal traps. Source it after lib.sh, then call cases_args,
# cases_preflight and cases_start.

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

# cases_args HELP_LINES "$@": --only REGEX (sets ONLY), --keep-logs (KEEP_LOGS=1) and
# -h/--help, which prints lines HELP_LINES (e.g. 2,17) of the calling script.
cases_args() {
  local help=$1
  shift
  ONLY=''
  KEEP_LOGS=0
  while [ $# -gt 0 ]; do
    case $1 in
      --only) ONLY=${2:?--only needs a regex}; shift 2 ;;
      --only=*) ONLY=${1#--only=}; shift ;;
      --keep-logs) KEEP_LOGS=1; shift ;;
      -h | --help) sed -n "${help}p" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
  done
}

# cases_preflight HINT: root, and none of lib.sh's AN_NS names exists yet (HINT says
# what may hold them); otherwise a summary line and exit 1.
cases_preflight() {
  local conflicts
  [ "$(id -u)" = 0 ] || { echo "netns-tests need root (network namespaces)" >&2; echo "0 passed, 1 failed"; exit 1; }
  conflicts=$(an_ns_conflicts)
  if [ -n "$conflicts" ]; then
    echo "refusing to run: these already exist ($1):" >&2
    while IFS= read -r l; do echo "  $l"; done <<<"$conflicts" >&2
    echo "(if they are leftovers of a killed run: ip netns del NAME; rm -r /etc/netns/NAME)" >&2
    echo "0 passed, 1 failed"
    exit 1
  fi
}

# cases_start NAME BULKY...: AN_DIR=/tmp/NAME.XXXXXX and the traps. On exit: everything
# started is stopped and removed (an_cleanup), AN_DIR is deleted, or kept without the
# BULKY paths in it after a failure or with --keep-logs, then the duration and the
# summary line. A signal counts as a failure.
cases_start() {
  AN_DIR=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$AN_DIR"
  shift
  CASES_BULKY=("$@")
  CASES_T0=$(an_now_ms)
  # The traps may run while a function's redirection is active (e.g. iperf3's output
  # going to a file): they write to the script's own stdout and stderr, saved here.
  exec 3>&1 4>&2
  trap cases_on_exit EXIT
  trap 'cases_on_signal INT' INT
  trap 'cases_on_signal TERM' TERM
}
cases_on_exit() {
  local rc=$? left b
  exec 1>&3 2>&4
  trap - EXIT INT TERM
  an_cleanup
  if [ "$FAILED" -gt 0 ] || [ "$KEEP_LOGS" = 1 ]; then
    # BULKY entries may be globs (e.g. '*.bin'): unquoted on purpose.
    # shellcheck disable=SC2086
    for b in "${CASES_BULKY[@]}"; do rm -rf "${AN_DIR:?}"/$b; done
    echo "# logs kept in $AN_DIR"
  else
    rm -rf "$AN_DIR"
  fi
  left=$(an_ns_conflicts)
  [ -n "$left" ] && echo "# WARNING: left behind: $left"
  echo "# duration: $((($(an_now_ms) - CASES_T0) / 1000)) s"
  summary
  [ "$FAILED" -eq 0 ] && exit "$rc"
  exit 1
}
cases_on_signal() {
  exec 1>&3 2>&4
  echo "FAIL interrupted: by SIG$1"
  FAILED=$((FAILED + 1))
  FAILED_NAMES+=(interrupted)
  exit 1
}
