#!/usr/bin/env bash
# deploy-on-host.sh - dropship's host side: what SSM (AWS-RunShellScript) runs as root on
# every target instance. It installs one exact, verified bundle version as a new release
# next to the running one, switches `current` atomically, brings it up with docker compose,
# gates on health, and rolls back by itself when the new release does not come up healthy.
#
# Runs on Amazon Linux 2023 and Ubuntu 22.04/24.04 and assumes only bash (>= 5), coreutils,
# util-linux (flock, setpriv), findutils, awk, curl (>= 7.75, for --aws-sigv4), tar (GNU), gzip
# and docker with Compose v2. Every curl call starts with -q: a .curlrc (HOME, CURL_HOME or
# XDG_CONFIG_HOME of a hand run or a wrapper) must not change a signed request or print a
# token. pigz is used for unpacking when it happens to be installed.
#
# The bundle is downloaded with the instance's own role: credentials from the instance
# metadata service (IMDSv2 at 169.254.169.254, a fixed address, never an input), the request
# signed by curl (SigV4). The inputs hold no credential, so whoever reads the command's
# parameters (ssm:ListCommands) cannot fetch the bundle with them.
#
# Inputs: environment variables only (the Lambda exports them with strict single-quoting;
# nothing here ever evaluates them as code). Empty and unset are the same. The script takes
# them into its own variables and un-exports every DROPSHIP_* at once, so no child (curl,
# docker compose, hooks, containers) sees any input. The role's credentials live only in
# unexported variables and reach curl on its standard input (a config file).
#
#   variable                    meaning (default)
#   DROPSHIP_ACTION             deploy (default) | rollback | status
#   DROPSHIP_APP                app name, [a-z0-9][a-z0-9-]{0,62}
#   DROPSHIP_ENV                environment name, same pattern
#   DROPSHIP_APP_ROOT           absolute host directory of the app, e.g. /opt/dropship/<app>
#   DROPSHIP_BUCKET             bucket of the bundle (recorded)
#   DROPSHIP_KEY                key of the bundle, ending in <app>/<env>.tar.gz (recorded)
#   DROPSHIP_VERSION_ID         S3 version id deployed (printable ASCII, no '/')
#   DROPSHIP_SEQUENCER          S3 event sequencer, hex; empty for an operator's direct redeploy
#   DROPSHIP_SHA256             expected SHA-256 (64 hex) of the downloaded object
#   DROPSHIP_REGION             region of the bucket, e.g. eu-west-1 (the download is signed for it)
#   DROPSHIP_S3_ENDPOINT        https://HOST[:PORT] of S3, no path (http:// only for localhost/127.x.x.x)
#   DROPSHIP_BUNDLE_BYTES       object size in bytes (0: unknown; checked when given)
#   DROPSHIP_UNPACKED_BYTES     unpacked size in bytes, for the first disk preflight (0)
#   DROPSHIP_COMMIT             full commit hash (40 or 64 lower-case hex)
#   DROPSHIP_COMPOSE_FILE       compose file inside the bundle (compose.yaml)
#   DROPSHIP_PROFILES           comma-separated compose profiles ()
#   DROPSHIP_HEALTH_URL         http(s) URL that must answer 2xx; empty: compose --wait only
#   DROPSHIP_HEALTH_TIMEOUT     seconds the health gate waits (60)
#   DROPSHIP_SHARED_PATHS       comma-separated paths under shared/ linked into each release ()
#   DROPSHIP_KEEP_RELEASES      releases kept on disk, the current one included (5)
#   DROPSHIP_REQUIRED_ENV       rules for shared/.env, one per line: NAME [MIN_LENGTH [PATTERN]]
#   DROPSHIP_PRE_SWITCH_HOOK    path inside the release run before the switch ()
#   DROPSHIP_STRATEGY           recreate (default) | start-first (the DROPSHIP_PROXY_* below)
#   DROPSHIP_PROXY_SERVICE      start-first: the compose service switched through the proxy
#   DROPSHIP_PROXY_PORT         start-first: its container port, 1-65535
#   DROPSHIP_PROXY_LISTEN       start-first: IPv4:PORT the proxy publishes on the host
#   DROPSHIP_PROXY_HEALTH_PATH  start-first: path checked on each new container (/)
#   DROPSHIP_PROXY_DRAIN_TIMEOUT start-first: seconds old containers get to finish (30)
#   DROPSHIP_PROXY_IMAGE        start-first: the proxy's image (caddy:2.11.7)
#   DROPSHIP_ROLLBACK_TO        release name for the rollback action (the previous release)
#   DROPSHIP_EXPECT_VERSION_ID  rollback only if this version is the committed one, else superseded
#   DROPSHIP_LOCK_TIMEOUT       seconds to wait for the host lock (300)
#   DROPSHIP_EXECUTION_TIMEOUT  SSM's executionTimeout: the run never starts what it cannot finish (3600)
#
# Exit codes (contract::host::ExitCode):
#    0  deployed, no-op (already current), stale, superseded or requested rollback done
#    2  bad input: nothing touched
#    3  lock not acquired in time
#    4  preflight failed (disk, time left, docker compose missing)
#    5  download, image pull or SHA-256 verification failed
#    6  unpack failed
#    7  compose config or .env invalid
#    8  pre-switch hook failed
#    9  compose up, health or commit failed after the switch; previous release restored and healthy
#   10  rollback also failed, or the run was stopped or found the host unverified: the next
#       run restores the committed release first; otherwise the host needs an operator
#
# Output: every step is logged as `<UTC time> [<step>] <message>`; the last line is
# `DROPSHIP_RESULT {json}` with outcome, release, previous, version_id, commit, exit_code,
# message (and attempted, when a release was tried and not kept). Right before the switch a
# provisional `interrupted` result line is printed: SSM stops a command by SIGKILL to its
# whole process group, so that line is the last one only when the run was killed there.
# SSM keeps only the first 24,000 characters of a command's output, so all output passes one
# filter (cap_output) that stops printing other lines past OUTPUT_BUDGET characters and always
# prints the result lines: the verdict is always inside what SSM keeps. Output of commands
# (docker, the hook) is redacted: .env values never reach it.
#
# Host layout under DROPSHIP_APP_ROOT:
#   releases/<YYYYmmddTHHMMSSZ>-<commit7>/  unpacked bundle + .dropship/{manifest,release}.json
#   shared/                                 .env, data/, ... linked into every release
#   current -> releases/<name>              switched atomically (ln -s tmp && mv -T)
#   proxy/                                  start-first: the proxy's config, admin socket
#                                           and Caddy's autosave (mounted at /config)
#   state.json  deploy.log  .lock           committed state, JSON-lines audit log, flock

set -uo pipefail
shopt -s nullglob
export LC_ALL=C TZ=UTC
umask 022
exec 2>&1

# The command unpacks this script into a private directory of its own and runs it from there
# (dropship_contract::host::packed_script): remove that copy at once; bash reads on from the
# file it has open.
if [[ $0 == */dropship-host.????????/deploy-on-host.sh && -O ${0%/*} ]]; then rm -rf -- "${0%/*}"; fi

# Every line this run prints passes here (see "Output" above). Other lines stop after
# OUTPUT_BUDGET bytes (one notice says so) and are cut at OUTPUT_LINE_MAX bytes. Result lines
# always pass: `DROPSHIP_RESULT` lines whole (at most two, each under 4.5 KB: a version id of
# at most 1,024 bytes and a message cut at 1,000 bytes, both JSON-escaped), the `[result]` log
# line cut like any other. So the output SSM keeps (24,000 characters) holds the last one.
readonly OUTPUT_BUDGET=12000 OUTPUT_LINE_MAX=2000
cap_output() {
    local line used=0 cut=0
    # A signal to the whole group is the script's to handle: the filter ends with its input.
    trap '' TERM INT HUP
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line == "DROPSHIP_RESULT "* ]]; then
            printf '%s\n' "$line"
            continue
        fi
        if ((${#line} > OUTPUT_LINE_MAX)); then
            line="${line:0:OUTPUT_LINE_MAX} ... (line cut)"
        fi
        if [[ $line =~ ^[0-9T:Z-]+\ \[result\]\  ]]; then
            printf '%s\n' "$line"
            continue
        fi
        ((cut)) && continue
        if ((used + ${#line} + 1 > OUTPUT_BUDGET)); then
            cut=1
            printf '%s\n' "... output cut here: SSM keeps only the first 24,000 characters, so no more lines are printed but the result (every run's outcome is in the app root's deploy.log)"
            continue
        fi
        used=$((used + ${#line} + 1))
        printf '%s\n' "$line"
    done
}
exec > >(cap_output) 2>&1
CAP_PID=$!

# Closes this run's output and waits until the filter has printed all of it: the SSM agent
# takes the command as finished when the script exits.
close_output() {
    local i
    exec >&- 2>&-
    wait "$CAP_PID" 2>/dev/null && return
    for ((i = 0; i < 500; i++)); do
        kill -0 "$CAP_PID" 2>/dev/null || return
        sleep 0.01
    done
}

readonly NAME_RE='^[a-z0-9][a-z0-9-]{0,62}$'
readonly RELEASE_RE='^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{7}(-[0-9]+)?$'

# ---------------------------------------------------------------------------------------
# inputs: copied, then un-exported

ACTION=${DROPSHIP_ACTION:-deploy}
APP=${DROPSHIP_APP:-}
ENV_NAME=${DROPSHIP_ENV:-}
APP_ROOT=${DROPSHIP_APP_ROOT:-}
BUCKET=${DROPSHIP_BUCKET:-}
KEY=${DROPSHIP_KEY:-}
IN_VERSION_ID=${DROPSHIP_VERSION_ID:-}
IN_SEQUENCER=${DROPSHIP_SEQUENCER:-}
IN_SHA256=${DROPSHIP_SHA256:-}
REGION=${DROPSHIP_REGION:-}
S3_ENDPOINT=${DROPSHIP_S3_ENDPOINT:-}
BUNDLE_BYTES=${DROPSHIP_BUNDLE_BYTES:-0}
UNPACKED_BYTES=${DROPSHIP_UNPACKED_BYTES:-0}
IN_COMMIT=${DROPSHIP_COMMIT:-}
COMPOSE_FILE=${DROPSHIP_COMPOSE_FILE:-compose.yaml}
PROFILES=${DROPSHIP_PROFILES:-}
HEALTH_URL=${DROPSHIP_HEALTH_URL:-}
HEALTH_TIMEOUT=${DROPSHIP_HEALTH_TIMEOUT:-60}
SHARED_PATHS=${DROPSHIP_SHARED_PATHS:-}
KEEP_RELEASES=${DROPSHIP_KEEP_RELEASES:-5}
REQUIRED_ENV=${DROPSHIP_REQUIRED_ENV:-}
HOOK=${DROPSHIP_PRE_SWITCH_HOOK:-}
STRATEGY=${DROPSHIP_STRATEGY:-recreate}
PROXY_SERVICE=${DROPSHIP_PROXY_SERVICE:-}
PROXY_PORT=${DROPSHIP_PROXY_PORT:-}
PROXY_LISTEN=${DROPSHIP_PROXY_LISTEN:-}
PROXY_HEALTH_PATH=${DROPSHIP_PROXY_HEALTH_PATH:-}
PROXY_DRAIN_TIMEOUT=${DROPSHIP_PROXY_DRAIN_TIMEOUT:-}
PROXY_IMAGE=${DROPSHIP_PROXY_IMAGE:-}
ROLLBACK_TO=${DROPSHIP_ROLLBACK_TO:-}
EXPECT_VERSION_ID=${DROPSHIP_EXPECT_VERSION_ID:-}
LOCK_TIMEOUT=${DROPSHIP_LOCK_TIMEOUT:-300}
EXEC_TIMEOUT=${DROPSHIP_EXECUTION_TIMEOUT:-3600}
for v in "${!DROPSHIP_@}"; do unset "$v"; done
VERSION_ID="" SEQUENCER="" SHA256="" COMMIT=""

# ---------------------------------------------------------------------------------------
# output helpers

STEP=start
log() { # step message
    STEP=$1
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

# Reads "key" from a file this script wrote (one key per line; its values never hold control
# characters). REPLY is the value; returns 1 when the file or key is missing.
json_get() { # file key
    local line v
    REPLY=
    [[ -f $1 ]] || return 1
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ $line == "  \"$2\": "* ]]; then
            v=${line#"  \"$2\": "}
            v=${v%,}
            if [[ $v == \"*\" ]]; then
                v=${v:1:${#v}-2}
                v=${v//\\\\/$'\001'}
                v=${v//\\\"/\"}
                v=${v//\\\//\/}
                v=${v//$'\001'/\\}
            fi
            REPLY=$v
            return 0
        fi
    done <"$1"
    return 1
}

# Writes a one-key-per-line JSON object atomically (temp file, fsync, rename); returns 1
# and leaves the old file in place when any of it fails (a full disk).
# json_write FILE key value [key value ...]; format, health_timeout, deployed_us and
# keep_releases are numbers, everything else is a string.
json_write() {
    local file=$1 tmp out="{" sep=$'\n'
    shift
    while (($# >= 2)); do
        if [[ $1 =~ ^(format|health_timeout|deployed_us|keep_releases)$ && $2 =~ ^(0|[1-9][0-9]{0,17})$ ]]; then
            REPLY=$2
        else
            json_str "$2"
        fi
        out+="$sep  \"$1\": $REPLY"
        sep=$',\n'
        shift 2
    done
    tmp="$file.tmp.$$"
    if { printf '%s\n}\n' "$out" >"$tmp"; } 2>/dev/null && sync -- "$tmp" && mv -f -- "$tmp" "$file"; then
        return 0
    fi
    rm -f -- "$tmp"
    return 1
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

# .env values (>= 6 bytes) never reach the output: every docker line passes through here.
REDACT=()
redact() {
    local line v
    while IFS= read -r line || [[ -n $line ]]; do
        for v in "${REDACT[@]}"; do line=${line//"$v"/<redacted .env value>}; done
        printf '%s\n' "$line"
    done
}

# ---------------------------------------------------------------------------------------
# children: in the background (a signal is handled at once, not when they finish), without
# the lock descriptor (fd 9), and killed by the kernel when this script dies (setpriv)

DIE_WITH_ME=()
setpriv --pdeathsig KILL -- true 2>/dev/null && DIE_WITH_ME=(setpriv --pdeathsig KILL --)
CHILDREN=()

spawn() { # command...: started; stdin passed on
    "${DIE_WITH_ME[@]}" "$@" <&0 9>&- &
    CHILDREN+=("$!")
}

reap() { # pid: its status
    local rc
    wait "$1"
    rc=$?
    CHILDREN=()
    return "$rc"
}

run() { # command...: its status
    spawn "$@"
    reap "$!"
}

# run_to OUT ERR command...: run with the command's stdout to file OUT, or its stderr to file
# ERR (the other ""). The redirection sits on the child alone: on the call of `run` it would
# hold while the script waits, and a signal's trap would print the result line into the file.
run_to() {
    local out=$1 err=$2
    shift 2
    if [[ -n $out ]]; then
        "${DIE_WITH_ME[@]}" "$@" <&0 9>&- >"$out" &
    else
        "${DIE_WITH_ME[@]}" "$@" <&0 9>&- 2>"$err" &
    fi
    CHILDREN+=("$!")
    reap "$!"
}

# Runs a command with its stdout and stderr redacted (no .env value reaches the output);
# its status.
run_redacted() { # command...
    { "${DIE_WITH_ME[@]}" "$@" 2>&1 </dev/null | redact; exit "${PIPESTATUS[0]}"; } 9>&- &
    CHILDREN+=("$!")
    reap "$!"
}

dk() { run_redacted docker "$@"; }

# ---------------------------------------------------------------------------------------
# result and exit

RESULT_DONE=0
OUT_RELEASE=""
OUT_PREVIOUS=""
OUT_ATTEMPTED=""
LOCKED=0
RECOVERY_FAILED=0
RECOVERY_MSG=""

result_line() { # outcome code message (cut to 1,000 bytes: the line must stay whole)
    local msg=$3
    ((${#msg} <= 1000)) || msg="${msg:0:1000} ... (cut)"
    json_line outcome "$1" release "$OUT_RELEASE" previous "$OUT_PREVIOUS" \
        version_id "$VERSION_ID" commit "$COMMIT" exit_code "$2" message "$msg" \
        attempted "$OUT_ATTEMPTED"
    printf 'DROPSHIP_RESULT %s\n' "$REPLY"
}

# finish CODE OUTCOME MESSAGE: audit-log (when holding the lock), print the result, exit.
finish() {
    local code=$1 outcome=$2 msg=$3
    # A run that found the host unverified and could not fix it never reports less.
    if ((RECOVERY_FAILED)) && [[ $outcome == failed ]]; then
        code=10 outcome=rollback_failed msg="$msg; and the host is not verified: $RECOVERY_MSG"
    fi
    RESULT_DONE=1
    cleanup
    [[ -n ${TRAFFIC:-} ]] && msg+="; traffic: $TRAFFIC"
    if ((LOCKED)); then
        now_iso
        json_line time "$REPLY" action "$ACTION" outcome "$outcome" exit_code "$code" \
            release "$OUT_RELEASE" previous "$OUT_PREVIOUS" attempted "$OUT_ATTEMPTED" \
            version_id "$VERSION_ID" sequencer "$SEQUENCER" commit "$COMMIT" \
            sha256 "$SHA256" message "$msg"
        { printf '%s\n' "$REPLY" >>"$APP_ROOT/deploy.log"; } 2>/dev/null ||
            log audit "could not append to deploy.log"
    fi
    log result "$outcome (exit $code): $msg"
    result_line "$outcome" "$code" "$msg"
    close_output
    exit "$code"
}

bad_input() { # message
    finish 2 failed "bad input: $1"
}

# Temporary things a failed or interrupted run must not leave behind.
# TMP_DIR (.download.<pid>/, mode 0700) holds the download and its listing: the bundle may
# hold secrets, so no other user may read it from its first byte.
TMP_DIR="" TMP_DOWNLOAD="" PARTIAL_DIR="" NEW=""

cleanup() {
    local p
    # Reaped at once with stderr closed: bash would otherwise print a "Killed" job notice,
    # possibly after the result line, which must stay the last one.
    for p in "${CHILDREN[@]}"; do
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    CHILDREN=()
    [[ -n $TMP_DIR ]] && rm -rf -- "$TMP_DIR"
    [[ -n $PARTIAL_DIR && -d $PARTIAL_DIR ]] && rm -rf -- "$PARTIAL_DIR"
    # A release that was unpacked but never switched to was never live: remove it, unless
    # a signal came right after the switch (then `current` points at it; the next run
    # decides).
    if [[ -n $NEW && -e $APP_ROOT/releases/$NEW/.dropship/unswitched ]]; then
        current_link
        [[ $REPLY == "$NEW" ]] || rm -rf -- "${APP_ROOT:?}/releases/$NEW"
    fi
    TMP_DIR="" TMP_DOWNLOAD="" PARTIAL_DIR=""
}

on_exit() {
    local rc=$?
    ((RESULT_DONE)) && return
    RESULT_DONE=1
    cleanup
    log result "the script stopped unexpectedly (status $rc)"
    result_line "$(interrupted_or failed)" 10 "the script stopped unexpectedly (status $rc) during $STEP; the next run restores the committed release first"
    close_output
    exit 10
}
trap on_exit EXIT
on_signal() {
    ((RESULT_DONE)) && return
    finish 10 "$(interrupted_or failed)" "stopped by $1 during $STEP; the next run restores the committed release first"
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT
trap 'on_signal SIGHUP' HUP

# `interrupted` once a switch may have happened (state.json has a pending operation).
ST_PENDING=""
interrupted_or() { if [[ -n $ST_PENDING ]]; then echo interrupted; else echo "$1"; fi; }

# ---------------------------------------------------------------------------------------
# input validation: nothing on disk is touched until all of it passed. The bounds are the
# contract's (dropship_contract::manifest::bounds), so a bundle the Lambda accepted always
# passes here.

has_ctrl() { [[ $1 == *[$'\001'-$'\037'$'\177']* ]]; }

# A relative path inside a release: [A-Za-z0-9._-] components, none empty, '.' or '..',
# at most 255 bytes, not in .dropship/.
valid_relpath() {
    local p=$1
    [[ ${#p} -le 255 && $p =~ ^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$ && "/$p/" != */../* &&
        "/$p/" != */./* && $p != .dropship && $p != .dropship/* ]]
}

# Whether $1 is $2 or lies beneath it.
within() { [[ $1 == "$2" || $1 == "$2"/* ]]; }

# DROPSHIP_S3_ENDPOINT's rule, the contract's (dropship_contract::host::check_s3_endpoint):
# https://HOST[:PORT], or http:// only for localhost or 127.x.x.x; no path, query or user;
# at most 255 bytes; a port 1-65535 without leading zeros.
valid_s3_endpoint() {
    local e=$1 port o
    ((${#e} <= 255)) || return 1
    if [[ $e =~ ^https://([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:([1-9][0-9]{0,4}))?$ ]]; then
        port=${BASH_REMATCH[4]}
        [[ ${BASH_REMATCH[1]} != *..* ]] || return 1
    elif [[ $e =~ ^http://(localhost|127\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3}))(:([1-9][0-9]{0,4}))?$ ]]; then
        port=${BASH_REMATCH[6]}
        for o in "${BASH_REMATCH[@]:2:3}"; do
            [[ -z $o ]] || ((10#$o <= 255)) || return 1
        done
    else
        return 1
    fi
    [[ -z $port ]] || ((10#$port <= 65535))
}

valid_number() { # value min max
    [[ $1 =~ ^[0-9]{1,18}$ ]] && ((10#$1 >= $2 && 10#$1 <= $3))
}

validate_common() {
    case $ACTION in
    deploy | rollback | status) ;;
    *) bad_input "DROPSHIP_ACTION must be deploy, rollback or status, got $(q "$ACTION")" ;;
    esac
    [[ $APP =~ $NAME_RE ]] || bad_input "DROPSHIP_APP must match [a-z0-9][a-z0-9-]{0,62}, got $(q "$APP")"
    [[ $ENV_NAME =~ $NAME_RE ]] || bad_input "DROPSHIP_ENV must match [a-z0-9][a-z0-9-]{0,62}, got $(q "$ENV_NAME")"
    [[ $APP_ROOT =~ ^/[A-Za-z0-9._@+/-]+$ && "$APP_ROOT/" != */../* && "$APP_ROOT/" != */./* && $APP_ROOT != *//* ]] ||
        bad_input "DROPSHIP_APP_ROOT must be an absolute path of [A-Za-z0-9._@+/-] without '..', '.' or '//', got $(q "$APP_ROOT")"
    APP_ROOT=${APP_ROOT%/}
    [[ -n $APP_ROOT ]] || bad_input "DROPSHIP_APP_ROOT must not be /"
    valid_number "$LOCK_TIMEOUT" 0 86400 || bad_input "DROPSHIP_LOCK_TIMEOUT must be 0..86400 seconds, got $(q "$LOCK_TIMEOUT")"
    valid_number "$EXEC_TIMEOUT" 1 172800 || bad_input "DROPSHIP_EXECUTION_TIMEOUT must be 1..172800 seconds, got $(q "$EXEC_TIMEOUT")"
    LOCK_TIMEOUT=$((10#$LOCK_TIMEOUT)) EXEC_TIMEOUT=$((10#$EXEC_TIMEOUT))
}

# Parsed DROPSHIP_REQUIRED_ENV: parallel arrays.
RULE_NAMES=() RULE_MINS=() RULE_PATTERNS=()

validate_deploy() {
    local v p o i n m line
    VERSION_ID=$IN_VERSION_ID
    { [[ -n $VERSION_ID && ${#VERSION_ID} -le 1024 && $VERSION_ID != */* ]] && ! has_ctrl "$VERSION_ID"; } ||
        bad_input "DROPSHIP_VERSION_ID must be 1..1024 printable characters without '/', got $(q "$VERSION_ID")"
    SEQUENCER=$IN_SEQUENCER
    [[ $SEQUENCER =~ ^[0-9A-Fa-f]{0,128}$ ]] || bad_input "DROPSHIP_SEQUENCER must be hex or empty, got $(q "$SEQUENCER")"
    SEQUENCER=${SEQUENCER^^}
    SHA256=$IN_SHA256
    [[ $SHA256 =~ ^[0-9A-Fa-f]{64}$ ]] || bad_input "DROPSHIP_SHA256 must be 64 hex characters, got $(q "$SHA256")"
    SHA256=${SHA256,,}
    COMMIT=$IN_COMMIT
    [[ $COMMIT =~ ^[0-9a-f]{40}([0-9a-f]{24})?$ ]] || bad_input "DROPSHIP_COMMIT must be 40 or 64 lower-case hex characters, got $(q "$COMMIT")"
    [[ $BUCKET =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]] || bad_input "DROPSHIP_BUCKET is not a bucket name, got $(q "$BUCKET")"
    { [[ ($KEY == "$APP/$ENV_NAME.tar.gz" || $KEY == */"$APP/$ENV_NAME.tar.gz") && ${#KEY} -le 1024 ]] && ! has_ctrl "$KEY"; } ||
        bad_input "DROPSHIP_KEY must end in $APP/$ENV_NAME.tar.gz, got $(q "$KEY")"
    [[ ${#REGION} -le 32 && $REGION =~ ^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$ ]] ||
        bad_input "DROPSHIP_REGION must be an AWS region name such as eu-west-1, got $(q "$REGION")"
    valid_s3_endpoint "$S3_ENDPOINT" ||
        bad_input "DROPSHIP_S3_ENDPOINT must be https://HOST[:PORT] without a path (http:// only for localhost or 127.x.x.x), at most 255 bytes, got $(q "$S3_ENDPOINT")"
    valid_number "$BUNDLE_BYTES" 0 999999999999999 || bad_input "DROPSHIP_BUNDLE_BYTES must be a number, got $(q "$BUNDLE_BYTES")"
    valid_number "$UNPACKED_BYTES" 0 999999999999999 || bad_input "DROPSHIP_UNPACKED_BYTES must be a number, got $(q "$UNPACKED_BYTES")"
    BUNDLE_BYTES=$((10#$BUNDLE_BYTES)) UNPACKED_BYTES=$((10#$UNPACKED_BYTES))
    # List inputs are split with `read`, which stops at a newline: refuse control characters
    # first so nothing after one can slip past the per-item checks.
    for p in PROFILES SHARED_PATHS; do
        has_ctrl "${!p}" && bad_input "DROPSHIP_$p must not contain control characters, got $(q "${!p}")"
    done
    valid_relpath "$COMPOSE_FILE" ||
        bad_input "DROPSHIP_COMPOSE_FILE must be a relative path of [A-Za-z0-9._-] components (at most 255 bytes, not in .dropship), got $(q "$COMPOSE_FILE")"
    if [[ -n $HOOK ]]; then
        valid_relpath "$HOOK" ||
            bad_input "DROPSHIP_PRE_SWITCH_HOOK must be a relative path of [A-Za-z0-9._-] components (at most 255 bytes, not in .dropship), got $(q "$HOOK")"
    fi
    if [[ -n $PROFILES ]]; then
        IFS=, read -r -a v <<<"$PROFILES"
        ((${#v[@]} <= 16)) || bad_input "DROPSHIP_PROFILES has more than 16 profiles"
        for p in "${v[@]}"; do
            [[ $p =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ ]] || bad_input "DROPSHIP_PROFILES has an invalid profile $(q "$p") ([A-Za-z0-9][A-Za-z0-9_.-]*, at most 64 bytes)"
        done
    fi
    if [[ -n $HEALTH_URL ]]; then
        { [[ ${#HEALTH_URL} -le 2048 && $HEALTH_URL =~ ^https?://[^[:space:]]+$ ]] && ! has_ctrl "$HEALTH_URL"; } ||
            bad_input "DROPSHIP_HEALTH_URL must be an http(s) URL of at most 2048 bytes without spaces, got $(q "$HEALTH_URL")"
    fi
    valid_number "$HEALTH_TIMEOUT" 1 3600 || bad_input "DROPSHIP_HEALTH_TIMEOUT must be 1..3600 seconds, got $(q "$HEALTH_TIMEOUT")"
    HEALTH_TIMEOUT=$((10#$HEALTH_TIMEOUT))
    if [[ -n $SHARED_PATHS ]]; then
        IFS=, read -r -a v <<<"$SHARED_PATHS"
        ((${#v[@]} <= 16)) || bad_input "DROPSHIP_SHARED_PATHS has more than 16 paths"
        for ((i = 0; i < ${#v[@]}; i++)); do
            p=${v[i]}
            valid_relpath "$p" || bad_input "DROPSHIP_SHARED_PATHS has an invalid path $(q "$p") ([A-Za-z0-9._-] components, at most 255 bytes, not in .dropship)"
            for o in "${v[@]:0:i}"; do
                { within "$p" "$o" || within "$o" "$p"; } && bad_input "DROPSHIP_SHARED_PATHS: $(q "$p") overlaps $(q "$o") (a shared path inside another would be deleted through its link)"
            done
            for o in "$COMPOSE_FILE" "$HOOK"; do
                [[ -n $o ]] && within "$o" "$p" && bad_input "DROPSHIP_SHARED_PATHS: $(q "$p") would hold $(q "$o"), which must come from the bundle"
            done
        done
    fi
    valid_number "$KEEP_RELEASES" 2 100 || bad_input "DROPSHIP_KEEP_RELEASES must be 2..100, got $(q "$KEEP_RELEASES")"
    KEEP_RELEASES=$((10#$KEEP_RELEASES))
    if [[ -n $REQUIRED_ENV ]]; then
        mapfile -t v <<<"$REQUIRED_ENV"
        ((${#v[@]} <= 32)) || bad_input "DROPSHIP_REQUIRED_ENV has more than 32 rules"
        for line in "${v[@]}"; do
            if ! [[ $line =~ ^([A-Za-z_][A-Za-z0-9_]{0,63})(\ (0|[1-9][0-9]{0,3})(\ (.+))?)?$ ]] || has_ctrl "$line" ||
                ((10#${BASH_REMATCH[3]:-0} > 4096 || ${#BASH_REMATCH[5]} > 128)); then
                bad_input "DROPSHIP_REQUIRED_ENV has an invalid rule $(q "$line") (NAME [MIN_LENGTH<=4096 [PATTERN of at most 128 bytes]])"
            fi
            n=${BASH_REMATCH[1]} m=${BASH_REMATCH[3]:-0} p=${BASH_REMATCH[5]}
            [[ " ${RULE_NAMES[*]} " == *" $n "* ]] && bad_input "DROPSHIP_REQUIRED_ENV names $n twice"
            if [[ -n $p ]]; then
                [[ x =~ ^($p)$ ]]
                (($? != 2)) || bad_input "DROPSHIP_REQUIRED_ENV: the pattern for $n is not a valid extended regular expression"
            fi
            RULE_NAMES+=("$n") RULE_MINS+=("$m") RULE_PATTERNS+=("$p")
        done
    fi
    validate_strategy
}

# DROPSHIP_STRATEGY and DROPSHIP_PROXY_*: the rules of contract::manifest::ProxySettings.
readonly SERVICE_RE='^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'
readonly OCTET='(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])'
readonly LISTEN_RE="^$OCTET\\.$OCTET\\.$OCTET\\.$OCTET:([1-9][0-9]{0,4})\$"
validate_strategy() {
    local v
    case $STRATEGY in
    recreate)
        for v in PROXY_SERVICE PROXY_PORT PROXY_LISTEN PROXY_HEALTH_PATH PROXY_DRAIN_TIMEOUT PROXY_IMAGE; do
            [[ -z ${!v} ]] || bad_input "DROPSHIP_$v is set but DROPSHIP_STRATEGY is recreate (set strategy = \"start-first\" or remove [deploy.proxy])"
        done
        return 0
        ;;
    start-first) ;;
    *) bad_input "DROPSHIP_STRATEGY must be recreate or start-first, got $(q "$STRATEGY")" ;;
    esac
    [[ -n $PROXY_SERVICE ]] || bad_input "DROPSHIP_STRATEGY is start-first but DROPSHIP_PROXY_SERVICE is empty: add a [deploy.proxy] table naming the service, port and listen address"
    [[ $PROXY_SERVICE =~ $SERVICE_RE ]] ||
        bad_input "DROPSHIP_PROXY_SERVICE must be a compose service name ([A-Za-z0-9][A-Za-z0-9_.-]*, at most 64 bytes), got $(q "$PROXY_SERVICE")"
    valid_number "$PROXY_PORT" 1 65535 || bad_input "DROPSHIP_PROXY_PORT must be a container port, 1 to 65535, got $(q "$PROXY_PORT")"
    PROXY_PORT=$((10#$PROXY_PORT))
    { [[ $PROXY_LISTEN =~ $LISTEN_RE ]] && ((10#${BASH_REMATCH[5]} <= 65535)); } ||
        bad_input "DROPSHIP_PROXY_LISTEN must be IPv4:PORT such as 127.0.0.1:8080 or 0.0.0.0:80 (port 1 to 65535), got $(q "$PROXY_LISTEN")"
    [[ -z $PROXY_HEALTH_PATH ]] && PROXY_HEALTH_PATH=/
    [[ $PROXY_HEALTH_PATH =~ ^/[!-~]{0,1023}$ ]] ||
        bad_input "DROPSHIP_PROXY_HEALTH_PATH must be a path starting with / of at most 1024 printable bytes without spaces, got $(q "$PROXY_HEALTH_PATH")"
    [[ -z $PROXY_DRAIN_TIMEOUT ]] && PROXY_DRAIN_TIMEOUT=30
    valid_number "$PROXY_DRAIN_TIMEOUT" 0 3600 || bad_input "DROPSHIP_PROXY_DRAIN_TIMEOUT must be 0 to 3600 seconds, got $(q "$PROXY_DRAIN_TIMEOUT")"
    PROXY_DRAIN_TIMEOUT=$((10#$PROXY_DRAIN_TIMEOUT))
    [[ -z $PROXY_IMAGE ]] && PROXY_IMAGE=caddy:2.11.7
    [[ $PROXY_IMAGE =~ ^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,199}$ ]] ||
        bad_input "DROPSHIP_PROXY_IMAGE must be an image reference such as caddy:2.11.7 ([A-Za-z0-9._/:@-], at most 200 bytes), got $(q "$PROXY_IMAGE")"
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
ST_SHA256="" ST_LAST_OUTCOME="" ST_KEEP=5 PROJECT="" STATE_FOUND=0

# Reads state.json. A missing or unreadable one is never taken as "nothing deployed" while
# `current` points at a release: that release is adopted as the candidate, and recovery
# verifies it before anything else happens.
load_state() {
    local f="$APP_ROOT/state.json" n st_app st_env
    if json_get "$f" format && json_get "$f" current; then
        STATE_FOUND=1
        json_get "$f" current && ST_CURRENT=$REPLY
        json_get "$f" previous && ST_PREVIOUS=$REPLY
        json_get "$f" last_good && ST_LAST_GOOD=$REPLY
        json_get "$f" version_id && ST_VERSION_ID=$REPLY
        json_get "$f" sequencer && ST_SEQUENCER=$REPLY
        json_get "$f" commit && ST_COMMIT=$REPLY
        json_get "$f" sha256 && ST_SHA256=$REPLY
        json_get "$f" last_outcome && ST_LAST_OUTCOME=$REPLY
        json_get "$f" pending && ST_PENDING=$REPLY
        json_get "$f" keep_releases && [[ $REPLY =~ ^[0-9]{1,3}$ ]] && ST_KEEP=$REPLY
        # Written before projects were recorded: the project was always the app.
        json_get "$f" project && PROJECT=$REPLY || PROJECT=$APP
        json_get "$f" app && st_app=$REPLY || st_app=$APP
        json_get "$f" env && st_env=$REPLY || st_env=$ENV_NAME
        # One app root holds one app and one environment: a second one would compare its
        # sequencers with, and roll back to, the other's releases.
        if [[ $ACTION != status && ($st_app != "$APP" || $st_env != "$ENV_NAME") ]]; then
            bad_input "$APP_ROOT holds $(q "$st_app")/$(q "$st_env"), not $APP/$ENV_NAME: give each environment its own app root (put {env} in the Lambda's DROPSHIP_APP_ROOT, e.g. /opt/dropship/{app}/{env})"
        fi
    else
        [[ -e $f ]] && log state "state.json is unreadable; it is rebuilt once what runs is verified"
        current_link
        ST_CURRENT=$REPLY
        # Which project ran it: the one whose containers run from this app root.
        PROJECT="$APP-$ENV_NAME"
        project_containers "$APP" && [[ $REPLY == *"$APP_ROOT/releases/"* ]] && PROJECT=$APP
        if [[ -z $ST_CURRENT ]] && running_release; then
            ST_CURRENT=$REPLY
            log state "current names no release; the project's containers run from $ST_CURRENT: adopting it"
        fi
        [[ -n $ST_CURRENT ]] && adopt_release "$ST_CURRENT"
    fi
    [[ $PROJECT =~ ^[a-z0-9][a-z0-9_-]{0,127}$ ]] || PROJECT=$APP
    # Never trust names read back from disk more than inputs.
    for n in ST_CURRENT ST_PREVIOUS ST_LAST_GOOD; do
        if [[ -n ${!n} && ! ${!n} =~ $RELEASE_RE ]]; then
            log state "ignoring invalid release name in state.json: $(q "${!n}")"
            printf -v "$n" '%s' ""
        fi
    done
}

# The one release of this app root that every container of the project runs from, in REPLY;
# returns 1 when there is none (no container, or containers of several releases).
running_release() {
    local lines line d svc def n cands=() cand
    project_containers "$PROJECT" || return 1
    mapfile -t lines <<<"$REPLY"
    for line in "${lines[@]}"; do
        IFS='|' read -r _ d _ _ _ <<<"$line"
        [[ $d == "$APP_ROOT/releases/"* ]] || continue
        n=${d#"$APP_ROOT/releases/"}
        n=${n%%/*}
        [[ $n =~ $RELEASE_RE && -d $APP_ROOT/releases/$n && " ${cands[*]} " != *" $n "* ]] && cands+=("$n")
    done
    # Newest first: a long-lived service may run from an older release with the same
    # definition (its .dropship/services says so).
    mapfile -t cands < <(printf '%s\n' "${cands[@]}" | sort -r)
    for cand in "${cands[@]}"; do
        [[ -n $cand ]] || continue
        for line in "${lines[@]}"; do
            IFS='|' read -r _ d _ svc def <<<"$line"
            [[ -z $d ]] || container_of "$cand" "$d" "$svc" "$def" || continue 2
        done
        REPLY=$cand
        return 0
    done
    return 1
}

# Whether a container (working directory, service, dropship.def label) belongs to release
# NAME: created from it, or with the very definition NAME has for that service (a
# long-lived service left running since an earlier release; `.dropship/services`).
container_of() { # name dir service def
    [[ $2 == "$APP_ROOT/releases/$1" || $2 == "$APP_ROOT/releases/$1/"* ]] && return 0
    [[ -n $4 && -f $APP_ROOT/releases/$1/.dropship/services ]] &&
        grep -qxF -- "$3 $4" "$APP_ROOT/releases/$1/.dropship/services"
}

# State rebuilt from disk after state.json was lost, for release NAME (the one that runs):
# its own record (version, commit, SHA-256); the newest sequencer that it or any committed
# deploy recorded (deploy.log), so an older event stays stale; and the release current before
# it (deploy.log, else the newest older release on disk), so `rollback` keeps its target.
adopt_release() { # name
    local name=$1 line seq="" prev="" re_prev re_seq f t mine=0 best=0
    load_release "$name" || return 0
    ST_VERSION_ID=$R_VERSION_ID ST_COMMIT=$R_COMMIT ST_SHA256=$R_SHA256 ST_LAST_GOOD=""
    [[ $R_SEQUENCER =~ ^[0-9A-F]{1,128}$ ]] && seq=$R_SEQUENCER
    re_prev='"outcome":"(deployed|rolled_back)","exit_code":0,"release":"'$name'","previous":"([^"]*)"'
    re_seq='"outcome":"deployed","exit_code":0,.*"sequencer":"([0-9A-F]{1,128})"'
    if [[ -f $APP_ROOT/deploy.log ]]; then
        while IFS= read -r line || [[ -n $line ]]; do
            [[ $line =~ $re_prev ]] && prev=${BASH_REMATCH[2]}
            if [[ $line =~ $re_seq ]] && { [[ -z $seq ]] || seq_older "$seq" "${BASH_REMATCH[1]}"; }; then
                seq=${BASH_REMATCH[1]}
            fi
        done <"$APP_ROOT/deploy.log"
    fi
    if [[ ! $prev =~ $RELEASE_RE || $prev == "$name" || ! -d $APP_ROOT/releases/$prev ]]; then
        prev=""
        json_get "$APP_ROOT/releases/$name/.dropship/release.json" deployed_us && [[ $REPLY =~ ^[0-9]{1,18}$ ]] && mine=$REPLY
        for f in "$APP_ROOT"/releases/*/.dropship/release.json; do
            t=${f%/.dropship/release.json}
            t=${t##*/}
            [[ $t =~ $RELEASE_RE && $t != "$name" && ! -e $APP_ROOT/releases/$t/.dropship/unswitched ]] || continue
            { json_get "$f" deployed_us && [[ $REPLY =~ ^[0-9]{1,18}$ ]]; } || continue
            ((REPLY < mine && REPLY > best)) && best=$REPLY prev=$t
        done
    fi
    ST_PREVIOUS=$prev ST_SEQUENCER=$seq
    log state "rebuilt from releases/$name and deploy.log: version $(q "$ST_VERSION_ID"), previous ${prev:-none}, sequencer ${seq:-none}"
}

# save_state OUTCOME [LAST_FAILED]: returns 1 when state.json could not be written.
save_state() {
    now_iso
    json_write "$APP_ROOT/state.json" \
        format 1 app "$APP" env "$ENV_NAME" project "$PROJECT" \
        current "$ST_CURRENT" previous "$ST_PREVIOUS" last_good "$ST_LAST_GOOD" \
        version_id "$ST_VERSION_ID" sequencer "$ST_SEQUENCER" commit "$ST_COMMIT" \
        sha256 "$ST_SHA256" keep_releases "$ST_KEEP" time "$REPLY" last_outcome "$1" \
        last_failed "${2:-}" pending "$ST_PENDING" && STATE_FOUND=1 ST_LAST_OUTCOME=$1
}

# Loads a release's recorded settings into R_* (from its .dropship/release.json).
R_COMPOSE_FILE="" R_PROFILES="" R_HEALTH_URL="" R_HEALTH_TIMEOUT="" R_VERSION_ID="" R_COMMIT=""
R_SHA256="" R_SEQUENCER="" R_SHARED_PATHS="" R_STRATEGY=recreate R_PROXY_SERVICE="" R_PROXY_PORT=""
R_PROXY_LISTEN="" R_PROXY_HEALTH_PATH="" R_PROXY_DRAIN=0 R_PROXY_IMAGE=""
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
    json_get "$f" sequencer && R_SEQUENCER=$REPLY || R_SEQUENCER=""
    json_get "$f" shared_paths && R_SHARED_PATHS=$REPLY || R_SHARED_PATHS=""
    [[ $R_COMPOSE_FILE =~ ^[A-Za-z0-9._/-]+$ && "/$R_COMPOSE_FILE/" != */../* ]] || return 1
    [[ $R_HEALTH_TIMEOUT =~ ^[0-9]{1,4}$ ]] || R_HEALTH_TIMEOUT=60
    # Releases unpacked before strategies existed ran `recreate`. A recorded start-first
    # release must still satisfy the rules it was validated by.
    R_STRATEGY=recreate R_PROXY_SERVICE="" R_PROXY_PORT="" R_PROXY_LISTEN="" R_PROXY_HEALTH_PATH=""
    R_PROXY_DRAIN=0 R_PROXY_IMAGE=""
    if json_get "$f" strategy && [[ $REPLY == start-first ]]; then
        R_STRATEGY="start-first"
        json_get "$f" proxy_service && R_PROXY_SERVICE=$REPLY
        json_get "$f" proxy_port && R_PROXY_PORT=$REPLY
        json_get "$f" proxy_listen && R_PROXY_LISTEN=$REPLY
        json_get "$f" proxy_health_path && R_PROXY_HEALTH_PATH=$REPLY
        json_get "$f" proxy_drain && R_PROXY_DRAIN=$REPLY
        json_get "$f" proxy_image && R_PROXY_IMAGE=$REPLY
        [[ $R_PROXY_SERVICE =~ $SERVICE_RE && $R_PROXY_PORT =~ ^[1-9][0-9]{0,4}$ && $R_PROXY_LISTEN =~ $LISTEN_RE &&
            $R_PROXY_HEALTH_PATH =~ ^/[!-~]{0,1023}$ && $R_PROXY_DRAIN =~ ^[0-9]{1,4}$ &&
            $R_PROXY_IMAGE =~ ^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,199}$ ]] || return 1
    fi
    return 0
}

current_link() { # -> REPLY: release name `current` points at, or ""
    local t
    REPLY=""
    t=$(readlink -- "$APP_ROOT/current" 2>/dev/null) || return 0
    release_of_target "$t"
}

# The release a `current` link target names, in REPLY ("" for none). The script writes
# `releases/<name>`; a hand or another tool may write `releases/<name>/`, `./releases/<name>`
# or the absolute path of a release of this app root (also through a symlinked app root).
release_of_target() { # target
    local t=$1 real
    REPLY=""
    while [[ $t == ?*/ ]]; do t=${t%/}; done
    t=${t#./}
    if [[ $t == /* ]]; then
        if [[ $t == "$APP_ROOT/releases/"* ]]; then
            t=${t#"$APP_ROOT/"}
        else
            real=$(realpath -e -- "$APP_ROOT" 2>/dev/null) || return 0
            [[ $t == "$real/releases/"* ]] || return 0
            t=${t#"$real/"}
        fi
    fi
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

# The project's containers, running or not, one per line in REPLY: "<condition>|<working
# directory (compose's label)>|<name>|<service>|<definition hash (dropship.def label)>" ('|'
# is in no app root, name or label value here; with tabs, IFS would take two in a row for
# one). The condition is `up` (running and not unhealthy, or a
# one-off that exited 0 and is not restarted), `failing` (unhealthy, restarting) or `stopped`
# (any other state: exited, created, paused, dead). Returns 1 when docker cannot be asked.
project_containers() { # project
    local ids out status code policy health dir name svc def cond
    ids=$(dk ps -aq --filter "label=com.docker.compose.project=$1") || return 1
    REPLY=""
    [[ -n $ids ]] || return 0
    mapfile -t ids <<<"$ids"
    out=$(dk inspect --format '{{.State.Status}}|{{.State.ExitCode}}|{{.HostConfig.RestartPolicy.Name}}|{{if .State.Health}}{{.State.Health.Status}}{{end}}|{{index .Config.Labels "com.docker.compose.project.working_dir"}}|{{.Name}}|{{index .Config.Labels "com.docker.compose.service"}}|{{index .Config.Labels "dropship.def"}}' "${ids[@]}") ||
        return 1
    while IFS='|' read -r status code policy health dir name svc def; do
        [[ -n $status ]] || continue
        case $status in
        running) cond=up && [[ $health == unhealthy ]] && cond=failing ;;
        restarting) cond=failing ;;
        exited) cond=stopped && [[ $code == 0 && $policy =~ ^(|no|on-failure)$ ]] && cond=up ;;
        *) cond=stopped ;;
        esac
        REPLY+="$cond|$dir|${name#/}|$svc|$def"$'\n'
    done <<<"$out"
    REPLY=${REPLY%$'\n'}
}

COMPOSE=()
compose_args() { # release-dir compose-file profiles
    local p list
    COMPOSE=(compose -p "$PROJECT" -f "$1/$2")
    [[ -f $1/.env ]] && COMPOSE+=(--env-file "$1/.env")
    if [[ -n $3 ]]; then
        IFS=, read -r -a list <<<"$3"
        for p in "${list[@]}"; do COMPOSE+=(--profile "$p"); done
    fi
}

# Seconds one release's gate may take: compose up (create, start, --wait) then the health URL.
gate_secs() { REPLY=$((2 * $1 + 30)); }

# Each service's definition as `docker compose config --format json` renders it, one line at a
# time: "<service>\t<line>". A path inside the release that lies in a shared path is written
# `@shared/<path>` (the same data in every release); any other path inside the release keeps
# the release's name, so a service that mounts release files changes with every release.
# shellcheck disable=SC2016 # an awk program: its $ are awk's
readonly SERVICES_AWK='
BEGIN { n = split(shared, sp, ",") }
/^  "services": \{$/ { on = 1; next }
on && /^  \}/ { on = 0; next }
on && /^    "[^"]+": \{$/ { svc = substr($0, 6); sub(/": \{$/, "", svc); next }
on && svc != "" {
    line = $0
    for (i = 1; i <= n; i++) {
        p = "\"" dir "/" sp[i]
        while ((k = index(line, p)) > 0) {
            c = substr(line, k + length(p), 1)
            if (c != "\"" && c != "/") break
            line = substr(line, 1, k - 1) "\"@shared/" sp[i] substr(line, k + length(p))
        }
    }
    print svc "\t" line
}'

# SVC_HASH[service]: the definition hash of every service of a release (COMPOSE as set by
# compose_args for it), from its compose config with this host's .env values: an image, a
# command, an environment value or a mount that changes gives another hash.
declare -A SVC_HASH=()
service_hashes() { # release-dir shared-paths
    local out line svc h
    local -A body=()
    SVC_HASH=()
    out=$("${DIE_WITH_ME[@]}" docker "${COMPOSE[@]}" config --format json </dev/null 2>/dev/null 9>&- |
        awk -v dir="$1" -v shared="$2" "$SERVICES_AWK") || return 1
    [[ -n $out ]] || return 1
    while IFS= read -r line; do
        body[${line%%$'\t'*}]+="${line#*$'\t'}"$'\n'
    done <<<"$out"
    for svc in "${!body[@]}"; do
        [[ $svc =~ ^[A-Za-z0-9._-]+$ ]] || return 1
        read -r h _ < <(printf '%s' "${body[$svc]}" | sha256sum)
        SVC_HASH[$svc]=${h:0:32}
    done
}

# Brings a release up. Only what must change is touched: a service whose definition differs
# from what its containers were created with (the `dropship.def` label), that is new, or
# whose container is unhealthy or restarting is recreated, alone (`up --no-deps`: compose
# would restart its dependents too); a stopped one is started; every other one keeps
# running, whichever release started it: a database is never restarted for nothing.
# Containers of services the release no longer has are removed. FORCE_ALL recreates every
# service (after a failed rollback). The release's definitions are kept in
# .dropship/services, which says which running containers belong to it (container_of).
# Writes TEXT to FILE (temp file and rename) unless FILE already holds exactly that: bringing
# a release back up on a full disk (a rollback) must not need a write.
write_if_changed() { # file text
    local old=""
    [[ -f $1 ]] && old=$(<"$1")$'\n'
    [[ $old == "$2" ]] && return 0
    { printf '%s' "$2" >"$1.tmp.$$"; } 2>/dev/null && mv -f -- "$1.tmp.$$" "$1" && return 0
    rm -f -- "$1.tmp.$$"
    return 1
}

FORCE_ALL=0
compose_up() { # release-name -> uses its recorded settings
    local name=$1 dir="$APP_ROOT/releases/$1" lines line cond d cname svc def labels text
    local to_recreate=() to_start=() to_keep=() orphans=() why=()
    local -A state=()
    load_release "$name" || {
        log compose "release $name has no readable .dropship/release.json"
        return 1
    }
    compose_args "$dir" "$R_COMPOSE_FILE" "$R_PROFILES"
    service_hashes "$dir" "$R_SHARED_PATHS" || {
        log compose "docker compose cannot render the config of $name"
        return 1
    }
    labels="$dir/.dropship/labels.yaml"
    text='services:'$'\n'
    for svc in $(printf '%s\n' "${!SVC_HASH[@]}" | sort); do
        text+="  \"$svc\":"$'\n'"    labels:"$'\n'"      dropship.def: \"${SVC_HASH[$svc]}\""$'\n'
    done
    write_if_changed "$labels" "$text" || {
        log compose "cannot write $labels (disk full?)"
        return 1
    }
    project_containers "$PROJECT" || {
        log compose "docker cannot list the containers of project $PROJECT"
        return 1
    }
    mapfile -t lines <<<"$REPLY"
    for line in "${lines[@]}"; do
        IFS='|' read -r cond d cname svc def <<<"$line"
        [[ -n $cond ]] || continue
        if [[ ! -v SVC_HASH[$svc] ]]; then
            orphans+=("$cname")
        elif [[ $def != "${SVC_HASH[$svc]}" ]]; then
            state[$svc]=changed
        elif [[ $cond == failing && ${state[$svc]:-} != changed ]]; then
            state[$svc]=failing
        elif [[ $cond == stopped && ${state[$svc]:-up} == up ]]; then
            state[$svc]=stopped
        elif [[ -z ${state[$svc]:-} ]]; then
            state[$svc]=up
        fi
    done
    for svc in "${!SVC_HASH[@]}"; do
        # Start-first: the switched service is brought up beside the old one (switch_web).
        [[ $R_STRATEGY == start-first && $svc == "$R_PROXY_SERVICE" ]] && continue
        case ${state[$svc]:-new}:$FORCE_ALL in
        up:0) to_keep+=("$svc") ;;
        stopped:0) to_start+=("$svc") ;;
        *)
            to_recreate+=("$svc")
            why+=("$svc (${state[$svc]:-new})")
            ;;
        esac
    done
    # One `up`, one --wait-timeout: the gate's time budget (gate_secs) holds. A stopped
    # service is recreated along with the changed ones (nothing of it runs to disturb).
    if ((${#to_start[@]} && ${#to_recreate[@]})); then
        for svc in "${to_start[@]}"; do why+=("$svc (stopped)"); done
        to_recreate+=("${to_start[@]}")
        to_start=()
    fi
    if ((${#orphans[@]})); then
        log compose "removing containers of services $name does not have: ${orphans[*]}"
        dk rm -f "${orphans[@]}" || return 1
    fi
    COMPOSE+=(-f "$labels")
    if ((${#to_start[@]})); then
        log compose "starting stopped services of $name: ${to_start[*]}"
        dk "${COMPOSE[@]}" up -d --no-deps --no-recreate --wait --wait-timeout "$R_HEALTH_TIMEOUT" \
            "${to_start[@]}" </dev/null || {
            log compose "docker compose up failed for $name"
            return 1
        }
    fi
    if ((${#to_recreate[@]})); then
        log compose "up $name (project $PROJECT), recreating: ${why[*]}"
        dk "${COMPOSE[@]}" up -d --no-deps --force-recreate --wait --wait-timeout "$R_HEALTH_TIMEOUT" \
            "${to_recreate[@]}" </dev/null || {
            log compose "docker compose up failed for $name"
            return 1
        }
    fi
    ((${#to_keep[@]} == 0)) || log compose "kept running (definition unchanged): ${to_keep[*]}"
    text=""
    for svc in $(printf '%s\n' "${!SVC_HASH[@]}" | sort); do text+="$svc ${SVC_HASH[$svc]}"$'\n'; done
    write_if_changed "$dir/.dropship/services" "$text" || {
        log compose "cannot write $name/.dropship/services (disk full?)"
        return 1
    }
    return 0
}

# Healthy means a 2xx answer from the URL itself. curl --fail alone takes a 3xx for success;
# --location with --max-redirs 0 turns a redirect into a failure (exit 47) without following
# it, and nothing is written to disk (a full disk must not make a healthy release unhealthy).
health_check() { # url timeout
    local url=$1 timeout=$2 deadline attempt=0 rc=0 why
    if [[ -z $url ]]; then
        log health "no health URL; compose --wait was the gate"
        return 0
    fi
    deadline=$((SECONDS + timeout))
    while :; do
        attempt=$((attempt + 1))
        run curl -q --globoff --fail --silent --show-error --proto =http,https --max-time 5 \
            --location --max-redirs 0 -o /dev/null "$url" </dev/null
        rc=$?
        if ((rc == 0)); then
            log health "healthy after $attempt attempt(s)"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            case $rc in
            22) why="answered 4xx/5xx" ;;
            47) why="answered a redirect (healthy is 2xx; redirects are not followed)" ;;
            *) why="curl exit $rc" ;;
            esac
            log health "not healthy after $attempt attempt(s) in ${timeout}s: $(q "$url") $why"
            return 1
        fi
        sleep 1
    done
}

# ---------------------------------------------------------------------------------------
# start-first: the proxy and the switched service
#
# One Caddy container per app and environment (`<project>-proxy`), run with `docker run`
# outside the compose project (compose never recreates or removes it), restarted by
# dockerd after a reboot, on its own network `<project>-edge` that the switched service's
# containers join. Its admin API listens on a unix socket in the app root (no TCP port),
# and its whole config is this script's: one route whose upstream is the committed
# release's container, by name (Docker's DNS; an IP changes when a container restarts).

PROXY_NAME="" PROXY_NET="" PROXY_DIR="" PROXY_SOCK=""
# What the proxy was last seen routing to, for the result's message (status shows it).
TRAFFIC=""
proxy_names() {
    PROXY_NAME="$PROJECT-proxy" PROXY_NET="$PROJECT-edge"
    PROXY_DIR="$APP_ROOT/proxy" PROXY_SOCK="$APP_ROOT/proxy/admin.sock"
}

# The proxy container's state in REPLY: running, stopped or missing.
proxy_state() {
    local s
    s=$(dk inspect --type container --format '{{.State.Status}}' "$PROXY_NAME" 2>/dev/null) || s=""
    case $s in
    "") REPLY=missing ;;
    running) REPLY=running ;;
    *) REPLY=stopped ;;
    esac
}

# One call of Caddy's admin API: METHOD PATH [JSON]; the answer's body in REPLY; returns 0
# on a 2xx answer.
proxy_api() { # method path [json]
    local out data=()
    [[ -n ${3:-} ]] && data=(-H 'Content-Type: application/json' --data-binary "$3")
    # From inside the proxy's directory: a unix socket path has at most 107 bytes, an app
    # root may be longer.
    out=$(run env -C "$PROXY_DIR" curl -q --globoff --silent --show-error --max-time 10 --unix-socket admin.sock \
        -X "$1" "${data[@]}" -w '\n%{http_code}' "http://localhost$2" </dev/null) || {
        REPLY=""
        return 1
    }
    REPLY=${out%$'\n'*}
    [[ ${out##*$'\n'} == 2[0-9][0-9] ]]
}

wait_proxy_api() { # seconds
    local deadline=$((SECONDS + $1))
    until proxy_api GET /config/; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# The proxy's whole config routing to DIALS (space-separated host:port), in REPLY. Requests
# are retried on another try for up to 5 s while an upstream cannot be reached, so a
# container that is restarting costs latency, not errors; the old server of a config change
# gets the drain time to finish its requests and streams.
proxy_config() { # dials drain
    local d ups="" sep="" grace=$(($2 > 0 ? $2 : 1))
    for d in $1; do
        ups+="$sep{\"dial\":\"$d\"}"
        sep=,
    done
    REPLY='{"admin":{"listen":"unix//config/admin.sock"},"apps":{"http":{"grace_period":"'$grace's","servers":{"dropship":{"listen":[":80"],"automatic_https":{"disable":true},"routes":[{"handle":[{"handler":"reverse_proxy","@id":"dropship-upstream","upstreams":['$ups'],"load_balancing":{"try_duration":"5s","try_interval":"250ms"},"stream_close_delay":"'$grace's"}]}]}}}}}'
}

# The dials the proxy routes to now, space-separated, in REPLY; returns 1 when it cannot
# be asked.
proxy_routes() {
    local body out=""
    proxy_api GET /id/dropship-upstream/upstreams || return 1
    body=$REPLY
    while [[ $body =~ \"dial\":\"([^\"]*)\" ]]; do
        out+="${BASH_REMATCH[1]} "
        body=${body#*"${BASH_REMATCH[0]}"}
    done
    REPLY=${out% }
}

# Creates and starts the proxy routing to DIALS. The first start-first deploy on a host
# that ran `recreate` finds the project's own containers publishing the proxy's port: they
# are stopped first, the one gap of the migration (logged with its length).
create_proxy() { # dials
    local ids t0 port=${R_PROXY_LISTEN##*:}
    { mkdir -p -- "$PROXY_DIR" && chmod 0700 -- "$PROXY_DIR"; } || return 1
    proxy_config "$1" "$R_PROXY_DRAIN"
    write_if_changed "$PROXY_DIR/caddy.json" "$REPLY"$'\n' || return 1
    rm -f -- "$PROXY_DIR/caddy/autosave.json" "$PROXY_SOCK"
    dk network inspect "$PROXY_NET" >/dev/null 2>&1 || dk network create "$PROXY_NET" >/dev/null || return 1
    dk rm -f "$PROXY_NAME" >/dev/null 2>&1
    ids=$(dk ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter "publish=$port") || ids=""
    t0=$EPOCHREALTIME
    if [[ -n $ids ]]; then
        log migrate "the project's own containers publish port $port (strategy recreate): stopping them for the proxy; requests to the port fail until it answers"
        # shellcheck disable=SC2086 # container ids, one word each
        dk stop $ids >/dev/null || return 1
    fi
    # Caddy opens a new SO_REUSEPORT listener for every config load and closes the old one;
    # the kernel resets connections still queued on a closed listener unless it may migrate
    # them to the new one (Linux 5.14+, a per-network-namespace setting: the proxy's own).
    local migrate=()
    [[ -e /proc/sys/net/ipv4/tcp_migrate_req ]] && migrate=(--sysctl net.ipv4.tcp_migrate_req=1)
    dk run -d --name "$PROXY_NAME" --restart unless-stopped --label "dropship.proxy=$PROJECT" \
        "${migrate[@]}" --network "$PROXY_NET" -p "$R_PROXY_LISTEN:80" -v "$PROXY_DIR:/config" \
        "$R_PROXY_IMAGE" caddy run --resume --config /config/caddy.json >/dev/null || {
        log proxy "docker could not start the proxy $PROXY_NAME on $R_PROXY_LISTEN"
        return 1
    }
    wait_proxy_api 30 || {
        log proxy "the proxy $PROXY_NAME does not answer on its admin socket"
        return 1
    }
    [[ -n $ids ]] && log migrate "the proxy answers: the gap lasted $(((${EPOCHREALTIME/./} - ${t0/./}) / 1000)) ms (once: later releases switch without one)"
    log proxy "started $PROXY_NAME ($R_PROXY_IMAGE) on $R_PROXY_LISTEN, routing to $1"
    TRAFFIC="proxy $PROXY_NAME -> $1"
    return 0
}

# Makes the proxy run and route to DIALS: started when stopped (it resumes its last
# config), created when missing, switched in one atomic config load otherwise. Caddy keeps
# the old config when it refuses a new one.
proxy_route() { # dials
    local t0=$EPOCHREALTIME
    proxy_state
    case $REPLY in
    missing)
        create_proxy "$1"
        return
        ;;
    stopped)
        log proxy "the proxy $PROXY_NAME is stopped: starting it"
        dk start "$PROXY_NAME" >/dev/null || return 1
        ;;
    esac
    wait_proxy_api 30 || {
        log proxy "the proxy $PROXY_NAME does not answer on its admin socket: recreating it"
        create_proxy "$1"
        return
    }
    if proxy_routes && [[ $REPLY == "$1" ]]; then
        TRAFFIC="proxy $PROXY_NAME -> $1"
        return 0
    fi
    proxy_config "$1" "$R_PROXY_DRAIN"
    write_if_changed "$PROXY_DIR/caddy.json" "$REPLY"$'\n' || true
    proxy_api POST /load "$REPLY" || {
        log switch "the proxy refused the new route to $1 (it keeps the old one): $(q "${REPLY:0:300}")"
        return 1
    }
    log switch "the proxy $PROXY_NAME routes to $1 ($(((${EPOCHREALTIME/./} - ${t0/./}) / 1000)) ms)"
    TRAFFIC="proxy $PROXY_NAME -> $1"
}

remove_proxy() {
    proxy_state
    [[ $REPLY == missing ]] && return 0
    log proxy "removing the proxy $PROXY_NAME (the release publishes its own ports)"
    TRAFFIC=""
    dk rm -f "$PROXY_NAME" >/dev/null
}

# The containers of SERVICE in the project, lines as project_containers gives them.
service_containers() { # service
    local out="" line s
    project_containers "$PROJECT" || return 1
    while IFS= read -r line; do
        [[ -n $line ]] || continue
        IFS='|' read -r _ _ _ s _ <<<"$line"
        [[ $s == "$1" ]] && out+="$line"$'\n'
    done <<<"$REPLY"
    REPLY=${out%$'\n'}
}

# Start-first for release NAME (R_* and COMPOSE as compose_up left them): its container of
# the switched service runs beside the old ones (started when it has none: checked by
# compose --wait and directly on its health path), then the proxy routes to it. The old
# containers keep running in OLD_WEB until drain_old (after the commit): a failure up to
# then switches back to them without a gap.
OLD_WEB=() OLD_WEB_PORT=""
switch_web() { # name
    local name=$1 svc=$R_PROXY_SERVICE lines line cond d cname s def mine="" new="" ip
    OLD_WEB=() OLD_WEB_PORT=$R_PROXY_PORT
    service_containers "$svc" || {
        log switch "docker cannot list the containers of $svc"
        return 1
    }
    mapfile -t lines <<<"$REPLY"
    for line in "${lines[@]}"; do
        IFS='|' read -r cond d cname s def <<<"$line"
        [[ -n $cond ]] || continue
        if [[ -z $mine && $cond == up && $FORCE_ALL == 0 ]] && container_of "$name" "$d" "$s" "$def"; then
            mine=$cname
        elif [[ $cond == up ]]; then
            OLD_WEB+=("$cname")
        else
            log switch "removing $cname ($svc, $cond): it serves nothing"
            dk rm -f "$cname" >/dev/null || return 1
        fi
    done
    if [[ -z $mine ]]; then
        log switch "starting $svc of $name beside ${OLD_WEB[*]:-nothing} (start-first)"
        dk "${COMPOSE[@]}" up -d --no-deps --no-recreate --scale "$svc=$((${#OLD_WEB[@]} + 1))" \
            --wait --wait-timeout "$R_HEALTH_TIMEOUT" "$svc" </dev/null || log switch "docker compose up failed for $svc of $name"
        service_containers "$svc" || return 1
        while IFS='|' read -r cond d cname s def; do
            [[ -n $cname && " ${OLD_WEB[*]} " != *" $cname "* ]] || continue
            if [[ -z $new && $cond == up ]] && container_of "$name" "$d" "$s" "$def"; then
                new=$cname
            else
                dk rm -f "$cname" >/dev/null
            fi
        done <<<"$REPLY"
        [[ -n $new ]] || {
            log switch "$svc of $name did not start"
            return 1
        }
    fi
    dk network inspect "$PROXY_NET" >/dev/null 2>&1 || dk network create "$PROXY_NET" >/dev/null || return 1
    edge_address "${new:-$mine}" || dk network connect "$PROXY_NET" "${new:-$mine}" >/dev/null || return 1
    edge_address "${new:-$mine}"
    ip=$REPLY
    if [[ -n $new ]]; then
        log health "checking $new directly: http://$ip:$R_PROXY_PORT$R_PROXY_HEALTH_PATH"
        if [[ -z $ip ]] || ! health_check "http://$ip:$R_PROXY_PORT$R_PROXY_HEALTH_PATH" "$R_HEALTH_TIMEOUT"; then
            log switch "$new is not healthy: removed; ${OLD_WEB[*]:-nothing} keeps serving"
            dk rm -f "$new" >/dev/null
            return 1
        fi
        mine=$new
    fi
    proxy_route "$mine:$R_PROXY_PORT" || {
        [[ -n $new ]] && dk rm -f "$new" >/dev/null
        return 1
    }
    return 0
}

# A container's address on the proxy's network in REPLY; returns 1 when it is not on it.
edge_address() { # container
    REPLY=$(dk inspect --format "{{with index .NetworkSettings.Networks \"$PROXY_NET\"}}{{.IPAddress}}{{end}}" "$1") || REPLY=""
    [[ -n $REPLY ]]
}

# After the commit: the old containers of the switched service finish their requests (the
# proxy lists an upstream while requests to it are in flight), at most the drain time,
# then stop.
drain_old() {
    local deadline c busy body
    ((${#OLD_WEB[@]})) || return 0
    deadline=$((SECONDS + R_PROXY_DRAIN))
    while :; do
        busy=()
        proxy_api GET /reverse_proxy/upstreams && body=$REPLY || body=""
        for c in "${OLD_WEB[@]}"; do
            [[ $body =~ \"address\":\"$c:$OLD_WEB_PORT\",\"num_requests\":([1-9][0-9]*) ]] && busy+=("$c")
        done
        ((${#busy[@]} == 0 || SECONDS >= deadline)) && break
        sleep 0.2
    done
    ((${#busy[@]})) && log drain "drain time (${R_PROXY_DRAIN}s) over with requests in flight on ${busy[*]}"
    log drain "stopping ${OLD_WEB[*]}"
    if ! { dk stop "${OLD_WEB[@]}" >/dev/null && dk rm -f "${OLD_WEB[@]}" >/dev/null; }; then
        log drain "could not remove ${OLD_WEB[*]} (the next run does)"
    fi
    OLD_WEB=()
}

# What follows every commit: old containers drained, old releases pruned.
after_commit() { # keep
    drain_old
    prune "$1"
}

# Brings a release up (compose_up: what changed; start-first: the switch) and checks its
# recorded health URL (through the proxy for start-first).
bring_up() { # name
    load_release "$1" || {
        log compose "release $1 has no readable .dropship/release.json"
        return 1
    }
    if [[ $R_STRATEGY == recreate ]]; then
        remove_proxy
        compose_up "$1" && health_check "$R_HEALTH_URL" "$R_HEALTH_TIMEOUT"
        return
    fi
    local url=$R_HEALTH_URL ip=${R_PROXY_LISTEN%:*}
    [[ $ip == 0.0.0.0 ]] && ip=127.0.0.1
    [[ -n $url ]] || url="http://$ip:${R_PROXY_LISTEN##*:}$R_PROXY_HEALTH_PATH"
    compose_up "$1" && switch_web "$1" && health_check "$url" "$R_HEALTH_TIMEOUT"
}

# ---------------------------------------------------------------------------------------
# lock, recovery and housekeeping

acquire_lock() {
    mkdir -p -- "$APP_ROOT/releases" "$APP_ROOT/shared" 2>/dev/null || finish 4 failed "cannot create $APP_ROOT"
    exec 9>>"$APP_ROOT/.lock" || finish 4 failed "cannot open $APP_ROOT/.lock"
    if ! flock -n 9; then
        log lock "another deploy holds $APP_ROOT/.lock; waiting up to ${LOCK_TIMEOUT}s"
        flock -w "$LOCK_TIMEOUT" 9 || finish 3 failed "lock not acquired within ${LOCK_TIMEOUT}s"
    fi
    LOCKED=1
    log lock "acquired $APP_ROOT/.lock"
}

# Releases to delete are renamed into .trash.<pid>/ (instant: nothing can run a half-deleted
# release) and deleted in the background at low priority.
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

# Leftovers of a run that was killed: .partial dirs, temp downloads, temp links and files,
# half-copied shared paths (.dropship-seed.*), earlier trash.
clean_leftovers() {
    local f p old_trash=() seeds=() list
    IFS=, read -r -a list <<<"$SHARED_PATHS"
    for p in "${list[@]}"; do
        [[ $p == */* ]] && seeds+=("$APP_ROOT/shared/${p%/*}"/.dropship-seed.*)
    done
    for f in "$APP_ROOT"/releases/*.partial "$APP_ROOT"/.download.* "$APP_ROOT"/.current.tmp.* \
        "$APP_ROOT"/state.json.tmp.* "$APP_ROOT"/shared/.dropship-seed.* "${seeds[@]}"; do
        log cleanup "removing leftover of an interrupted run: ${f#"$APP_ROOT"/}"
        rm -rf -- "$f"
    done
    for f in "$APP_ROOT"/.trash.*; do
        [[ -d $f ]] && old_trash+=("$f")
    done
    empty_trash_later "${old_trash[@]}"
    # Releases a killed run unpacked but never switched to (current never pointed there, or
    # recovery has just switched away).
    current_link
    for f in "$APP_ROOT"/releases/*/.dropship/unswitched; do
        p=${f%/.dropship/unswitched}
        p=${p##*/}
        [[ $p == "$REPLY" || $p == "$ST_CURRENT" ]] && continue
        log cleanup "removing release $p that an interrupted run never switched to"
        trash "$APP_ROOT/releases/$p" || rm -rf -- "${APP_ROOT:?}/releases/$p"
    done
    [[ -n $TRASH ]] && empty_trash_later "$TRASH" && TRASH=""
}

# Why the host is not known to run its committed release (REASONS); empty when it is. Every
# container must belong to the committed release (container_of) and run.
REASONS=()
check_host() {
    local d link lines line cond name svc def any=0
    REASONS=()
    current_link
    link=$REPLY
    ((STATE_FOUND)) || [[ -z $link ]] || REASONS+=("state.json is missing or unreadable (current is $link)")
    [[ -n $ST_PENDING ]] && REASONS+=("an earlier run was stopped during: $ST_PENDING")
    [[ $link != "$ST_CURRENT" ]] && REASONS+=("current is $(q "$link") but the committed release is $(q "$ST_CURRENT")")
    [[ $ST_LAST_OUTCOME == rollback_failed ]] && REASONS+=("the last run could not bring the committed release back")
    if ! project_containers "$PROJECT"; then
        REASONS+=("docker cannot list the containers of project $PROJECT")
        return
    fi
    mapfile -t lines <<<"$REPLY"
    for line in "${lines[@]}"; do
        IFS='|' read -r cond d name svc def <<<"$line"
        [[ -n $cond ]] || continue
        if [[ -z $ST_CURRENT ]] || ! container_of "$ST_CURRENT" "$d" "$svc" "$def"; then
            REASONS+=("a container of project $PROJECT runs from $(q "$d"), not the committed release")
            return
        fi
        any=1
        case $cond in
        stopped) REASONS+=("container $name of the committed release is not running") ;;
        failing) REASONS+=("container $name of the committed release is unhealthy or restarting") ;;
        esac
    done
    if [[ -n $ST_CURRENT ]] && ((!any)); then
        REASONS+=("no container of project $PROJECT exists")
    fi
    check_proxy
}

# Start-first: the proxy runs and routes to exactly the committed release's container of
# the switched service, and no other container of that service runs. Otherwise no proxy of
# this project runs (it would hold the port a `recreate` release publishes).
check_proxy() {
    local lines line cond d name svc def want=""
    [[ -n $ST_CURRENT ]] && load_release "$ST_CURRENT" || return 0
    proxy_state
    if [[ $R_STRATEGY == recreate ]]; then
        [[ $REPLY == missing ]] || REASONS+=("the proxy $PROXY_NAME runs, but $ST_CURRENT publishes its own ports (strategy recreate)")
        return
    fi
    case $REPLY in
    missing) REASONS+=("the proxy $PROXY_NAME is missing") && return ;;
    stopped) REASONS+=("the proxy $PROXY_NAME is not running") && return ;;
    esac
    service_containers "$R_PROXY_SERVICE" || return
    mapfile -t lines <<<"$REPLY"
    for line in "${lines[@]}"; do
        IFS='|' read -r cond d name svc def <<<"$line"
        [[ -n $cond ]] || continue
        if [[ -z $want && $cond == up ]] && container_of "$ST_CURRENT" "$d" "$svc" "$def"; then
            want="$name:$R_PROXY_PORT"
        else
            REASONS+=("container $name of $svc is not the one the committed release serves from")
        fi
    done
    if ! proxy_routes; then
        REASONS+=("the proxy $PROXY_NAME does not answer on its admin socket")
    elif [[ -n $want && $REPLY != "$want" ]]; then
        REASONS+=("the proxy routes to $(q "$REPLY"), not to the committed release's $want")
    fi
}

# Whatever a run finds on start, it first brings the host back to the committed release and
# checks its health, or says loudly that it cannot (RECOVERY_FAILED), before anything else.
recover() {
    local r
    check_host
    ((${#REASONS[@]})) || return 0
    for r in "${REASONS[@]}"; do log recover "$r"; done
    if [[ -z $ST_CURRENT ]]; then
        switch_current ""
        { remove_proxy; dk compose -p "$PROJECT" down --remove-orphans; } || log recover "compose down failed"
        log recover "nothing committed: removed the current link and stopped project $PROJECT"
    elif [[ ! -d $APP_ROOT/releases/$ST_CURRENT ]]; then
        RECOVERY_MSG="the committed release $ST_CURRENT is missing from releases/"
    else
        # compose_up recreates what is not the committed release's (or unhealthy), starts what
        # is stopped and checks the rest in place; after a failed rollback everything starts
        # afresh (a stale "unhealthy" status would fail `up --wait` at once).
        [[ $ST_LAST_OUTCOME == rollback_failed ]] && FORCE_ALL=1
        if switch_current "$ST_CURRENT" && bring_up "$ST_CURRENT"; then
            log recover "the committed release $ST_CURRENT runs and is healthy"
        else
            RECOVERY_MSG="the committed release $ST_CURRENT did not come up healthy"
        fi
        FORCE_ALL=0
    fi
    ST_PENDING=""
    if [[ -n $RECOVERY_MSG ]]; then
        RECOVERY_FAILED=1
        log recover "CANNOT RECOVER: $RECOVERY_MSG"
        save_state rollback_failed || log recover "could not write state.json"
    else
        if save_state recovered; then
            drain_old
        else
            RECOVERY_FAILED=1
            RECOVERY_MSG="state.json could not be written"
        fi
    fi
}

# Refuses to run a project whose containers another app root runs (two roots, one project),
# except an earlier app root of this same app and environment whose copy this root is (the
# rotation to a new app root, docs/operations.md): with a committed release here, this root
# takes the project over and recovery recreates its containers from here.
check_project_owner() {
    local line d other rel lines took=""
    project_containers "$PROJECT" || return 0
    mapfile -t lines <<<"$REPLY"
    for line in "${lines[@]}"; do
        IFS='|' read -r _ d _ _ _ <<<"$line"
        [[ -z $d || $d == "$APP_ROOT/releases/"* || $d == "$took/releases/"* ]] && continue
        other=${d%/releases/*}
        rel=${d#"$other/releases/"}
        rel="$other/releases/${rel%%/*}/.dropship/release.json"
        if [[ -n $ST_CURRENT && $other != "$d" ]] && json_get "$rel" app && [[ $REPLY == "$APP" ]] &&
            json_get "$rel" env && [[ $REPLY == "$ENV_NAME" ]]; then
            log owner "project $PROJECT runs from $(q "$other"), an earlier app root of $APP/$ENV_NAME: this root takes it over (its containers are recreated from here)"
            took=$other
            continue
        fi
        bad_input "compose project $PROJECT has containers from $(q "$d"), outside $APP_ROOT: another app root runs it; stop them there, or copy that root here to move the app (docs/operations.md, \"Rotating to a new app root\")"
    done
}

# Keeps `keep` releases in total: the current, previous and last good always (even past
# `keep`), then the newest others; rolled-back and interrupted releases count like any.
prune() { # keep
    local keep=$1 name t entries=() sorted kept=0 link in_use=" " line d
    current_link
    link=$REPLY
    # A release a container was created from stays while the container exists: a long-lived
    # service's mounts may go through it (releases/<name>/data -> ../../shared/data).
    if project_containers "$PROJECT"; then
        while IFS='|' read -r _ d _ _ _; do
            d=${d#"$APP_ROOT/releases/"}
            in_use+="${d%%/*} "
        done <<<"$REPLY"
    else
        log prune "docker cannot list the containers of project $PROJECT; nothing pruned"
        return 0
    fi
    for name in "$APP_ROOT"/releases/*; do
        name=${name##*/}
        [[ $name =~ $RELEASE_RE && -d $APP_ROOT/releases/$name ]] || continue
        if [[ $name == "$ST_CURRENT" || $name == "$ST_PREVIOUS" || $name == "$ST_LAST_GOOD" || $name == "$link" || $in_use == *" $name "* ]]; then
            kept=$((kept + 1))
            continue
        fi
        t=0
        json_get "$APP_ROOT/releases/$name/.dropship/release.json" deployed_us && [[ $REPLY =~ ^[0-9]+$ ]] && t=$REPLY
        entries+=("$(printf '%020d %s' "$t" "$name")")
    done
    ((${#entries[@]})) || return 0
    mapfile -t sorted < <(printf '%s\n' "${entries[@]}" | sort -r)
    for name in "${sorted[@]}"; do
        name=${name#* }
        if ((kept < keep)); then
            kept=$((kept + 1))
            continue
        fi
        log prune "removing release $name"
        trash "$APP_ROOT/releases/$name" || rm -rf -- "${APP_ROOT:?}/releases/$name"
    done
    [[ -n $TRASH ]] && empty_trash_later "$TRASH"
    return 0
}

# Time this run may still use before SSM's executionTimeout SIGKILLs it.
time_left() { REPLY=$((EXEC_TIMEOUT - SECONDS)); }

# Refuses to switch unless the new release's gate and a rollback to `prev` both fit in the
# time SSM leaves (a kill in between would leave an unchecked release running).
check_time_for_switch() { # new-timeout prev-name [drain]
    local need prev_t=0
    gate_secs "$1"
    need=$((REPLY + 15 + ${3:-0}))
    if [[ -n $2 ]] && load_release "$2"; then prev_t=$R_HEALTH_TIMEOUT; fi
    [[ -n $2 ]] && gate_secs "$prev_t" && need=$((need + REPLY))
    time_left
    ((REPLY >= need)) || finish 4 failed "not enough time before SSM's execution timeout (${EXEC_TIMEOUT}s): switching and a possible rollback need up to ${need}s, ${REPLY}s are left; raise the execution timeout or lower health_timeout_secs"
    SWITCH_NEED=$need
}
SWITCH_NEED=0

# ---------------------------------------------------------------------------------------
# deploy steps

disk_free() { # -> REPLY: free bytes of the app root's file system
    local line avail
    { read -r line && read -r _ _ _ avail _; } < <(df -Pk -- "$APP_ROOT") || avail=""
    [[ $avail =~ ^[0-9]+$ ]] || finish 4 failed "cannot read free disk space of $APP_ROOT"
    REPLY=$((avail * 1024))
}

preflight() {
    local need v
    need=$((BUNDLE_BYTES + UNPACKED_BYTES + UNPACKED_BYTES / 10 + 16 * 1024 * 1024))
    disk_free
    ((REPLY >= need)) || finish 4 failed "not enough disk in $APP_ROOT: $((REPLY / 1048576)) MiB free, $((need / 1048576)) MiB needed"
    log preflight "disk: $((REPLY / 1048576)) MiB free, $((need / 1048576)) MiB needed for download and release"
    v=$(dk compose version) || finish 4 failed "docker compose v2 is not available"
    log preflight "${v%%$'\n'*}"
    v=$(run curl -q --version </dev/null) || v=""
    v=${v%%$'\n'*}
    { [[ $v =~ ^curl\ ([0-9]+)\.([0-9]+) ]] && ((BASH_REMATCH[1] > 7 || (BASH_REMATCH[1] == 7 && BASH_REMATCH[2] >= 75))); } ||
        finish 4 failed "curl >= 7.75 is needed to sign the download with the instance role (--aws-sigv4), found $(q "${v:-no curl}"): upgrade curl"
    check_time_for_switch "$HEALTH_TIMEOUT" "$ST_CURRENT" "${PROXY_DRAIN_TIMEOUT:-0}"
    [[ $STRATEGY == start-first ]] && preflight_proxy
}

# Start-first, before anything is touched: the proxy's image is on the host (pulled when
# absent: exit 5), and when no proxy of this project runs yet, nothing but the project's
# own containers (a `recreate` release: the migration) holds the port it will publish
# (exit 4).
preflight_proxy() {
    local port=${PROXY_LISTEN##*:} ip=${PROXY_LISTEN%:*} who
    if ! dk image inspect --format present "$PROXY_IMAGE" | grep -qx present; then
        log preflight "pulling the proxy image $PROXY_IMAGE"
        dk pull "$PROXY_IMAGE" >/dev/null || finish 5 failed "the proxy image $(q "$PROXY_IMAGE") is not on this host and could not be pulled; nothing was changed"
    fi
    proxy_state
    [[ $REPLY == running ]] && return 0
    who=$(dk ps --format '{{.Names}}' --filter "publish=$port") || who=""
    [[ -n $who ]] && ! dk ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter "publish=$port" | grep -q . &&
        finish 4 failed "port $port for the proxy ($PROXY_LISTEN) is published by another container: ${who//$'\n'/, }; nothing was changed. Give [deploy.proxy] listen another port or stop that container"
    [[ $ip == 0.0.0.0 ]] && ip=127.0.0.1
    # shellcheck disable=SC2016 # the inner script's $1 and $2 are its own arguments
    if [[ -z $who ]] && timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$ip" "$port" 2>/dev/null; then
        finish 4 failed "port $port for the proxy ($PROXY_LISTEN) is already in use on this host; nothing was changed. Give [deploy.proxy] listen another port or stop what listens there"
    fi
    log preflight "the proxy $PROXY_NAME will publish $PROXY_LISTEN"
}

# The instance role's credentials (IMDSv2: a session token first, then the role's keys) into
# CRED_ID, CRED_SECRET and CRED_TOKEN: never exported, never printed, never on a command line;
# curl gets them on its standard input. The metadata address is fixed, not an input: whoever
# can set inputs must not be able to send the host's credentials elsewhere.
readonly IMDS=http://169.254.169.254
CRED_ID="" CRED_SECRET="" CRED_TOKEN="" IMDS_STATUS=""

imds() { # method path [session-token] -> REPLY: the body of a 200 answer; else IMDS_STATUS says
    local cfg out rc
    cfg="url = \"$IMDS$2\""$'\n'"request = \"$1\""$'\n'
    if [[ $1 == PUT ]]; then
        cfg+='header = "X-aws-ec2-metadata-token-ttl-seconds: 300"'
    else
        cfg+="header = \"X-aws-ec2-metadata-token: $3\""
    fi
    out=$(run curl -q --config - --silent --noproxy '*' --proto =http --connect-timeout 2 \
        --max-time 5 -w '\n%{http_code}' <<<"$cfg")
    rc=$?
    ((rc == 0)) || {
        IMDS_STATUS="no answer, curl exit $rc"
        return 1
    }
    IMDS_STATUS="HTTP ${out##*$'\n'}"
    REPLY=${out%$'\n'*}
    [[ ${out##*$'\n'} == 200 ]]
}

role_credentials() {
    local token role body field re value
    local fix="attach the instance profile the dropship module creates for $APP/$ENV_NAME (the host downloads the bundle with its own role) and keep the metadata service on (IMDSv2)"
    # (Lengths are checked apart from the patterns: a bounded repetition like {16,8192} costs
    # glibc's regcomp seconds.)
    { imds PUT /latest/api/token && [[ $REPLY =~ ^[A-Za-z0-9+/=_-]+$ && ${#REPLY} -le 1024 ]]; } ||
        finish 5 failed "no instance credentials: the instance metadata service gave no IMDSv2 session token ($IMDS_STATUS); $fix"
    token=$REPLY
    imds GET /latest/meta-data/iam/security-credentials/ "$token" ||
        finish 5 failed "no instance credentials: the instance has no IAM role ($IMDS_STATUS from the instance metadata service); $fix"
    role=${REPLY%%$'\n'*}
    [[ $role =~ ^[A-Za-z0-9+=,.@_-]{1,64}$ ]] ||
        finish 5 failed "no instance credentials: the instance metadata service named no usable role; $fix"
    imds GET "/latest/meta-data/iam/security-credentials/$role" "$token" ||
        finish 5 failed "no instance credentials for role $role ($IMDS_STATUS from the instance metadata service); $fix"
    body=$REPLY
    for field in Code AccessKeyId SecretAccessKey Token; do
        re='"'$field'"[[:space:]]*:[[:space:]]*"([^"]*)"'
        value=""
        [[ $body =~ $re ]] && value=${BASH_REMATCH[1]}
        case $field in
        Code) [[ $value == Success ]] ;;
        AccessKeyId) [[ $value =~ ^[A-Z0-9]+$ && ${#value} -ge 16 && ${#value} -le 128 ]] && CRED_ID=$value ;;
        SecretAccessKey) [[ $value =~ ^[A-Za-z0-9/+=]+$ && ${#value} -ge 16 && ${#value} -le 128 ]] && CRED_SECRET=$value ;;
        Token) [[ $value =~ ^[A-Za-z0-9/+=]+$ && ${#value} -ge 16 && ${#value} -le 8192 ]] && CRED_TOKEN=$value ;;
        esac || finish 5 failed "no instance credentials: the credentials of role $role lack a valid $field (values not shown); $fix"
    done
    CRED_ROLE=$role
}
CRED_ROLE=""

# Percent-encodes $1 into REPLY: bytes outside [A-Za-z0-9._~-] (and besides '/' when $2 is
# "/") become %XX, as the contract's object_request_target does (LC_ALL=C: one byte at a time).
uri_encode() { # value [/]
    local s=$1 out="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        if [[ $c == [A-Za-z0-9._~-] || ($c == / && ${2:-} == /) ]]; then
            out+=$c
        else
            printf -v c '%%%02X' "'$c"
            out+=$c
        fi
    done
    REPLY=$out
}

# GET <endpoint>/<bucket>/<key>?versionId=<version> (path style), signed with the instance
# role. The URL, the keys and the token go to curl on its standard input (a config file),
# never on a command line. Redirects are not followed (a signature is for one host). Each
# attempt gets fresh credentials and the time left before the switch budget; a transfer
# slower than 1 KiB/s for 30 s fails (and is retried while time is left).
download() {
    local attempt code rc delay=1 size left url
    TMP_DIR="$APP_ROOT/.download.$$"
    rm -rf -- "$TMP_DIR"
    mkdir -m 0700 -- "$TMP_DIR" || finish 4 failed "cannot create $TMP_DIR (disk full?)"
    TMP_DOWNLOAD="$TMP_DIR/bundle"
    uri_encode "$KEY" /
    url="$S3_ENDPOINT/$BUCKET/$REPLY"
    uri_encode "$VERSION_ID"
    url+="?versionId=$REPLY"
    log download "$BUNDLE_BYTES bytes expected from s3://$BUCKET/$(q "$KEY") version $(q "$VERSION_ID") via $S3_ENDPOINT ($REGION)"
    for attempt in 1 2 3 4; do
        time_left
        left=$((REPLY - SWITCH_NEED - 30 - (BUNDLE_BYTES + UNPACKED_BYTES) / 20000000))
        ((left >= 5)) || finish 5 failed "download: no time left before SSM's execution timeout (attempt $attempt)"
        role_credentials
        ((attempt > 1)) || log download "signing with the instance role $CRED_ROLE"
        rm -f -- "$TMP_DOWNLOAD"
        # x-amz-content-sha256 is the SHA-256 of the empty body of a GET: what S3 requires,
        # and what every curl since 7.75 signs whether or not it reads the header itself.
        run_to "$TMP_DOWNLOAD.code" "" curl -q --config - --globoff --fail --silent --show-error \
            --aws-sigv4 "aws:amz:$REGION:s3" --proto =http,https --connect-timeout 15 \
            --max-time "$left" --speed-limit 1024 --speed-time "$((left < 30 ? left : 30))" \
            -o "$TMP_DOWNLOAD" -w '%{http_code}' <<<"url = \"$url\"
user = \"$CRED_ID:$CRED_SECRET\"
header = \"x-amz-security-token: $CRED_TOKEN\"
header = \"x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\""
        rc=$?
        code=$(<"$TMP_DOWNLOAD.code") 2>/dev/null || code=000
        if ((rc == 0)); then
            [[ $code == 200 ]] || finish 5 failed "S3 answered HTTP $code instead of the object (a redirect: DROPSHIP_S3_ENDPOINT $S3_ENDPOINT is not the bucket's region?)"
            break
        fi
        log download "attempt $attempt failed (curl exit $rc, HTTP $code)"
        case $code in
        403) finish 5 failed "download refused with HTTP 403: the instance role $CRED_ROLE may not read s3://$BUCKET/$(q "$KEY") (attach the instance profile the dropship module creates for $APP/$ENV_NAME)" ;;
        408 | 429) ;;
        4??) finish 5 failed "download refused with HTTP $code" ;;
        esac
        ((attempt < 4)) || finish 5 failed "download failed after $attempt attempts (curl exit $rc, HTTP $code)"
        sleep "$delay"
        delay=$((delay * 2))
    done
    CRED_ID="" CRED_SECRET="" CRED_TOKEN=""
    size=$(stat -c %s -- "$TMP_DOWNLOAD") || finish 5 failed "downloaded file missing"
    if ((BUNDLE_BYTES > 0 && size != BUNDLE_BYTES)); then
        finish 5 failed "downloaded $size bytes, expected $BUNDLE_BYTES"
    fi
    log download "$size bytes in $attempt attempt(s)"
}

ZPROG=(-z)
command -v pigz >/dev/null 2>&1 && ZPROG=(--use-compress-program=pigz)

# The tar rules of the contract (contract::tar_rules), applied to the listing before anything
# is unpacked: files, directories and relative symlinks only, no setuid/setgid/sticky, no
# absolute path, no empty, '.' or '..' component, no entry twice or beneath a symlink, symlink
# targets inside the tree; and, stricter, no '..' in a target after a component that is a
# symlink or a shared path (a chain like `a -> .`, `b -> a/..` escapes while looking inside).
# Names are C-quoted by tar, so ` -> ` or a newline in a name cannot confuse the parse.
# Prints "OK <entries> <file bytes> <bytes to seed>" or "BAD <reason>".
# shellcheck disable=SC2016 # an awk program: its $ are awk's
readonly LISTING_AWK='
function fail(m) { print "BAD " m; failed = 1; exit 1 }
function parent(p) { return match(p, /\/[^\/]*$/) ? substr(p, 1, RSTART - 1) : "" }
BEGIN { ns = split(shared, sp, ","); nd = split(seeds, sd, ",") }
{
    t = substr($0, 1, 1)
    if (t != "-" && t != "d" && t != "l") fail("entry type " t " not allowed: " $0)
    if (substr($0, 2, 9) !~ /^[-r][-w][-x][-r][-w][-x][-r][-w][-x]$/) fail("setuid, setgid or sticky entry: " $0)
    i = index($0, "\""); rest = substr($0, i)
    if (i == 0 || !match(rest, /^"([^"\\]|\\.)*"/)) fail("unreadable entry: " $0)
    name = substr(rest, 2, RLENGTH - 2); rest = substr(rest, RLENGTH + 1)
    if (t == "l") {
        if (!match(rest, /^ -> "([^"\\]|\\.)*"$/)) fail("unreadable symlink: " $0)
        tg[name] = substr(rest, 6, RLENGTH - 6)
    } else if (rest != "") fail("unreadable entry: " $0)
    sub(/\/$/, "", name)
    if (name == "" || substr(name, 1, 1) == "/") fail("absolute or empty path \"" name "\"")
    n = split(name, c, "/")
    for (j = 1; j <= n; j++) if (c[j] == "" || c[j] == "." || c[j] == "..") fail("path \"" name "\" has an empty, . or .. component")
    if (name in seen) fail("entry \"" name "\" appears twice")
    seen[name] = 1; names[++count] = name
    if (t == "-") {
        split($0, f, " +"); bytes += f[3]
        for (j = 1; j <= nd; j++) if (name == sd[j] || index(name, sd[j] "/") == 1) seed += f[3]
    }
}
END {
    if (failed) exit 1
    for (k = 1; k <= count; k++)
        for (p = parent(names[k]); p != ""; p = parent(p))
            if (p in tg) fail("entry \"" names[k] "\" lies beneath symlink \"" p "\"")
    for (j = 1; j <= ns; j++) sl[sp[j]] = 1
    for (l in tg) {
        t = tg[l]
        if (t == "" || substr(t, 1, 1) == "/") fail("symlink \"" l "\" points to an absolute path")
        # Resolved path from the tree root, component by component.
        r = parent(l); via = ""
        n = split(t, c, "/")
        for (j = 1; j <= n; j++) {
            if (c[j] == "" || c[j] == ".") continue
            if (c[j] == "..") {
                if (r == "") fail("symlink \"" l "\" points outside the release")
                if (via != "") fail("symlink \"" l "\" goes through \"" via "\" and then up (..)")
                r = parent(r)
            } else {
                r = (r == "" ? c[j] : r "/" c[j])
                if (j < n && via == "" && ((r in tg) || (r in sl))) via = r
            }
        }
    }
    print "OK " count " " bytes + 0 " " seed + 0
}'

# Paths of SHARED_PATHS missing in shared/ (seeded from the bundle), comma-separated.
to_seed() {
    local list p out=""
    IFS=, read -r -a list <<<"$SHARED_PATHS"
    for p in "${list[@]}"; do
        [[ -e $APP_ROOT/shared/$p || -L $APP_ROOT/shared/$p ]] || out+="${out:+,}$p"
    done
    REPLY=$out
}

# SHA-256 and the tar listing in parallel (both read the download once); then the listing
# check and the second disk preflight (what the listing says unpacking and seeding need).
verify() {
    local sum pid_sum pid_list rc_sum rc_list verdict seeds
    spawn sha256sum -- "$TMP_DOWNLOAD" >"$TMP_DOWNLOAD.sum" </dev/null
    pid_sum=$!
    spawn tar "${ZPROG[@]}" -t -v --numeric-owner --quoting-style=c -f "$TMP_DOWNLOAD" \
        >"$TMP_DOWNLOAD.list" 2>"$TMP_DOWNLOAD.err" </dev/null
    pid_list=$!
    wait "$pid_sum"
    rc_sum=$?
    reap "$pid_list"
    rc_list=$?
    ((rc_sum == 0)) || finish 5 failed "sha256sum failed (status $rc_sum)"
    read -r sum _ <"$TMP_DOWNLOAD.sum"
    [[ $sum == "$SHA256" ]] || finish 5 failed "SHA-256 mismatch: got $sum, expected $SHA256"
    log verify "sha256 $sum matches"
    ((rc_list == 0)) || {
        read -r verdict <"$TMP_DOWNLOAD.err"
        finish 6 failed "tar cannot read the bundle (status $rc_list): $(q "${verdict:-}")"
    }
    to_seed
    seeds=$REPLY
    verdict=$(run awk -v shared="$SHARED_PATHS" -v seeds="$seeds" "$LISTING_AWK" "$TMP_DOWNLOAD.list" </dev/null)
    [[ $verdict == OK\ * ]] || finish 6 failed "unsafe bundle: ${verdict#BAD }"
    read -r _ LISTED_ENTRIES LISTED_BYTES SEED_BYTES <<<"$verdict"
    log verify "$LISTED_ENTRIES entries checked before unpacking"
    disk_free
    local need=$((LISTED_BYTES + LISTED_BYTES / 10 + SEED_BYTES + 16 * 1024 * 1024))
    ((REPLY >= need)) || finish 4 failed "not enough disk in $APP_ROOT to unpack and seed: $((REPLY / 1048576)) MiB free, $((need / 1048576)) MiB needed"
}
LISTED_ENTRIES=0 LISTED_BYTES=0 SEED_BYTES=0

# Unpacks the checked download into releases/<new>.partial (GNU tar keeps everything inside
# it: it strips leading '/', refuses '..', creates outward symlinks last), marks it
# unswitched, writes .dropship/release.json and renames it into place.
unpack() {
    local ts base n=2 err=""
    printf -v ts '%(%Y%m%dT%H%M%SZ)T' -1
    base="$ts-${COMMIT:0:7}"
    NEW=$base
    while [[ -e $APP_ROOT/releases/$NEW || -e $APP_ROOT/releases/$NEW.partial ]]; do
        NEW="$base-$n"
        n=$((n + 1))
    done
    PARTIAL_DIR="$APP_ROOT/releases/$NEW.partial"
    # 0700 until link_shared replaced the bundle's copies of shared paths (a .env): no
    # other user can reach into the release before then (opened up in open_release).
    mkdir -m 0700 -- "$PARTIAL_DIR" || finish 6 failed "cannot create $PARTIAL_DIR"
    log unpack "into releases/$NEW.partial"
    # Clock skew: entry times a few seconds ahead are not an error.
    run_to "" "$TMP_DOWNLOAD.err" tar "${ZPROG[@]}" -x --numeric-owner -f "$TMP_DOWNLOAD" -C "$PARTIAL_DIR" \
        --warning=no-timestamp --no-same-owner --no-same-permissions --no-overwrite-dir </dev/null
    n=$?
    [[ -s $TMP_DOWNLOAD.err ]] && { IFS= read -r err <"$TMP_DOWNLOAD.err" || true; }
    ((n == 0)) || finish 6 failed "tar could not unpack the bundle (status $n): $(q "$err")"
    [[ -z $err ]] || finish 6 failed "unsafe bundle: tar warned $(q "$err")"
    rm -rf -- "$TMP_DIR"
    TMP_DIR="" TMP_DOWNLOAD=""
    [[ -f $PARTIAL_DIR/$COMPOSE_FILE && ! -L $PARTIAL_DIR/$COMPOSE_FILE ]] ||
        finish 7 failed "compose file $(q "$COMPOSE_FILE") is not a regular file in the bundle"
    { mkdir -p -- "$PARTIAL_DIR/.dropship" && rm -f -- "$PARTIAL_DIR/.dropship/release.json" &&
        : >"$PARTIAL_DIR/.dropship/unswitched"; } 2>/dev/null || finish 6 failed "cannot write .dropship/ in the release"
    now_iso
    json_write "$PARTIAL_DIR/.dropship/release.json" \
        name "$NEW" app "$APP" env "$ENV_NAME" bucket "$BUCKET" key "$KEY" \
        version_id "$VERSION_ID" sequencer "$SEQUENCER" sha256 "$SHA256" commit "$COMMIT" \
        deployed_at "$REPLY" deployed_us "${EPOCHREALTIME/./}" \
        compose_file "$COMPOSE_FILE" profiles "$PROFILES" health_url "$HEALTH_URL" \
        health_timeout "$HEALTH_TIMEOUT" shared_paths "$SHARED_PATHS" strategy "$STRATEGY" \
        proxy_service "$PROXY_SERVICE" proxy_port "$PROXY_PORT" proxy_listen "$PROXY_LISTEN" \
        proxy_health_path "$PROXY_HEALTH_PATH" proxy_drain "$PROXY_DRAIN_TIMEOUT" proxy_image "$PROXY_IMAGE" ||
        finish 6 failed "cannot write .dropship/release.json"
    mv -T -- "$PARTIAL_DIR" "$APP_ROOT/releases/$NEW" || finish 6 failed "cannot rename the release into place"
    PARTIAL_DIR=""
    log unpack "release $NEW ready"
}

# The bundler's secret-looking file names (bundler::select::SECRET_PATTERNS and
# SECRET_EXCEPTIONS; `seeded_secret_names_are_the_bundlers` keeps the lists equal). A pattern
# without '/' matches the file name, `**/` any leading directories.
readonly SECRET_GLOBS=(.env '.env.*' '*.pem' '*.key' '*.p12' '*.pfx' '*.jks' '*.keystore'
    'id_rsa*' 'id_dsa*' 'id_ecdsa*' 'id_ed25519*' .netrc .npmrc .pypirc '*.tfstate'
    '*.tfstate.*' credentials.json '**/.aws/credentials' '**/.docker/config.json')
readonly SECRET_EXCEPTION_GLOBS=(.env.example .env.sample .env.template '*.pub')

glob_matches() { # glob path
    # shellcheck disable=SC2053 # the right-hand side is a glob on purpose
    case $1 in
    '**/'*) [[ $2 == ${1#'**/'} || $2 == *"/${1#'**/'}" ]] ;;
    */*) [[ $2 == $1 ]] ;;
    *) [[ ${2##*/} == $1 ]] ;;
    esac
}

looks_secret() { # path inside the release
    local g
    for g in "${SECRET_EXCEPTION_GLOBS[@]}"; do glob_matches "$g" "$1" && return 1; done
    for g in "${SECRET_GLOBS[@]}"; do glob_matches "$g" "$1" && return 0; done
    return 1
}

# Takes group and other permissions off every secret-looking file of a seed copy.
close_secrets() { # copy rel
    local f
    if [[ -f $1 ]]; then
        looks_secret "$2" && { chmod go-rwx -- "$1" || return 1; }
        return 0
    fi
    while IFS= read -r -d '' f; do
        looks_secret "$2/${f#"$1"/}" && { chmod go-rwx -- "$f" || return 1; }
    done < <(find "$1" -type f -print0 2>/dev/null)
    return 0
}

# Links each shared path into the new release. shared/ is never overwritten: a path missing
# there is seeded from the bundle's copy when it has one (copied under a temporary name and
# renamed, so a killed copy is never taken for a seeded path), else created (a directory, or
# an empty 0600 file for names with a dot such as .env); the bundle's copy is then replaced
# by the link. Nothing is removed through a symlink.
link_shared() {
    local dir="$APP_ROOT/releases/$NEW" list p rel parent tmp ups i n
    [[ -n $SHARED_PATHS ]] || return 0
    IFS=, read -r -a list <<<"$SHARED_PATHS"
    for rel in "${list[@]}"; do
        p="$APP_ROOT/shared/$rel"
        parent=${rel%/*}
        [[ $parent == "$rel" ]] && parent=""
        # No component of the path inside the release may be a symlink.
        ups=""
        IFS=/ read -r -a i <<<"$parent"
        for ((n = 0; n < ${#i[@]}; n++)); do
            ups+="${i[n]}"
            [[ -L $dir/$ups ]] && finish 7 failed "cannot link shared path $rel: $ups is a symlink in the bundle"
            ups+=/
        done
        if [[ ! -e $p && ! -L $p ]]; then
            mkdir -p -- "${p%/*}" || finish 7 failed "cannot create the parent of shared/$rel"
            if [[ -e $dir/$rel && ! -L $dir/$rel ]]; then
                tmp="${p%/*}/.dropship-seed.$$"
                # Unreadable to other users from the first byte (umask 077; cp -a gives each
                # file its bundle mode once it is whole), and secret-looking files stay so.
                if ! (umask 077 && run cp -a -- "$dir/$rel" "$tmp") || ! close_secrets "$tmp" "$rel" ||
                    ! mv -T -- "$tmp" "$p"; then
                    rm -rf -- "$tmp"
                    finish 7 failed "cannot seed shared/$rel (disk full?)"
                fi
                log shared "seeded shared/$rel from the bundle"
            elif [[ ${rel##*/} != *.* ]]; then
                mkdir -p -- "$p" || finish 7 failed "cannot create shared/$rel"
                log shared "created directory shared/$rel"
            else
                (umask 077 && : >"$p") 2>/dev/null || finish 7 failed "cannot create shared/$rel"
                log shared "created empty file shared/$rel"
            fi
        elif [[ -e $dir/$rel || -L $dir/$rel ]]; then
            log shared "bundle's $rel ignored: shared/$rel is kept"
        fi
        rm -rf -- "${dir:?}/$rel"
        mkdir -p -- "$dir/$parent" || finish 7 failed "cannot create the parent of $rel"
        IFS=/ read -r -a i <<<"$rel"
        ups=""
        for ((n = 1; n < ${#i[@]}; n++)); do ups+="../"; done
        # releases/<name>/<rel> -> ../../shared/<rel> (plus one ../ per extra component)
        ln -s -- "${ups}../../shared/$rel" "$dir/$rel" || finish 7 failed "cannot link $rel"
    done
    log shared "linked ${#list[@]} shared path(s)"
}

# The release becomes readable to other users (an app container running as another user)
# only now that no bundle copy of a shared path (a .env) is left in it.
open_release() {
    chmod 0755 -- "$APP_ROOT/releases/$NEW" || finish 6 failed "cannot open releases/$NEW to the app's users"
}

# Reads a .env the way compose does: NAME=VALUE or NAME: VALUE lines, optional `export `,
# comments, a bare NAME (taken from the environment: not set here), quoted values (which may
# span lines; text after the closing quote is ignored). Strict (the deploy's check): a line
# compose would refuse fails the deploy without being printed. Lenient (on start, for the
# output of recovery): whatever follows a '=' or ':' is taken as a value. Values go to
# ENV_VALUES (the rules) and REDACT; they never reach a log line or a process.
declare -A ENV_VALUES=()
read_env() { # file strict
    local line n=0 name val quote="" start=0 l
    [[ -f $1 ]] || return 0
    while IFS= read -r line || [[ -n $line ]]; do
        n=$((n + 1))
        if [[ -n $quote ]]; then
            if [[ $line == *"$quote"* ]]; then
                val+=$'\n'${line%%"$quote"*}
                quote=""
            else
                val+=$'\n'$line
                continue
            fi
        else
            [[ $line =~ ^[[:space:]]*((export[[:space:]]+)?[A-Za-z_][A-Za-z0-9_.-]*[[:space:]]*)?(#.*)?$ ]] && continue
            if [[ ! $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_.-]*)[[:space:]]*[=:][[:space:]]*(.*)$ ]]; then
                ((${2})) && finish 7 failed "shared/.env line $n is not NAME=VALUE (the line is not shown: it may hold a secret)"
                val=${line#*[=:]}
                ((${#val} >= 6)) && REDACT+=("$val")
                continue
            fi
            name=${BASH_REMATCH[2]} val=${BASH_REMATCH[3]}
            if [[ $val == [\"\']* ]]; then
                quote=${val:0:1} val=${val:1} start=$n
                if [[ $val == *"$quote"* ]]; then
                    val=${val%%"$quote"*} quote=""
                else
                    continue
                fi
            else
                val=${val%%[[:space:]]#*}
                val=${val%"${val##*[![:space:]]}"}
            fi
        fi
        ENV_VALUES[$name]=$val
        while IFS= read -r l; do ((${#l} >= 6)) && REDACT+=("$l"); done <<<"$val"
    done <"$1"
    if [[ -n $quote ]]; then
        ((${2})) && finish 7 failed "shared/.env line $start opens a quote that never closes (the line is not shown)"
        while IFS= read -r l; do ((${#l} >= 6)) && REDACT+=("$l"); done <<<"$val"
    fi
}

# DROPSHIP_REQUIRED_ENV: each variable present, long enough, matching its pattern.
# Messages name the variable and never its value.
check_env() {
    local i name val why=""
    read_env "$APP_ROOT/releases/$NEW/.env" 1
    for ((i = 0; i < ${#RULE_NAMES[@]}; i++)); do
        name=${RULE_NAMES[i]}
        if [[ ! -v ENV_VALUES[$name] ]]; then
            why+="; $name is not set"
            continue
        fi
        val=${ENV_VALUES[$name]}
        ((${#val} >= RULE_MINS[i])) || why+="; $name is shorter than ${RULE_MINS[i]} bytes"
        [[ -z ${RULE_PATTERNS[i]} || $val =~ ^(${RULE_PATTERNS[i]})$ ]] || why+="; $name does not match its pattern"
    done
    [[ -z $why ]] || finish 7 failed "shared/.env: ${why#; } (values are never shown)"
    ((${#RULE_NAMES[@]} == 0)) || log env "${#RULE_NAMES[@]} required variable(s) pass their rules"
}

# The compose rules of start-first, over `docker compose config --format json`: one line per
# violation, naming the service and what to change. Two containers of the switched service
# run at once during a switch, and the proxy owns the published port.
# shellcheck disable=SC2016 # an awk program: its $ are awk's
readonly START_FIRST_AWK='
function busy(p,   r) {
    gsub(/[",]/, "", p)
    if (p == port) return 1
    if (split(p, r, "-") == 2 && port + 0 >= r[1] + 0 && port + 0 <= r[2] + 0) return 1
    return 0
}
/^  "services": \{$/ { on = 1; next }
on && /^  \}/ { on = 0; next }
on && /^    "[^"]+": \{$/ { cur = substr($0, 6); sub(/": \{$/, "", cur); if (cur == svc) found = 1; next }
on && cur == svc && /^      "container_name": / { print "service " svc " sets container_name: two of its containers run at once during a switch; remove container_name" }
on && cur == svc && /^      "ports": \[/ { print "service " svc " publishes ports: the proxy publishes " listen " for it; remove its ports: (the proxy reaches it on its container port)" }
on && cur == svc && /^      "network_mode": / { print "service " svc " sets network_mode " $2 " the proxy reaches it by name on a network; remove network_mode" }
on && cur == svc && /^        "replicas": / { n = $2 + 0; if (n > 1) print "service " svc " asks for " n " replicas: start-first switches one container; set replicas to 1" }
on && cur == svc && /^      "volumes": \[/ { vol = 1; next }
vol && /^      \]/ { vol = 0; next }
vol && /^        \{/ { vtype = ""; vsrc = ""; vro = 0; next }
vol && /^          "type": / { vtype = $2 }
vol && /^          "source": / { vsrc = $2; gsub(/[",]/, "", vsrc) }
vol && /^          "read_only": true/ { vro = 1 }
vol && /^        \}/ { if (vtype ~ /"volume"/ && vsrc != "" && !vro) print "service " svc " mounts the named volume " vsrc " read-write: two containers would write it at once during a switch; mount it read-only (:ro) or move the writer to another service" }
on && cur != svc && /^          "published": / { if (busy($2)) print "service " cur " publishes port " port ", which the proxy takes (" listen "); publish another port" }
END { if (!found) print "service " svc " (DROPSHIP_PROXY_SERVICE) is not in the compose file with its profiles; name a service it has" }'

check_compose() {
    local dir="$APP_ROOT/releases/$NEW" images img
    compose_args "$dir" "$COMPOSE_FILE" "$PROFILES"
    dk "${COMPOSE[@]}" config -q || finish 7 failed "docker compose config rejected $(q "$COMPOSE_FILE")"
    log config "docker compose config ok"
    if [[ $STRATEGY == start-first ]]; then
        local why
        why=$("${DIE_WITH_ME[@]}" docker "${COMPOSE[@]}" config --format json </dev/null 2>/dev/null 9>&- |
            awk -v svc="$PROXY_SERVICE" -v port="${PROXY_LISTEN##*:}" -v listen="$PROXY_LISTEN" "$START_FIRST_AWK")
        [[ -z $why ]] || finish 7 failed "start-first cannot run this compose file: ${why//$'\n'/; }"
        log config "start-first: $PROXY_SERVICE is switched through the proxy on $PROXY_LISTEN"
    fi
    # Images before the switch: a missing one fails here, with the running release untouched.
    if dk "${COMPOSE[@]}" config --format json | grep -q '"build":'; then
        dk "${COMPOSE[@]}" build || finish 5 failed "docker compose build failed"
        return
    fi
    images=$(dk "${COMPOSE[@]}" config --images) || finish 7 failed "docker compose cannot list the images"
    for img in $images; do
        # Piped, not redirected: a redirection on the call would also catch the result line
        # that a signal's trap prints meanwhile.
        dk image inspect --format present "$img" | grep -qx present && continue
        log images "pulling $img"
        dk pull "$img" || finish 5 failed "image $(q "$img") is not on this host and could not be pulled"
    done
}

run_hook() {
    local dir="$APP_ROOT/releases/$NEW" real rdir rc
    [[ -n $HOOK ]] || return 0
    rdir=$(realpath -e -- "$dir") || finish 8 failed "release $NEW is missing"
    real=$(realpath -e -- "$dir/$HOOK" 2>/dev/null) || finish 8 failed "pre-switch hook $(q "$HOOK") does not exist"
    [[ $real == "$rdir"/* && -f $real ]] || finish 8 failed "pre-switch hook $(q "$HOOK") is not a file inside the release"
    log hook "running $HOOK"
    local how=(bash --)
    [[ -x $real ]] && how=()
    run_redacted env -C "$dir" DROPSHIP_RELEASE_DIR="$dir" DROPSHIP_PREVIOUS_RELEASE="$ST_CURRENT" "${how[@]}" "$real"
    rc=$?
    ((rc == 0)) || finish 8 failed "pre-switch hook $(q "$HOOK") exited $rc"
    log hook "ok"
}

# Records the operation about to switch `current` (state.json `pending`) and prints the
# provisional result line for a kill between here and the commit.
begin_switch() { # what message
    ST_PENDING=$1
    save_state "$ST_LAST_OUTCOME" || {
        ST_PENDING=""
        finish 4 failed "cannot write state.json before switching (disk full?); nothing was switched"
    }
    result_line interrupted 10 "$2"
}

# After a failed switch to $1: put $2 (may be "") back, bring it up, report.
roll_back() { # failed-release previous-release reason
    local failed=$1 prev=$2 reason=$3
    OUT_ATTEMPTED=$failed
    log rollback "$reason; switching back to ${prev:-nothing}"
    if [[ -z $prev ]]; then
        switch_current ""
        { remove_proxy; dk compose -p "$PROJECT" down --remove-orphans; } || true
        ST_PENDING=""
        OUT_RELEASE="" OUT_PREVIOUS=""
        save_state rolled_back "$failed" || reason+="; state.json could not be written"
        after_commit "$ST_KEEP"
        finish 9 rolled_back "$reason; no previous release: stopped the project and removed current"
    fi
    OUT_RELEASE=$ST_CURRENT OUT_PREVIOUS=$ST_PREVIOUS
    if switch_current "$prev" && bring_up "$prev"; then
        ST_PENDING=""
        save_state rolled_back "$failed" || reason+="; state.json could not be written (the next run checks the host again)"
        after_commit "$ST_KEEP"
        finish 9 rolled_back "$reason; rolled back to $prev, which is healthy"
    fi
    ST_PENDING=""
    save_state rollback_failed "$failed"
    finish 10 rollback_failed "$reason; rollback to $prev also failed"
}

# What every deploy and rollback does first: lock, state, the project's owner, recovery,
# leftovers.
start_locked() {
    acquire_lock
    load_state
    proxy_names
    read_env "$APP_ROOT/shared/.env" 0
    check_project_owner
    OUT_RELEASE=$ST_CURRENT OUT_PREVIOUS=$ST_PREVIOUS
    recover
    clean_leftovers
}

do_deploy() {
    local t0=$EPOCHREALTIME old
    start_locked
    ST_KEEP=$KEEP_RELEASES

    # idempotency
    if [[ -n $ST_CURRENT && $ST_VERSION_ID == "$VERSION_ID" && -d $APP_ROOT/releases/$ST_CURRENT ]]; then
        ((RECOVERY_FAILED)) && finish 10 rollback_failed "version is current but not healthy: $RECOVERY_MSG"
        finish 0 noop "version $(q "$VERSION_ID") is already current ($ST_CURRENT) and runs"
    fi
    if [[ -n $SEQUENCER && -n $ST_SEQUENCER ]] && seq_older "$SEQUENCER" "$ST_SEQUENCER"; then
        ((RECOVERY_FAILED)) && finish 10 rollback_failed "stale event, and the host is not verified: $RECOVERY_MSG"
        finish 0 stale "sequencer $SEQUENCER is older than the deployed $ST_SEQUENCER; skipped"
    fi
    log idempotency "deploying version $(q "$VERSION_ID") (sequencer ${SEQUENCER:-none}) over ${ST_CURRENT:-nothing}"

    preflight
    download
    verify
    unpack
    link_shared
    open_release
    check_env
    check_compose
    run_hook

    # switch
    old=$ST_CURRENT
    check_time_for_switch "$HEALTH_TIMEOUT" "$old" "${PROXY_DRAIN_TIMEOUT:-0}"
    local after="restores $old"
    [[ -n $old ]] || after="stops the project"
    begin_switch "deploy $NEW over ${old:-nothing}" \
        "stopped after switching to $NEW, before its health was checked: the next run $after first"
    switch_current "$NEW" || {
        ST_PENDING=""
        save_state "$ST_LAST_OUTCOME"
        finish 6 failed "could not switch current to $NEW"
    }
    rm -f -- "$APP_ROOT/releases/$NEW/.dropship/unswitched"
    log switch "current -> releases/$NEW (setup took $(((${EPOCHREALTIME/./} - ${t0/./}) / 1000)) ms)"

    bring_up "$NEW" || roll_back "$NEW" "$old" "$NEW failed docker compose up or its health check"

    # commit
    ST_PREVIOUS=$old ST_CURRENT=$NEW ST_LAST_GOOD=$NEW ST_VERSION_ID=$VERSION_ID
    [[ -n $SEQUENCER ]] && ST_SEQUENCER=$SEQUENCER
    ST_COMMIT=$COMMIT ST_SHA256=$SHA256 ST_PENDING=""
    if ! save_state deployed; then
        # Never report a deploy that is not committed: the committed release is still the
        # old one, so go back to it.
        ST_CURRENT=$old ST_PREVIOUS="" ST_LAST_GOOD=""
        load_state
        roll_back "$NEW" "$old" "$NEW is healthy but state.json could not be written (disk full?)"
    fi
    OUT_RELEASE=$NEW OUT_PREVIOUS=$old
    after_commit "$KEEP_RELEASES"
    finish 0 deployed "deployed $NEW (version $(q "$VERSION_ID"))"
}

do_rollback() {
    local target old
    start_locked
    VERSION_ID=$ST_VERSION_ID COMMIT=$ST_COMMIT SHA256=$ST_SHA256
    if [[ -n $EXPECT_VERSION_ID && $EXPECT_VERSION_ID != "$ST_VERSION_ID" ]]; then
        ((RECOVERY_FAILED)) && finish 10 rollback_failed "superseded, and the host is not verified: $RECOVERY_MSG"
        finish 0 superseded "the committed version is $(q "$ST_VERSION_ID"), not $(q "$EXPECT_VERSION_ID"): nothing done"
    fi
    target=${ROLLBACK_TO:-$ST_PREVIOUS} old=$ST_CURRENT
    [[ -n $target ]] || finish 2 failed "bad input: no previous release to roll back to (the first deploy on this host); nothing done"
    [[ -d $APP_ROOT/releases/$target ]] || finish 2 failed "bad input: release $target does not exist"
    if [[ $target == "$old" ]]; then
        ((RECOVERY_FAILED)) && finish 10 rollback_failed "$target is current but not healthy: $RECOVERY_MSG"
        finish 0 noop "$target is already current"
    fi
    load_release "$target" || finish 2 failed "bad input: release $target has no readable release.json"
    local r_version=$R_VERSION_ID r_commit=$R_COMMIT r_sha=$R_SHA256
    log rollback "requested: ${old:-nothing} -> $target"
    check_time_for_switch "$R_HEALTH_TIMEOUT" "$old" "$R_PROXY_DRAIN"
    begin_switch "rollback to $target from ${old:-nothing}" \
        "stopped after switching to $target, before its health was checked: the next run restores ${old:-nothing} first"
    if switch_current "$target" && bring_up "$target"; then
        ST_PREVIOUS=$old ST_CURRENT=$target ST_LAST_GOOD=$target ST_PENDING=""
        ST_VERSION_ID=$r_version ST_COMMIT=$r_commit ST_SHA256=$r_sha
        VERSION_ID=$r_version COMMIT=$r_commit SHA256=$r_sha
        if save_state rolled_back; then
            OUT_RELEASE=$target OUT_PREVIOUS=$old
            after_commit "$ST_KEEP"
            finish 0 rolled_back "rolled back to $target on request"
        fi
        load_state
        target+=" (healthy, but state.json could not be written)"
    fi
    OUT_ATTEMPTED=${target%% *}
    if [[ -z $old ]]; then
        switch_current ""
        { remove_proxy; dk compose -p "$PROJECT" down --remove-orphans; } || true
        ST_PENDING=""
        save_state rollback_failed "$OUT_ATTEMPTED"
        finish 10 rollback_failed "requested rollback to $target failed and nothing was current before"
    fi
    log rollback "$target is not kept; switching back to $old"
    if switch_current "$old" && bring_up "$old"; then
        ST_PENDING=""
        save_state failed "$OUT_ATTEMPTED"
        finish 9 failed "requested rollback to $target failed; $old restored and healthy"
    fi
    ST_PENDING=""
    save_state rollback_failed "$OUT_ATTEMPTED"
    finish 10 rollback_failed "requested rollback to $target failed and $old is not healthy either"
}

do_status() {
    local msg
    if [[ ! -e $APP_ROOT/state.json && ! -L $APP_ROOT/current ]]; then
        finish 0 status "nothing deployed in $APP_ROOT"
    fi
    load_state
    printf '%s\n' "--- $APP_ROOT/state.json"
    cat -- "$APP_ROOT/state.json" 2>/dev/null
    current_link
    printf '%s\n' "--- current -> ${REPLY:-(none)}" "--- docker compose ps (project $PROJECT)"
    dk compose -p "$PROJECT" ps || true
    OUT_RELEASE=$ST_CURRENT OUT_PREVIOUS=$ST_PREVIOUS VERSION_ID=$ST_VERSION_ID COMMIT=$ST_COMMIT
    msg="current ${ST_CURRENT:-none}, previous ${ST_PREVIOUS:-none}"
    proxy_names
    proxy_state
    if [[ $REPLY == running ]] && proxy_routes; then
        printf '%s\n' "--- proxy $PROXY_NAME routes to: ${REPLY:-nothing}"
        TRAFFIC="proxy $PROXY_NAME -> ${REPLY:-nothing}"
        proxy_api GET /reverse_proxy/upstreams && printf '%s\n' "--- in flight: $REPLY"
    elif [[ $REPLY != missing ]]; then
        msg+="; the proxy $PROXY_NAME is $REPLY"
    fi
    check_host
    if ((${#REASONS[@]})); then
        printf -v msg '; %s' "${REASONS[@]}"
        msg="NEEDS RECOVERY: ${msg#; }; the next run restores ${ST_CURRENT:-nothing} first ($msg)"
    fi
    finish 0 status "$msg"
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
