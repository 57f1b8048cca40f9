#!/usr/bin/env bash
# deploy-on-host.sh - dropship's host side: what SSM (AWS-RunShellScript) runs as root on
# every target instance. It installs one exact, verified bundle version as a new release
# next to the running one, switches `current` atomically, brings it up with docker compose,
# gates on health, and rolls back by itself when the new release does not come up healthy.
#
# Runs on Amazon Linux 2023 and Ubuntu 22.04/24.04 and assumes only bash (>= 5), coreutils,
# curl, tar (GNU), gzip, sha256sum, flock and docker with Compose v2. pigz is used for
# unpacking when it happens to be installed.
#
# Inputs: environment variables only (the Lambda exports them with strict single-quoting;
# nothing here ever evaluates them as code). Empty and unset are the same.
#
#   variable                  meaning (default)
#   DROPSHIP_ACTION           deploy (default) | rollback | status
#   DROPSHIP_APP              app name, [a-z0-9][a-z0-9-]{0,62}; also the compose project name
#   DROPSHIP_ENV              environment name, same pattern
#   DROPSHIP_APP_ROOT         absolute host directory of the app, e.g. /opt/dropship/<app>
#   DROPSHIP_BUCKET           bucket of the bundle (recorded)
#   DROPSHIP_KEY              key of the bundle, ending in <app>/<env>.tar.gz (recorded)
#   DROPSHIP_VERSION_ID       S3 version id deployed (printable ASCII, no '/')
#   DROPSHIP_SEQUENCER        S3 event sequencer, hex; empty for an operator's direct redeploy
#   DROPSHIP_SHA256           expected SHA-256 (64 hex) of the downloaded object
#   DROPSHIP_BUNDLE_URL       presigned http(s) GET for that version
#   DROPSHIP_BUNDLE_BYTES     object size in bytes (0: unknown; checked when given)
#   DROPSHIP_UNPACKED_BYTES   unpacked size in bytes, for the disk preflight (0)
#   DROPSHIP_COMMIT           full commit hash (40 or 64 lower-case hex)
#   DROPSHIP_COMPOSE_FILE     compose file inside the bundle (compose.yaml)
#   DROPSHIP_PROFILES         comma-separated compose profiles ()
#   DROPSHIP_HEALTH_URL       http(s) URL that must answer 2xx; empty: compose --wait only
#   DROPSHIP_HEALTH_TIMEOUT   seconds the health gate waits (60)
#   DROPSHIP_SHARED_PATHS     comma-separated paths under shared/ linked into each release (.env)
#   DROPSHIP_KEEP_RELEASES    releases kept on disk (5)
#   DROPSHIP_REQUIRED_ENV     comma-separated variable names that must be set in shared/.env
#   DROPSHIP_PRE_SWITCH_HOOK  path inside the release run before the switch ()
#   DROPSHIP_ROLLBACK_TO      release name for the rollback action (the previous release)
#   DROPSHIP_EXPECT_VERSION_ID rollback only while this version is the committed one, else
#                             outcome superseded, exit 0 (the fleet rollback's guard)
#   DROPSHIP_LOCK_TIMEOUT     seconds to wait for the host lock (300)
#
# Exit codes (contract::host::ExitCode):
#    0  deployed, no-op (already current), stale (older sequencer) or requested rollback done
#    2  bad input: nothing touched
#    3  lock not acquired in time
#    4  preflight failed (disk, docker compose missing)
#    5  download or SHA-256 verification failed
#    6  unpack failed
#    7  compose config or .env invalid
#    8  pre-switch hook failed
#    9  compose up or health failed after the switch; previous release restored and healthy
#   10  rollback also failed, or the script was stopped (signal, unexpected error): host needs
#       an operator or a rerun (the next run recovers the committed release first)
#
# Output: every step is logged as `<UTC time> [<step>] <message>`; the last line is
# `DROPSHIP_RESULT {json}` with outcome, release, previous, version_id, commit, exit_code,
# message (and attempted, when a release was tried and not kept).
#
# Host layout under DROPSHIP_APP_ROOT:
#   releases/<YYYYmmddTHHMMSSZ>-<commit7>/  unpacked bundle + .dropship/{manifest,release}.json
#   shared/                                 .env, data/, ... linked into every release
#   current -> releases/<name>              switched atomically (ln -s tmp && mv -T)
#   state.json  deploy.log  .lock           committed state, JSON-lines audit log, flock

set -uo pipefail
shopt -s nullglob
export LC_ALL=C TZ=UTC
umask 022
exec 2>&1

readonly NAME_RE='^[a-z0-9][a-z0-9-]{0,62}$'
readonly RELEASE_RE='^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{7}(-[0-9]+)?$'
readonly RELPATH_RE='^[A-Za-z0-9._@+][A-Za-z0-9._@+/-]*$'

# ---------------------------------------------------------------------------------------
# output helpers

log() { # step message
    printf '%(%Y-%m-%dT%H:%M:%SZ)T [%s] %s\n' -1 "$1" "$2"
}

# JSON string literal of $1 in REPLY. Escapes \, ", and every control character.
json_str() {
    local s=$1 c i hex
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\r'/\\r}
    s=${s//$'\t'/\\t}
    if [[ $s == *[$'\001'-$'\037']* ]]; then
        for ((i = 1; i < 32; i++)); do
            printf -v hex '%02x' "$i"
            printf -v c '%b' "\\x$hex"
            s=${s//"$c"/\\u00$hex}
        done
    fi
    REPLY="\"$s\""
}

# Quoted form of a value for log messages (never print raw input: it may hold newlines).
q() {
    json_str "$1"
    printf '%s' "$REPLY"
}

# Reverse of json_str for the values this script stores (which never hold control
# characters): undo \" and \\ and \/.
json_unstr() {
    local s=$1
    s=${s//\\\\/$'\001'}
    s=${s//\\\"/\"}
    s=${s//\\\//\/}
    REPLY=${s//$'\001'/\\}
}

# Reads "key" from a file this script wrote (one key per line). REPLY is the value;
# returns 1 when the file or key is missing.
json_get() { # file key
    local line v
    REPLY=
    [[ -f $1 ]] || return 1
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line == "  \"$2\": "* ]]; then
            v=${line#"  \"$2\": "}
            v=${v%,}
            if [[ $v == \"*\" ]]; then
                v=${v#\"}
                v=${v%\"}
                json_unstr "$v"
            else
                REPLY=$v
            fi
            return 0
        fi
    done <"$1"
    return 1
}

# Writes a one-key-per-line JSON object: json_write FILE key value [key value ...].
# format, health_timeout and deployed_us are numbers; everything else is a string.
json_write() {
    local file=$1 tmp out="{" sep=$'\n'
    shift
    while (($# >= 2)); do
        if [[ $1 =~ ^(format|health_timeout|deployed_us)$ && $2 =~ ^(0|[1-9][0-9]{0,17})$ ]]; then
            REPLY=$2
        else
            json_str "$2"
        fi
        out+="$sep  \"$1\": $REPLY"
        sep=$',\n'
        shift 2
    done
    out+=$'\n}\n'
    tmp="$file.tmp.$$"
    printf '%s' "$out" >"$tmp" && mv -f -- "$tmp" "$file"
}

# One-line JSON object from key/value pairs (for deploy.log and the result line).
json_line() {
    local out="{" sep=""
    while (($# >= 2)); do
        if [[ $2 =~ ^(0|[1-9][0-9]{0,17})$ && $1 == exit_code ]]; then
            REPLY=$2
        else
            json_str "$2"
        fi
        out+="$sep\"$1\":$REPLY"
        sep=","
        shift 2
    done
    REPLY="$out}"
}

now_iso() { printf -v REPLY '%(%Y-%m-%dT%H:%M:%SZ)T' -1; }

# ---------------------------------------------------------------------------------------
# result and exit

RESULT_DONE=0
OUT_RELEASE=""
OUT_PREVIOUS=""
OUT_ATTEMPTED=""
LOCKED=0

# finish CODE OUTCOME MESSAGE: audit-log (when holding the lock), print the result, exit.
finish() {
    local code=$1 outcome=$2 msg=$3 when
    now_iso
    when=$REPLY
    if ((LOCKED)); then
        json_line time "$when" action "$ACTION" outcome "$outcome" exit_code "$code" \
            release "$OUT_RELEASE" previous "$OUT_PREVIOUS" attempted "$OUT_ATTEMPTED" \
            version_id "${VERSION_ID:-}" sequencer "${SEQUENCER:-}" commit "${COMMIT:-}" \
            sha256 "${SHA256:-}" message "$msg"
        printf '%s\n' "$REPLY" >>"$APP_ROOT/deploy.log" ||
            log audit "could not append to deploy.log"
    fi
    log result "$outcome (exit $code): $msg"
    json_line outcome "$outcome" release "$OUT_RELEASE" previous "$OUT_PREVIOUS" \
        version_id "${VERSION_ID:-}" commit "${COMMIT:-}" exit_code "$code" message "$msg" \
        attempted "$OUT_ATTEMPTED"
    RESULT_DONE=1
    cleanup
    printf 'DROPSHIP_RESULT %s\n' "$REPLY"
    exit "$code"
}

bad_input() { # message
    finish 2 failed "bad input: $1"
}

# Temporary things a failed or interrupted run must not leave behind.
TMP_DOWNLOAD=""
TMP_LIST=""
TMP_SUM=""
PARTIAL_DIR=""
UNSWITCHED_DIR=""

cleanup() {
    [[ -n $TMP_DOWNLOAD ]] && rm -f -- "$TMP_DOWNLOAD"
    [[ -n $TMP_LIST ]] && rm -f -- "$TMP_LIST" "$TMP_LIST.sorted"
    [[ -n $TMP_SUM ]] && rm -f -- "$TMP_SUM"
    [[ -n $PARTIAL_DIR && -d $PARTIAL_DIR ]] && rm -rf -- "$PARTIAL_DIR"
    # A release that was unpacked but never switched to was never live: remove it.
    [[ -n $UNSWITCHED_DIR && -d $UNSWITCHED_DIR ]] && rm -rf -- "$UNSWITCHED_DIR"
    TMP_DOWNLOAD="" TMP_LIST="" TMP_SUM="" PARTIAL_DIR="" UNSWITCHED_DIR=""
}

on_exit() {
    local rc=$?
    if ((!RESULT_DONE)); then
        RESULT_DONE=1
        cleanup
        log result "failed: the script stopped unexpectedly (status $rc)"
        json_line outcome failed release "$OUT_RELEASE" previous "$OUT_PREVIOUS" \
            version_id "${VERSION_ID:-}" commit "${COMMIT:-}" exit_code 10 \
            message "the script stopped unexpectedly (status $rc); the next run recovers" \
            attempted "$OUT_ATTEMPTED"
        printf 'DROPSHIP_RESULT %s\n' "$REPLY"
        exit 10 # the status the result line reports, whatever stopped the script
    fi
}
trap on_exit EXIT
trap 'log signal "terminated"; exit 10' TERM INT HUP

# ---------------------------------------------------------------------------------------
# input validation: nothing on disk is touched until all of it passed

ACTION=${DROPSHIP_ACTION:-deploy}
APP=${DROPSHIP_APP:-}
ENV_NAME=${DROPSHIP_ENV:-}
APP_ROOT=${DROPSHIP_APP_ROOT:-}
BUCKET=${DROPSHIP_BUCKET:-}
KEY=${DROPSHIP_KEY:-}
VERSION_ID=""
SEQUENCER=""
SHA256=""
COMMIT=""
URL=${DROPSHIP_BUNDLE_URL:-}
BUNDLE_BYTES=${DROPSHIP_BUNDLE_BYTES:-0}
UNPACKED_BYTES=${DROPSHIP_UNPACKED_BYTES:-0}
COMPOSE_FILE=${DROPSHIP_COMPOSE_FILE:-compose.yaml}
PROFILES=${DROPSHIP_PROFILES:-}
HEALTH_URL=${DROPSHIP_HEALTH_URL:-}
HEALTH_TIMEOUT=${DROPSHIP_HEALTH_TIMEOUT:-60}
SHARED_PATHS=${DROPSHIP_SHARED_PATHS-.env}
KEEP_RELEASES=${DROPSHIP_KEEP_RELEASES:-5}
REQUIRED_ENV=${DROPSHIP_REQUIRED_ENV:-}
HOOK=${DROPSHIP_PRE_SWITCH_HOOK:-}
ROLLBACK_TO=${DROPSHIP_ROLLBACK_TO:-}
EXPECT_VERSION_ID=${DROPSHIP_EXPECT_VERSION_ID:-}
LOCK_TIMEOUT=${DROPSHIP_LOCK_TIMEOUT:-300}

has_ctrl() { [[ $1 == *[$'\001'-$'\037'$'\177']* ]]; }

# A relative path inside a release: no leading '/', no '..' or empty component.
valid_relpath() {
    local p=${1%/}
    [[ $p =~ $RELPATH_RE ]] || return 1
    [[ "/$p/" != */../* && "/$p/" != */./* && "/$p/" != *//* ]]
}

valid_number() { # value max
    [[ $1 =~ ^[0-9]{1,18}$ ]] && ((10#$1 <= $2))
}

validate_common() {
    case $ACTION in
    deploy | rollback | status) ;;
    *) bad_input "DROPSHIP_ACTION must be deploy, rollback or status, got $(q "$ACTION")" ;;
    esac
    [[ $APP =~ $NAME_RE ]] || bad_input "DROPSHIP_APP must match [a-z0-9][a-z0-9-]{0,62}, got $(q "$APP")"
    [[ $ENV_NAME =~ $NAME_RE ]] || bad_input "DROPSHIP_ENV must match [a-z0-9][a-z0-9-]{0,62}, got $(q "$ENV_NAME")"
    [[ $APP_ROOT =~ ^/[A-Za-z0-9._@+/-]+$ && "$APP_ROOT/" != */../* && "$APP_ROOT/" != */./* ]] ||
        bad_input "DROPSHIP_APP_ROOT must be an absolute path of [A-Za-z0-9._@+/-] without '..', got $(q "$APP_ROOT")"
    APP_ROOT=${APP_ROOT%/}
    [[ -n $APP_ROOT ]] || bad_input "DROPSHIP_APP_ROOT must not be /"
    valid_number "$LOCK_TIMEOUT" 86400 || bad_input "DROPSHIP_LOCK_TIMEOUT must be 0..86400 seconds, got $(q "$LOCK_TIMEOUT")"
    LOCK_TIMEOUT=$((10#$LOCK_TIMEOUT))
}

validate_deploy() {
    local v p
    VERSION_ID=${DROPSHIP_VERSION_ID:-}
    { [[ -n $VERSION_ID && ${#VERSION_ID} -le 1024 && $VERSION_ID != */* ]] && ! has_ctrl "$VERSION_ID"; } ||
        bad_input "DROPSHIP_VERSION_ID must be 1..1024 printable characters without '/', got $(q "$VERSION_ID")"
    SEQUENCER=${DROPSHIP_SEQUENCER:-}
    [[ $SEQUENCER =~ ^[0-9A-Fa-f]{0,128}$ ]] || bad_input "DROPSHIP_SEQUENCER must be hex or empty, got $(q "$SEQUENCER")"
    SEQUENCER=${SEQUENCER^^}
    SHA256=${DROPSHIP_SHA256:-}
    [[ $SHA256 =~ ^[0-9A-Fa-f]{64}$ ]] || bad_input "DROPSHIP_SHA256 must be 64 hex characters, got $(q "$SHA256")"
    SHA256=${SHA256,,}
    COMMIT=${DROPSHIP_COMMIT:-}
    [[ $COMMIT =~ ^[0-9a-f]{40}([0-9a-f]{24})?$ ]] || bad_input "DROPSHIP_COMMIT must be 40 or 64 lower-case hex characters, got $(q "$COMMIT")"
    [[ $BUCKET =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]] || bad_input "DROPSHIP_BUCKET is not a bucket name, got $(q "$BUCKET")"
    { [[ ($KEY == "$APP/$ENV_NAME.tar.gz" || $KEY == */"$APP/$ENV_NAME.tar.gz") && ${#KEY} -le 1024 ]] && ! has_ctrl "$KEY"; } ||
        bad_input "DROPSHIP_KEY must end in $APP/$ENV_NAME.tar.gz, got $(q "$KEY")"
    { [[ $URL =~ ^https?://[^[:space:]]+$ ]] && ! has_ctrl "$URL"; } ||
        bad_input "DROPSHIP_BUNDLE_URL must be an http(s) URL without spaces, got $(q "$URL")"
    valid_number "$BUNDLE_BYTES" 999999999999999 || bad_input "DROPSHIP_BUNDLE_BYTES must be a number, got $(q "$BUNDLE_BYTES")"
    valid_number "$UNPACKED_BYTES" 999999999999999 || bad_input "DROPSHIP_UNPACKED_BYTES must be a number, got $(q "$UNPACKED_BYTES")"
    BUNDLE_BYTES=$((10#$BUNDLE_BYTES)) UNPACKED_BYTES=$((10#$UNPACKED_BYTES))
    # List inputs are split with `read`, which stops at a newline: refuse control characters
    # first so nothing after one can slip past the per-item checks.
    for p in DROPSHIP_PROFILES DROPSHIP_SHARED_PATHS DROPSHIP_REQUIRED_ENV; do
        has_ctrl "${!p:-}" && bad_input "$p must not contain control characters, got $(q "${!p}")"
    done
    { valid_relpath "$COMPOSE_FILE" && [[ $COMPOSE_FILE != */ ]]; } ||
        bad_input "DROPSHIP_COMPOSE_FILE must be a relative path inside the bundle, got $(q "$COMPOSE_FILE")"
    if [[ -n $PROFILES ]]; then
        IFS=, read -r -a v <<<"$PROFILES"
        for p in "${v[@]}"; do
            [[ $p =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]] || bad_input "DROPSHIP_PROFILES has an invalid profile $(q "$p")"
        done
    fi
    if [[ -n $HEALTH_URL ]]; then
        { [[ $HEALTH_URL =~ ^https?://[^[:space:]]+$ ]] && ! has_ctrl "$HEALTH_URL"; } ||
            bad_input "DROPSHIP_HEALTH_URL must be an http(s) URL without spaces, got $(q "$HEALTH_URL")"
    fi
    { valid_number "$HEALTH_TIMEOUT" 86400 && ((10#$HEALTH_TIMEOUT >= 1)); } ||
        bad_input "DROPSHIP_HEALTH_TIMEOUT must be 1..86400 seconds, got $(q "$HEALTH_TIMEOUT")"
    HEALTH_TIMEOUT=$((10#$HEALTH_TIMEOUT))
    if [[ -n $SHARED_PATHS ]]; then
        IFS=, read -r -a v <<<"$SHARED_PATHS"
        for p in "${v[@]}"; do
            { valid_relpath "$p" && [[ $p != .dropship && $p != .dropship/* ]]; } ||
                bad_input "DROPSHIP_SHARED_PATHS has an invalid path $(q "$p") (relative, no '..', not .dropship)"
        done
    fi
    { valid_number "$KEEP_RELEASES" 1000 && ((10#$KEEP_RELEASES >= 1)); } ||
        bad_input "DROPSHIP_KEEP_RELEASES must be 1..1000, got $(q "$KEEP_RELEASES")"
    KEEP_RELEASES=$((10#$KEEP_RELEASES))
    if [[ -n $REQUIRED_ENV ]]; then
        IFS=, read -r -a v <<<"$REQUIRED_ENV"
        for p in "${v[@]}"; do
            [[ $p =~ ^[A-Za-z_][A-Za-z0-9_]{0,127}$ ]] || bad_input "DROPSHIP_REQUIRED_ENV has an invalid variable name $(q "$p")"
        done
    fi
    if [[ -n $HOOK ]]; then
        { valid_relpath "$HOOK" && [[ $HOOK != */ ]]; } ||
            bad_input "DROPSHIP_PRE_SWITCH_HOOK must be a relative path inside the bundle, got $(q "$HOOK")"
    fi
}

validate_rollback() {
    if [[ -n $ROLLBACK_TO ]]; then
        [[ $ROLLBACK_TO =~ $RELEASE_RE ]] || bad_input "DROPSHIP_ROLLBACK_TO is not a release name, got $(q "$ROLLBACK_TO")"
    fi
    { [[ ${#EXPECT_VERSION_ID} -le 1024 && $EXPECT_VERSION_ID != */* ]] && ! has_ctrl "$EXPECT_VERSION_ID"; } ||
        bad_input "DROPSHIP_EXPECT_VERSION_ID must be at most 1024 printable characters without '/', got $(q "$EXPECT_VERSION_ID")"
}

# ---------------------------------------------------------------------------------------
# state

ST_CURRENT="" ST_PREVIOUS="" ST_LAST_GOOD="" ST_VERSION_ID="" ST_SEQUENCER="" ST_COMMIT=""
ST_SHA256=""

load_state() {
    local f="$APP_ROOT/state.json"
    json_get "$f" current && ST_CURRENT=$REPLY
    json_get "$f" previous && ST_PREVIOUS=$REPLY
    json_get "$f" last_good && ST_LAST_GOOD=$REPLY
    json_get "$f" version_id && ST_VERSION_ID=$REPLY
    json_get "$f" sequencer && ST_SEQUENCER=$REPLY
    json_get "$f" commit && ST_COMMIT=$REPLY
    json_get "$f" sha256 && ST_SHA256=$REPLY
    # Never trust names read back from disk more than inputs.
    local n
    for n in ST_CURRENT ST_PREVIOUS ST_LAST_GOOD; do
        if [[ -n ${!n} && ! ${!n} =~ $RELEASE_RE ]]; then
            log state "ignoring invalid release name in state.json: $(q "${!n}")"
            printf -v "$n" '%s' ""
        fi
    done
}

# save_state OUTCOME [LAST_FAILED]
save_state() {
    now_iso
    json_write "$APP_ROOT/state.json" \
        format 1 app "$APP" env "$ENV_NAME" \
        current "$ST_CURRENT" previous "$ST_PREVIOUS" last_good "$ST_LAST_GOOD" \
        version_id "$ST_VERSION_ID" sequencer "$ST_SEQUENCER" commit "$ST_COMMIT" \
        sha256 "$ST_SHA256" time "$REPLY" last_outcome "$1" last_failed "${2:-}"
}

# Loads a release's recorded settings into R_* (from its .dropship/release.json).
R_COMPOSE_FILE="" R_PROFILES="" R_HEALTH_URL="" R_HEALTH_TIMEOUT="" R_VERSION_ID="" R_COMMIT=""
R_SHA256=""
load_release() { # name
    local f="$APP_ROOT/releases/$1/.dropship/release.json"
    [[ -f $f ]] || return 1
    json_get "$f" compose_file && R_COMPOSE_FILE=$REPLY || R_COMPOSE_FILE=compose.yaml
    json_get "$f" profiles && R_PROFILES=$REPLY || R_PROFILES=""
    json_get "$f" health_url && R_HEALTH_URL=$REPLY || R_HEALTH_URL=""
    json_get "$f" health_timeout && R_HEALTH_TIMEOUT=$REPLY || R_HEALTH_TIMEOUT=60
    json_get "$f" version_id && R_VERSION_ID=$REPLY || R_VERSION_ID=""
    json_get "$f" commit && R_COMMIT=$REPLY || R_COMMIT=""
    json_get "$f" sha256 && R_SHA256=$REPLY || R_SHA256=""
    valid_relpath "$R_COMPOSE_FILE" || return 1
    [[ $R_HEALTH_TIMEOUT =~ ^[0-9]{1,5}$ ]] || R_HEALTH_TIMEOUT=60
    return 0
}

current_link() { # -> REPLY: release name `current` points at, or ""
    local t
    REPLY=""
    t=$(readlink -- "$APP_ROOT/current" 2>/dev/null) || return 0
    t=${t#releases/}
    [[ $t =~ $RELEASE_RE ]] && REPLY=$t
    return 0
}

# Atomically points `current` at releases/NAME (relative link), or removes it for "".
switch_current() { # name
    local tmp="$APP_ROOT/.current.tmp.$$"
    if [[ -z $1 ]]; then
        rm -f -- "$APP_ROOT/current"
        return
    fi
    rm -f -- "$tmp"
    ln -s -- "releases/$1" "$tmp" && mv -T -f -- "$tmp" "$APP_ROOT/current"
}

# S3 sequencer order, as contract::sequencer: pad the shorter with zeros on the right, then
# compare as strings. True when $1 is strictly older than $2.
seq_older() {
    local a=$1 b=$2
    while ((${#a} < ${#b})); do a+=0; done
    while ((${#b} < ${#a})); do b+=0; done
    [[ $a < $b ]]
}

# ---------------------------------------------------------------------------------------
# docker

# Every docker call closes the lock descriptor so nothing it leaves running holds the lock.
dk() { docker "$@" 9>&-; }

COMPOSE=()
compose_args() { # release-dir compose-file profiles
    local p list
    COMPOSE=(compose -p "$APP" -f "$1/$2")
    [[ -f $1/.env ]] && COMPOSE+=(--env-file "$1/.env")
    if [[ -n $3 ]]; then
        IFS=, read -r -a list <<<"$3"
        for p in "${list[@]}"; do COMPOSE+=(--profile "$p"); done
    fi
}

compose_up() { # release-name -> uses its recorded settings
    local name=$1 dir="$APP_ROOT/releases/$1" cfg extra=()
    load_release "$name" || {
        log compose "release $name has no readable .dropship/release.json"
        return 1
    }
    compose_args "$dir" "$R_COMPOSE_FILE" "$R_PROFILES"
    cfg=$(dk "${COMPOSE[@]}" config --format json 2>/dev/null) || cfg=""
    [[ $cfg == *'"build":'* ]] && extra+=(--build)
    log compose "up $name (project $APP${extra:+, with build})"
    dk "${COMPOSE[@]}" up -d --remove-orphans --wait --wait-timeout "$((R_HEALTH_TIMEOUT + 0))" "${extra[@]}"
}

health_check() { # url timeout
    local url=$1 timeout=$2 deadline attempt=0
    if [[ -z $url ]]; then
        log health "no health URL; compose --wait was the gate"
        return 0
    fi
    deadline=$((SECONDS + timeout))
    while :; do
        attempt=$((attempt + 1))
        if curl --globoff --fail --silent --show-error --proto =http,https --max-time 5 -o /dev/null "$url"; then
            log health "healthy after $attempt attempt(s)"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            log health "not healthy after $attempt attempt(s) in ${timeout}s: $(q "$url")"
            return 1
        fi
        sleep 1
    done
}

# Brings a release up and checks its recorded health URL.
bring_up() { # name
    compose_up "$1" || return 1
    health_check "$R_HEALTH_URL" "$R_HEALTH_TIMEOUT"
}

# ---------------------------------------------------------------------------------------
# lock and housekeeping

acquire_lock() {
    mkdir -p -- "$APP_ROOT" "$APP_ROOT/releases" "$APP_ROOT/shared" || finish 4 failed "cannot create $APP_ROOT"
    exec 9>>"$APP_ROOT/.lock" || finish 4 failed "cannot open $APP_ROOT/.lock"
    if ! flock -n 9; then
        log lock "another deploy holds $APP_ROOT/.lock; waiting up to ${LOCK_TIMEOUT}s"
        flock -w "$LOCK_TIMEOUT" 9 || finish 3 failed "lock not acquired within ${LOCK_TIMEOUT}s"
    fi
    LOCKED=1
    log lock "acquired $APP_ROOT/.lock"
}

# Releases to delete are renamed into .trash.<pid>/ (instant: nothing can run a half-deleted
# release) and deleted in the background at low priority, so a deploy's latency does not grow
# with the size of old releases. A trash directory a killed run left is emptied the same way.
TRASH=""
trash() { # path
    if [[ -z $TRASH ]]; then
        TRASH="$APP_ROOT/.trash.$$"
        mkdir -p -- "$TRASH" || return 1
    fi
    mv -T -- "$1" "$TRASH/${1##*/}"
}

empty_trash_later() { # directories
    (($#)) || return 0
    nice -n 19 rm -rf -- "$@" </dev/null >/dev/null 2>&1 9>&- &
    disown
}

# Leftovers of a run that was killed: .partial dirs, temp downloads and temp links.
clean_leftovers() {
    local f old_trash=()
    for f in "$APP_ROOT"/releases/*.partial "$APP_ROOT"/.download.* "$APP_ROOT"/.current.tmp.* \
        "$APP_ROOT"/state.json.tmp.* "$APP_ROOT"/.list.* "$APP_ROOT"/.sum.*; do
        log cleanup "removing leftover of an interrupted run: ${f#"$APP_ROOT"/}"
        rm -rf -- "$f"
    done
    for f in "$APP_ROOT"/.trash.*; do
        [[ -d $f ]] && old_trash+=("$f")
    done
    empty_trash_later "${old_trash[@]}"
}

RECOVERY_FAILED=0
# The committed state (state.json) is the truth. If `current` points elsewhere, a run died
# between the switch and the commit: put the committed release back and bring it up.
recover() {
    local link
    current_link
    link=$REPLY
    [[ $link == "$ST_CURRENT" ]] && return 0
    log recover "current is $(q "$link") but the committed release is $(q "$ST_CURRENT"): an earlier run was interrupted"
    if [[ -n $ST_CURRENT && -d $APP_ROOT/releases/$ST_CURRENT ]]; then
        switch_current "$ST_CURRENT"
        if bring_up "$ST_CURRENT"; then
            log recover "restored $ST_CURRENT"
        else
            log recover "restoring $ST_CURRENT failed"
            RECOVERY_FAILED=1
        fi
    else
        switch_current ""
        dk compose -p "$APP" down --remove-orphans || log recover "compose down failed"
        log recover "nothing committed yet: removed the current link and stopped the project"
    fi
}

prune() {
    local keep=$1 name t entries=() sorted kept=0 protect
    for name in "$APP_ROOT"/releases/*; do
        name=${name##*/}
        [[ $name =~ $RELEASE_RE && -d $APP_ROOT/releases/$name ]] || continue
        t=0
        json_get "$APP_ROOT/releases/$name/.dropship/release.json" deployed_us && [[ $REPLY =~ ^[0-9]+$ ]] && t=$REPLY
        entries+=("$(printf '%020d %s' "$t" "$name")")
    done
    ((${#entries[@]})) || return 0
    mapfile -t sorted < <(printf '%s\n' "${entries[@]}" | sort -r)
    for name in "${sorted[@]}"; do
        name=${name#* }
        protect=0
        [[ $name == "$ST_CURRENT" || $name == "$ST_PREVIOUS" || $name == "$ST_LAST_GOOD" ]] && protect=1
        if ((kept < keep || protect)); then
            kept=$((kept + 1))
            continue
        fi
        log prune "removing release $name"
        trash "$APP_ROOT/releases/$name" || rm -rf -- "${APP_ROOT:?}/releases/$name"
    done
    [[ -n $TRASH ]] && empty_trash_later "$TRASH"
    return 0
}

# ---------------------------------------------------------------------------------------
# deploy steps

preflight() {
    local avail need line
    need=$((BUNDLE_BYTES + UNPACKED_BYTES + UNPACKED_BYTES / 10 + 16 * 1024 * 1024))
    { read -r line && read -r _ _ _ avail _; } < <(df -Pk -- "$APP_ROOT") || avail=""
    [[ $avail =~ ^[0-9]+$ ]] || finish 4 failed "cannot read free disk space of $APP_ROOT"
    if ((avail * 1024 < need)); then
        finish 4 failed "not enough disk in $APP_ROOT: $((avail / 1024)) MiB free, $((need / 1048576)) MiB needed"
    fi
    log preflight "disk: $((avail / 1024)) MiB free, $((need / 1048576)) MiB needed"
    local v
    v=$(dk compose version 2>&1) || finish 4 failed "docker compose v2 is not available"
    log preflight "${v%%$'\n'*}"
}

download() {
    local attempt code rc delay=1 size
    TMP_DOWNLOAD="$APP_ROOT/.download.$$"
    for attempt in 1 2 3 4; do
        rm -f -- "$TMP_DOWNLOAD"
        code=$(curl --globoff --fail --silent --show-error --location --proto =http,https --proto-redir =http,https \
            --connect-timeout 15 --max-time 3600 -o "$TMP_DOWNLOAD" -w '%{http_code}' "$URL")
        rc=$?
        if ((rc == 0)); then
            break
        fi
        log download "attempt $attempt failed (curl exit $rc, HTTP $code)"
        case $code in
        4??) [[ $code == 408 || $code == 429 ]] || finish 5 failed "download refused with HTTP $code" ;;
        esac
        ((attempt < 4)) || finish 5 failed "download failed after $attempt attempts (curl exit $rc, HTTP $code)"
        sleep "$delay"
        delay=$((delay * 2))
    done
    size=$(stat -c %s -- "$TMP_DOWNLOAD") || finish 5 failed "downloaded file missing"
    if ((BUNDLE_BYTES > 0 && size != BUNDLE_BYTES)); then
        finish 5 failed "downloaded $size bytes, expected $BUNDLE_BYTES"
    fi
    log download "$size bytes in $attempt attempt(s)"
}

# GNU tar listing checks: regular files, directories and symlinks only; no absolute path, no
# '..'; symlink targets relative and staying inside the tree; no setuid/setgid/sticky.
# check_listing proves this in bulk with coreutils (a per-line bash loop costs seconds at
# 50,000 entries); anything it cannot clear goes through check_entries, line by line, which
# names the offending entry. REPLY: the entry count, or the reason.
check_listing() { # listing-file
    local listing=$1 by_type="$1.sorted" count kind total=0 links=0 kinds names
    sort -o "$by_type" -- "$listing" || { REPLY="cannot sort the listing"; return 1; }
    # Entry types with their counts; sorting puts the symlinks ('l') last.
    while read -r count kind; do
        total=$((total + count))
        [[ $kind == l ]] && links=$count
        [[ $kind == [-dl] ]] || { check_entries "$listing"; return; }
    done < <(cut -c1 -- "$by_type" | uniq -c)
    ((total > 0)) || { REPLY="empty bundle"; return 1; }
    # Distinct type+permission strings: only r, w, x bits (no s/S/t/T).
    kinds=$(cut -c1-10 -- "$by_type" | sort -u)
    while IFS= read -r kind; do
        [[ $kind =~ ^[-dl]([-r][-w][-x]){3}$ ]] || { check_entries "$listing"; return; }
    done <<<"$kinds"
    # Names of files and directories: field 6 on once runs of spaces are squeezed (squeezing
    # cannot create or hide a '/' or a '..' component).
    names=$'\n'$(head -n "$((total - links))" -- "$by_type" | tr -s ' ' | cut -d' ' -f6-)$'\n'
    if [[ $names == *$'\n/'* || $names == *$'\n../'* || $names == *'/../'* ||
        $names == *$'\n..\n'* || $names == *'/..'$'\n'* ]]; then
        check_entries "$listing"
        return
    fi
    if ((links > 0)); then
        check_entries <(tail -n "$links" -- "$by_type") || return 1
    fi
    REPLY=$total
}

check_entries() { # listing-file
    local line type perms rest name target depth c comps count=0
    local re='^(.)([^ ]{9}) [0-9]+/[0-9]+ +[0-9]+ [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}(:[0-9]{2})? (.*)$'
    while IFS= read -r line; do
        # tar -x -vv notes the parent directories it creates; their names are listed anyway.
        [[ $line =~ ^d[-rwx]{9}\ +Creating\ directory:\  ]] && continue
        [[ $line =~ $re ]] || { REPLY="unreadable entry: $(q "$line")"; return 1; }
        type=${BASH_REMATCH[1]} perms=${BASH_REMATCH[2]} rest=${BASH_REMATCH[4]}
        count=$((count + 1))
        [[ $perms == *[sStT]* ]] && { REPLY="setuid/setgid/sticky entry $(q "$rest")"; return 1; }
        case $type in
        - | d) name=$rest target="" ;;
        l)
            name=${rest%% -> *}
            target=${rest#* -> }
            ;;
        *) REPLY="entry of type '$type' not allowed: $(q "$rest")"; return 1 ;;
        esac
        [[ $name == /* ]] && { REPLY="absolute path $(q "$name")"; return 1; }
        [[ "/$name/" == */../* ]] && { REPLY="'..' in path $(q "$name")"; return 1; }
        if [[ $type == l ]]; then
            [[ $target == /* || -z $target ]] && { REPLY="symlink $(q "$name") points to an absolute path"; return 1; }
            name=${name%/}
            IFS=/ read -r -a comps <<<"$name"
            depth=0
            for c in "${comps[@]}"; do [[ -n $c && $c != . ]] && depth=$((depth + 1)); done
            depth=$((depth - 1))
            IFS=/ read -r -a comps <<<"$target"
            for c in "${comps[@]}"; do
                case $c in
                '' | .) ;;
                ..) depth=$((depth - 1)) ;;
                *) depth=$((depth + 1)) ;;
                esac
                ((depth >= 0)) || { REPLY="symlink $(q "$name") points outside the release"; return 1; }
            done
        fi
    done <"$1"
    ((count > 0)) || { REPLY="empty bundle"; return 1; }
    REPLY=$count
}

verify() {
    local sum
    sum=$(sha256sum -- "$TMP_DOWNLOAD") || finish 5 failed "sha256sum failed"
    sum=${sum%% *}
    if [[ $sum != "$SHA256" ]]; then
        finish 5 failed "SHA-256 mismatch: got $sum, expected $SHA256"
    fi
    log verify "sha256 $sum matches"
}

NEW=""
# Unpacks the verified download into releases/<new>.partial in one decompression pass that
# also lists every entry (tar -vv), then checks that listing; only a clean bundle is renamed
# into place. While it unpacks, GNU tar itself keeps everything inside .partial: it strips
# leading '/', refuses members with '..', and creates symlinks that point outside as
# placeholders until the end. Anything it had to warn about fails the deploy, and the bundle
# rules were already enforced by the Lambda (contract::tar_rules) before dispatch.
unpack() {
    local ts base n=2 zprog=(-z) rc err="" msg
    printf -v ts '%(%Y%m%dT%H%M%SZ)T' -1
    base="$ts-${COMMIT:0:7}"
    NEW=$base
    while [[ -e $APP_ROOT/releases/$NEW || -e $APP_ROOT/releases/$NEW.partial ]]; do
        NEW="$base-$n"
        n=$((n + 1))
    done
    PARTIAL_DIR="$APP_ROOT/releases/$NEW.partial"
    mkdir -- "$PARTIAL_DIR" || finish 6 failed "cannot create $PARTIAL_DIR"
    TMP_LIST="$APP_ROOT/.list.$$"
    TMP_SUM="$APP_ROOT/.list.$$.err"
    command -v pigz >/dev/null 2>&1 && zprog=(--use-compress-program=pigz)
    log unpack "into releases/$NEW.partial"
    tar "${zprog[@]}" -x -v -v --numeric-owner -f "$TMP_DOWNLOAD" -C "$PARTIAL_DIR" \
        --no-same-owner --no-same-permissions --no-overwrite-dir >"$TMP_LIST" 2>"$TMP_SUM"
    rc=$?
    [[ -s $TMP_SUM ]] && { IFS= read -r err <"$TMP_SUM" || true; }
    ((rc == 0)) || finish 6 failed "tar could not unpack the bundle (status $rc): $(q "$err")"
    [[ -z $err ]] || finish 6 failed "unsafe bundle: tar warned $(q "$err")"
    check_listing "$TMP_LIST" || {
        msg=$REPLY
        finish 6 failed "unsafe bundle: $msg"
    }
    log unpack "$REPLY entries checked"
    rm -f -- "$TMP_LIST" "$TMP_LIST.sorted" "$TMP_SUM"
    TMP_LIST="" TMP_SUM=""
    rm -f -- "$TMP_DOWNLOAD"
    TMP_DOWNLOAD=""
    [[ -f $PARTIAL_DIR/$COMPOSE_FILE && ! -L $PARTIAL_DIR/$COMPOSE_FILE ]] ||
        finish 7 failed "compose file $(q "$COMPOSE_FILE") is not a regular file in the bundle"
    { mkdir -p -- "$PARTIAL_DIR/.dropship" && rm -f -- "$PARTIAL_DIR/.dropship/release.json"; } ||
        finish 6 failed "cannot write .dropship/release.json"
    now_iso
    json_write "$PARTIAL_DIR/.dropship/release.json" \
        name "$NEW" app "$APP" env "$ENV_NAME" bucket "$BUCKET" key "$KEY" \
        version_id "$VERSION_ID" sequencer "$SEQUENCER" sha256 "$SHA256" commit "$COMMIT" \
        deployed_at "$REPLY" deployed_us "${EPOCHREALTIME/./}" \
        compose_file "$COMPOSE_FILE" profiles "$PROFILES" health_url "$HEALTH_URL" \
        health_timeout "$HEALTH_TIMEOUT" shared_paths "$SHARED_PATHS" ||
        finish 6 failed "cannot write .dropship/release.json"
    mv -T -- "$PARTIAL_DIR" "$APP_ROOT/releases/$NEW" || finish 6 failed "cannot rename the release into place"
    UNSWITCHED_DIR="$APP_ROOT/releases/$NEW"
    PARTIAL_DIR=""
    log unpack "release $NEW ready"
}

# Links each shared path into the new release. shared/ is never overwritten: a path missing
# there is seeded from the bundle's copy when it has one, else created (a directory, or an
# empty file for names with a dot such as .env); the bundle's copy is then replaced by the link.
link_shared() {
    local dir="$APP_ROOT/releases/$NEW" list p rel comps ups i
    [[ -n $SHARED_PATHS ]] || return 0
    IFS=, read -r -a list <<<"$SHARED_PATHS"
    for p in "${list[@]}"; do
        rel=${p%/}
        if [[ ! -e $APP_ROOT/shared/$rel && ! -L $APP_ROOT/shared/$rel ]]; then
            mkdir -p -- "$(dirname -- "$APP_ROOT/shared/$rel")" || finish 7 failed "cannot create shared/$rel"
            if [[ -e $dir/$rel && ! -L $dir/$rel ]]; then
                cp -a -- "$dir/$rel" "$APP_ROOT/shared/$rel" || finish 7 failed "cannot seed shared/$rel"
                log shared "seeded shared/$rel from the bundle"
            elif [[ $p == */ || ${rel##*/} != *.* ]]; then
                mkdir -p -- "$APP_ROOT/shared/$rel" || finish 7 failed "cannot create shared/$rel"
                log shared "created directory shared/$rel"
            else
                (umask 077 && : >"$APP_ROOT/shared/$rel") || finish 7 failed "cannot create shared/$rel"
                log shared "created empty file shared/$rel"
            fi
        elif [[ -e $dir/$rel || -L $dir/$rel ]]; then
            log shared "bundle's $rel ignored: shared/$rel is kept"
        fi
        rm -rf -- "${dir:?}/$rel"
        mkdir -p -- "$(dirname -- "$dir/$rel")" || finish 7 failed "cannot create the parent of $rel"
        IFS=/ read -r -a comps <<<"$rel"
        ups=""
        for ((i = 0; i < ${#comps[@]}; i++)); do ups+="../"; done
        # releases/<name>/<rel> -> ../../shared/<rel> (plus one ../ per extra component)
        ln -s -- "${ups}../shared/$rel" "$dir/$rel" || finish 7 failed "cannot link $rel"
    done
    log shared "linked ${#list[@]} shared path(s)"
}

check_env() {
    local list name line found missing=() f="$APP_ROOT/shared/.env"
    [[ -n $REQUIRED_ENV ]] || return 0
    IFS=, read -r -a list <<<"$REQUIRED_ENV"
    [[ -f $f ]] || finish 7 failed "shared/.env does not exist but DROPSHIP_REQUIRED_ENV names ${#list[@]} variable(s)"
    for name in "${list[@]}"; do
        found=0
        while IFS= read -r line || [[ -n $line ]]; do
            line=${line#"${line%%[![:space:]]*}"}
            line=${line#export }
            line=${line#"${line%%[![:space:]]*}"}
            if [[ $line == "$name="* || $line =~ ^"$name"[[:space:]]*= ]]; then
                found=1
                break
            fi
        done <"$f"
        ((found)) || missing+=("$name")
    done
    if ((${#missing[@]})); then
        finish 7 failed "shared/.env lacks required variable(s): ${missing[*]}"
    fi
    log env "${#list[@]} required variable(s) present in shared/.env"
}

check_compose() {
    local dir="$APP_ROOT/releases/$NEW"
    compose_args "$dir" "$COMPOSE_FILE" "$PROFILES"
    dk "${COMPOSE[@]}" config -q || finish 7 failed "docker compose config rejected $(q "$COMPOSE_FILE")"
    log config "docker compose config ok"
}

run_hook() {
    local dir="$APP_ROOT/releases/$NEW" real rc
    [[ -n $HOOK ]] || return 0
    real=$(realpath -e -- "$dir/$HOOK" 2>/dev/null) || finish 8 failed "pre-switch hook $(q "$HOOK") does not exist"
    [[ $real == "$dir"/* && -f $real ]] || finish 8 failed "pre-switch hook $(q "$HOOK") is not a file inside the release"
    log hook "running $HOOK"
    if [[ -x $real ]]; then
        (cd -- "$dir" && DROPSHIP_RELEASE_DIR=$dir DROPSHIP_PREVIOUS_RELEASE=$ST_CURRENT "$real") 9>&-
    else
        (cd -- "$dir" && DROPSHIP_RELEASE_DIR=$dir DROPSHIP_PREVIOUS_RELEASE=$ST_CURRENT bash -- "$real") 9>&-
    fi
    rc=$?
    ((rc == 0)) || finish 8 failed "pre-switch hook $(q "$HOOK") exited $rc"
    log hook "ok"
}

# After a failed switch to $1: put $2 (may be "") back, bring it up, report.
roll_back() { # failed-release previous-release reason
    local failed=$1 prev=$2 reason=$3
    OUT_ATTEMPTED=$failed
    log rollback "$reason; switching back to ${prev:-nothing}"
    if [[ -z $prev ]]; then
        switch_current ""
        dk compose -p "$APP" down --remove-orphans || true
        OUT_RELEASE="" OUT_PREVIOUS=""
        save_state rolled_back "$failed"
        finish 9 rolled_back "$reason; no previous release: stopped the project and removed current"
    fi
    switch_current "$prev" || finish 10 rollback_failed "$reason; could not switch back to $prev"
    if bring_up "$prev"; then
        OUT_RELEASE=$ST_CURRENT OUT_PREVIOUS=$ST_PREVIOUS
        save_state rolled_back "$failed"
        finish 9 rolled_back "$reason; rolled back to $prev, which is healthy"
    fi
    OUT_RELEASE=$ST_CURRENT OUT_PREVIOUS=$ST_PREVIOUS
    save_state rollback_failed "$failed"
    finish 10 rollback_failed "$reason; rollback to $prev also failed"
}

do_deploy() {
    local t0=$EPOCHREALTIME
    acquire_lock
    clean_leftovers
    load_state
    OUT_RELEASE=$ST_CURRENT OUT_PREVIOUS=$ST_PREVIOUS
    recover

    # idempotency
    if [[ -n $ST_CURRENT && $ST_VERSION_ID == "$VERSION_ID" && -d $APP_ROOT/releases/$ST_CURRENT ]]; then
        ((RECOVERY_FAILED)) && finish 10 rollback_failed "version is current but the interrupted run could not be recovered"
        finish 0 noop "version $(q "$VERSION_ID") is already current ($ST_CURRENT)"
    fi
    if [[ -n $SEQUENCER && -n $ST_SEQUENCER ]] && seq_older "$SEQUENCER" "$ST_SEQUENCER"; then
        ((RECOVERY_FAILED)) && finish 10 rollback_failed "stale event, and the interrupted run could not be recovered"
        finish 0 stale "sequencer $SEQUENCER is older than the deployed $ST_SEQUENCER; skipped"
    fi
    log idempotency "deploying version $(q "$VERSION_ID") (sequencer ${SEQUENCER:-none}) over ${ST_CURRENT:-nothing}"

    preflight
    download
    verify
    unpack
    link_shared
    check_env
    check_compose
    run_hook

    # switch
    local old=$ST_CURRENT
    switch_current "$NEW" || finish 6 failed "could not switch current to $NEW"
    UNSWITCHED_DIR=""
    log switch "current -> releases/$NEW (setup took $(((${EPOCHREALTIME/./} - ${t0/./}) / 1000)) ms)"

    compose_up "$NEW" || roll_back "$NEW" "$old" "docker compose up failed for $NEW"
    health_check "$HEALTH_URL" "$HEALTH_TIMEOUT" || roll_back "$NEW" "$old" "health check failed for $NEW"

    # commit
    ST_PREVIOUS=$old
    ST_CURRENT=$NEW
    ST_LAST_GOOD=$NEW
    ST_VERSION_ID=$VERSION_ID
    [[ -n $SEQUENCER ]] && ST_SEQUENCER=$SEQUENCER
    ST_COMMIT=$COMMIT
    ST_SHA256=$SHA256
    save_state deployed || log state "could not write state.json"
    OUT_RELEASE=$NEW OUT_PREVIOUS=$old
    prune "$KEEP_RELEASES"
    finish 0 deployed "deployed $NEW (version $(q "$VERSION_ID"))"
}

do_rollback() {
    acquire_lock
    clean_leftovers
    load_state
    OUT_RELEASE=$ST_CURRENT OUT_PREVIOUS=$ST_PREVIOUS
    recover
    if [[ -n $EXPECT_VERSION_ID && $EXPECT_VERSION_ID != "$ST_VERSION_ID" ]]; then
        finish 0 superseded "the committed version is $(q "$ST_VERSION_ID"), not $(q "$EXPECT_VERSION_ID"): nothing done"
    fi
    local target=${ROLLBACK_TO:-$ST_PREVIOUS} old=$ST_CURRENT
    [[ -n $target ]] || finish 2 failed "bad input: no previous release to roll back to"
    [[ -d $APP_ROOT/releases/$target ]] || finish 2 failed "bad input: release $target does not exist"
    if [[ $target == "$old" ]]; then
        ((RECOVERY_FAILED)) && finish 10 rollback_failed "$target is current but could not be recovered"
        finish 0 noop "$target is already current"
    fi
    load_release "$target" || finish 2 failed "bad input: release $target has no readable release.json"
    VERSION_ID=$R_VERSION_ID COMMIT=$R_COMMIT SHA256=$R_SHA256
    log rollback "requested: $old -> $target"
    switch_current "$target" || finish 10 rollback_failed "could not switch current to $target"
    if bring_up "$target"; then
        ST_PREVIOUS=$old ST_CURRENT=$target ST_LAST_GOOD=$target
        ST_VERSION_ID=$R_VERSION_ID ST_COMMIT=$R_COMMIT ST_SHA256=$R_SHA256
        save_state rolled_back
        OUT_RELEASE=$target OUT_PREVIOUS=$old
        finish 0 rolled_back "rolled back to $target on request"
    fi
    OUT_ATTEMPTED=$target
    [[ -n $old ]] || {
        switch_current ""
        finish 10 rollback_failed "requested rollback to $target failed and nothing was current before"
    }
    log rollback "$target is not healthy; switching back to $old"
    switch_current "$old" || finish 10 rollback_failed "could not switch back to $old"
    if bring_up "$old"; then
        save_state failed "$target"
        finish 9 failed "requested rollback to $target failed; $old restored and healthy"
    fi
    save_state rollback_failed "$target"
    finish 10 rollback_failed "requested rollback to $target failed and $old is not healthy either"
}

do_status() {
    if [[ ! -f $APP_ROOT/state.json ]]; then
        finish 0 status "nothing deployed in $APP_ROOT"
    fi
    load_state
    printf '%s\n' "--- $APP_ROOT/state.json"
    cat -- "$APP_ROOT/state.json"
    current_link
    printf '%s\n' "--- current -> ${REPLY:-(none)}" "--- docker compose ps"
    dk compose -p "$APP" ps || true
    OUT_RELEASE=$ST_CURRENT OUT_PREVIOUS=$ST_PREVIOUS VERSION_ID=$ST_VERSION_ID COMMIT=$ST_COMMIT
    finish 0 status "current ${ST_CURRENT:-none}, previous ${ST_PREVIOUS:-none}"
}

main() {
    validate_common
    case $ACTION in
    status) do_status ;;
    rollback)
        validate_rollback
        log start "rollback of $APP/$ENV_NAME in $APP_ROOT"
        do_rollback
        ;;
    deploy)
        validate_deploy
        log start "deploy of $APP/$ENV_NAME version $(q "$VERSION_ID") in $APP_ROOT"
        do_deploy
        ;;
    esac
}

main
