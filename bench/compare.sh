#!/usr/bin/env bash
# bench/compare.sh: the relay against Postfix (SMTP) and Dovecot (IMAP) on
# this machine, one after the other, on loopback ports of their own.
#
#   bench/compare.sh [PART...]     PART: smtp e2e forward deferred imap postgres (default: all but postgres)
#   QUICK=1 bench/compare.sh       every part with small counts, in a few minutes
#
# Sizes and knobs (environment): N (messages for smtp, e2e, forward;
# 20000), DEFERRED (messages for deferred; 100000), MAILBOX (messages per
# IMAP mailbox; 10000), C (SMTP sessions; 20), SIZE (bytes; 4096), USERS
# (recipients spread over; 10), IMAP_USERS (4), IMAP_C (IMAP clients; 20),
# IMAP_DURATION (30s), IMAP_OPS (the operation mix of the main IMAP load),
# IMAP_SEARCH_C (clients of the text-search load; 2), PIPELINING (only
# this relay-bench -pipelining value in smtp; both when unset),
# PF_IN_FLOW_DELAY (Postfix in_flow_delay; 0s), PORT_BASE (23000),
# WAIT_TIMEOUT (seconds for any one wait), SETTLE (seconds before the
# deferred memory reading; 12), KEEP=1 (keep the work
# directory), RESULTS (copy the results table and the JSON summaries to
# this directory), RELAY_BIN (a relay binary to use instead of building
# ./cmd/relay).
#
# The postgres part runs the relay on a PostgreSQL store (a throwaway cluster
# in the work directory, fsync and synchronous commit on): accept, accept
# plus delivery and 100,000 deferred against Postfix, and three relay nodes
# sharing the one database on this machine.
#
# Needs root: it installs postfix and dovecot-imapd from Debian when they
# are missing, creates the system user relaybench (the owner of the test
# Maildirs), and runs Postfix, Dovecot, smtp-sink and the relay from a
# temporary directory. Everything it starts is stopped when it exits.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)

# ---- settings -------------------------------------------------------------

if [[ ${QUICK:-0} == 1 ]]; then
	N=${N:-500} DEFERRED=${DEFERRED:-1000} MAILBOX=${MAILBOX:-300} IMAP_DURATION=${IMAP_DURATION:-5s}
fi
N=${N:-20000}
DEFERRED=${DEFERRED:-100000}
MAILBOX=${MAILBOX:-10000}
C=${C:-20}
SIZE=${SIZE:-4096}
USERS=${USERS:-10}
IMAP_USERS=${IMAP_USERS:-4}
IMAP_C=${IMAP_C:-20}
IMAP_DURATION=${IMAP_DURATION:-30s}
IMAP_OPS=${IMAP_OPS:-select:5,fetch-headers:30,fetch-body:30,search-unseen:5,store:20,append:10}
IMAP_SEARCH_C=${IMAP_SEARCH_C:-2}
IMAP_SEARCH_DURATION=${IMAP_SEARCH_DURATION:-$IMAP_DURATION}
PIPELINING=${PIPELINING:-}
# Postfix pauses a session for in_flow_delay (1s by default) before it
# accepts a message while mail arrives faster than it leaves; 0 measures
# what smtpd can take.
PF_IN_FLOW_DELAY=${PF_IN_FLOW_DELAY:-0s}
# Seconds between the last deferral and the memory reading, on both: the
# relay gives cold memory back every 10 s.
SETTLE=${SETTLE:-12}
PASS=benchpass
WAIT_TIMEOUT=${WAIT_TIMEOUT:-1800} # seconds for any one wait
[[ ${QUICK:-0} == 1 ]] && WAIT_TIMEOUT=${WAIT_TIMEOUT_QUICK:-300}

# Loopback ports; nothing here uses the standard ones. PORT_BASE moves them
# all (default 23000: relay 23025/23587/23143, Postfix 23026, Dovecot
# 23144, smtp-sink 23027, the closed port 23028).
PORT_BASE=${PORT_BASE:-23000}
RELAY_SMTP=127.0.0.1:$((PORT_BASE + 25))
RELAY_SUBMISSION=127.0.0.1:$((PORT_BASE + 587))
RELAY_IMAP=127.0.0.1:$((PORT_BASE + 143))
PF_SMTP=127.0.0.1:$((PORT_BASE + 26))
DV_IMAP=127.0.0.1:$((PORT_BASE + 144))
SINK_PORT=$((PORT_BASE + 27)) # smtp-sink, the forwarding destination (sink.test)
DOWN_PORT=$((PORT_BASE + 28)) # closed at first, for deferred mail (down.test)

ALL_PARTS="smtp e2e forward deferred imap postgres"
PARTS=${*:-smtp e2e forward deferred imap}

# ---- output ---------------------------------------------------------------

log() { printf '\n== %s\n' "$*" >&2; }
note() { printf '   %s\n' "$*" >&2; }
die() {
	printf 'compare.sh: %s\n' "$*" >&2
	exit 1
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
per_sec() { awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", n / s; else print "0" }'; }

# json FILE EXPR: a field of a relay-bench JSON summary, e.g. json f '["latency"]["p99_ms"]'.
json() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))'"$2"'; print(v)' "$1"; }

# result FIGURE RELAY PEER UNIT BETTER: one row of the final table.
result() {
	printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$W/results.tsv"
	printf '   -> %-44s relay %-10s peer %-10s %s\n' "$1" "$2" "$3" "$4" >&2
}

table() {
	printf '\n%-46s %12s %12s %8s  %s\n' figure relay peer ratio "unit (relay/peer; better: higher or lower)"
	awk -F'\t' '{
		ratio = ($3 + 0 > 0) ? sprintf("%.2f", $2 / $3) : "-"
		printf "%-46s %12s %12s %8s  %s, %s is better\n", $1, $2, $3, ratio, $4, $5
	}' "$W/results.tsv"
}

# ---- waiting --------------------------------------------------------------

# wait_for DESCRIPTION SECONDS COMMAND...: until COMMAND succeeds.
wait_for() {
	local what=$1 limit=$2 t0
	shift 2
	t0=$(now)
	until "$@"; do
		if awk -v t="$(since "$t0")" -v l="$limit" 'BEGIN { exit !(t > l) }'; then
			die "timed out after ${limit}s waiting for $what"
		fi
		sleep 0.1
	done
}

port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
wait_port() { wait_for "$1 to listen" "${2:-30}" port_open "$1"; }
port_closed() { ! port_open "$1"; }

# ---- setup ----------------------------------------------------------------

# ports_free: every port this script uses must be free before it starts.
ports_free() {
	local a
	for a in "$RELAY_SMTP" "$RELAY_SUBMISSION" "$RELAY_IMAP" "$PF_SMTP" "$DV_IMAP" "127.0.0.1:$SINK_PORT" "127.0.0.1:$DOWN_PORT"; do
		port_closed "$a" || die "$a is in use; set PORT_BASE to move this script's ports (now $PORT_BASE)"
	done
}

need_tools() {
	[[ $(id -u) == 0 ]] || die "run as root (installs packages, starts Postfix and Dovecot)"
	command -v go >/dev/null || [[ -x /usr/local/go/bin/go ]] || die "go not found"
	command -v python3 >/dev/null || die "python3 not found (reads the JSON summaries)"
	command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
}

install_peers() {
	if command -v postfix >/dev/null && command -v smtp-source >/dev/null && command -v dovecot >/dev/null &&
		[[ -e /usr/lib/dovecot/imap ]]; then
		return
	fi
	log "installing postfix and dovecot-imapd from Debian"
	printf '%s\n' "postfix postfix/main_mailer_type select Local only" "postfix postfix/mailname string localhost" |
		debconf-set-selections
	# Keep the packages from starting the system-wide daemons.
	local made_policy=
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		made_policy=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix dovecot-imapd >"$W/apt.log" 2>&1 ||
		{ apt-get update -q >>"$W/apt.log" 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix dovecot-imapd >>"$W/apt.log" 2>&1; } ||
		die "apt-get install failed; see $W/apt.log"
	[[ -n $made_policy ]] && rm -f /usr/sbin/policy-rc.d
	return 0
}

build() {
	log "building relay and relay-bench"
	RELAY=${RELAY_BIN:-$W/bin/relay}
	BENCH=$W/bin/relay-bench
	if [[ -z ${RELAY_BIN:-} ]]; then
		(cd "$ROOT" && go build -o "$RELAY" ./cmd/relay) || die "go build ./cmd/relay failed"
	fi
	(cd "$ROOT" && go build -o "$BENCH" ./cmd/relay-bench) || die "go build ./cmd/relay-bench failed"
	HTTP_FLAG=()
	if "$RELAY" serve -h 2>&1 | grep -q -- '-http '; then HTTP_FLAG=(--http off); fi
}

vmail_user() {
	id relaybench >/dev/null 2>&1 ||
		useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin relaybench
	VUID=$(id -u relaybench)
	VGID=$(id -g relaybench)
	mkdir -p "$MAIL"
	chown relaybench:relaybench "$MAIL"
}

# Every user of every part: user0 .. user{K-1}@localhost.
max_users() { printf '%s\n' "$USERS" "$IMAP_USERS" | sort -n | tail -1; }

# ---- Postfix --------------------------------------------------------------

setup_postfix() {
	PF=$W/postfix
	PFC=$PF/etc
	mkdir -p "$PFC" "$PF/spool" "$PF/data"
	local i k
	k=$(max_users)
	: >"$PFC/vmailbox"
	for ((i = 0; i < k; i++)); do echo "user$i@localhost localhost/user$i/" >>"$PFC/vmailbox"; done
	cat >"$PFC/transport" <<-EOF
		sink.test smtp:[127.0.0.1]:$SINK_PORT
		down.test smtp:[127.0.0.1]:$DOWN_PORT
	EOF
	cat >"$PFC/main.cf" <<-EOF
		compatibility_level = 3.6
		queue_directory = $PF/spool
		data_directory = $PF/data
		command_directory = /usr/sbin
		daemon_directory = /usr/lib/postfix/sbin
		shlib_directory = /usr/lib/postfix
		meta_directory = /etc/postfix
		mail_owner = postfix
		setgid_group = postdrop
		maillog_file_prefixes = $W, /dev/stdout
		maillog_file = $PF/maillog
		myhostname = localhost
		mydomain = localhost
		myorigin = localhost
		mydestination =
		inet_interfaces = 127.0.0.1
		inet_protocols = ipv4
		mynetworks = 127.0.0.0/8
		smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
		local_recipient_maps =
		alias_maps =
		alias_database =
		biff = no
		virtual_mailbox_domains = localhost
		virtual_mailbox_base = $MAIL
		virtual_mailbox_maps = texthash:$PFC/vmailbox
		virtual_uid_maps = static:$VUID
		virtual_gid_maps = static:$VGID
		transport_maps = texthash:$PFC/transport
		smtp_dns_support_level = disabled
		smtp_tls_security_level = none
		smtpd_tls_security_level = none
		message_size_limit = 52428800
		virtual_mailbox_limit = 0
		in_flow_delay = $PF_IN_FLOW_DELAY
	EOF
	cat >"$PFC/master.cf" <<-EOF
		$PF_SMTP inet n - n - - smtpd
		pickup     unix n - n 60 1 pickup
		cleanup    unix n - n - 0 cleanup
		qmgr       unix n - n 300 1 qmgr
		rewrite    unix - - n - - trivial-rewrite
		bounce     unix - - n - 0 bounce
		defer      unix - - n - 0 bounce
		trace      unix - - n - 0 bounce
		verify     unix - - n - 1 verify
		flush      unix n - n 1000? 0 flush
		proxymap   unix - - n - - proxymap
		proxywrite unix - - n - 1 proxymap
		smtp       unix - - n - - smtp
		relay      unix - - n - - smtp
		showq      unix n - n - - showq
		error      unix - - n - - error
		retry      unix - - n - - error
		discard    unix - - n - - discard
		local      unix - n n - - local
		virtual    unix - n n - - virtual
		lmtp       unix - - n - - lmtp
		anvil      unix - - n - 1 anvil
		scache     unix - - n - 1 scache
		postlog    unix-dgram n - n - 1 postlogd
	EOF
	chown postfix "$PF/data"
	# postfix check logs through postlogd, which is not running yet: let it
	# log to stdout for the check.
	postconf -c "$PFC" -e maillog_file=/dev/stdout
	postfix -c "$PFC" check >"$W/postfix-check.log" 2>&1 || die "postfix check failed: $(cat "$W/postfix-check.log")"
	postconf -c "$PFC" -e "maillog_file=$PF/maillog"
}

start_postfix() {
	postfix -c "$PFC" start >>"$W/postfix-start.log" 2>&1 || die "postfix start failed; see $W/postfix-start.log and $PF/maillog"
	PF_RUNNING=1
	wait_port "$PF_SMTP"
}

# stop_postfix [nowait]
stop_postfix() {
	[[ -n ${PF_RUNNING:-} ]] || return 0
	postfix -c "$PFC" stop >>"$W/postfix-start.log" 2>&1 || true
	PF_RUNNING=
	[[ ${1:-} == nowait ]] || wait_for "Postfix to stop" 30 port_closed "$PF_SMTP"
}

pf_queue_empty() {
	pf_log_ok
	postqueue -c "$PFC" -p 2>/dev/null | grep -q 'Mail queue is empty'
}

# pf_log_ok: stop at once on a fatal error in Postfix's log, rather than
# wait for a queue that will not move.
pf_log_ok() {
	local fatal
	fatal=$(grep -m1 -E 'fatal:|bad command startup' "$PF/maillog" 2>/dev/null || true)
	[[ -z $fatal ]] || die "Postfix: $fatal (see $PF/maillog)"
}
pf_queue_files() { find "$PF/spool/$1" -type f 2>/dev/null | wc -l; }

# pf_pss: KiB of memory of the Postfix master and its children, by PSS
# (each shared page counted once in all, where a sum of RSS would count it
# in every process).
pf_pss() {
	local master p s=0
	master=$(tr -d ' ' <"$PF/spool/pid/master.pid")
	for p in "$master" $(ps -o pid= --ppid "$master"); do
		s=$((s + $(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)))
	done
	echo "$s"
}
pf_procs() { ps -o comm= --ppid "$(tr -d ' ' <"$PF/spool/pid/master.pid")" | sort | uniq -c | awk '{ printf "%s%s x%s", sep, $2, $1; sep = ", " }'; }

# ---- Dovecot --------------------------------------------------------------

setup_dovecot() {
	DV=$W/dovecot
	mkdir -p "$DV/run" "$DV/state"
	local i k
	k=$(max_users)
	: >"$DV/users"
	for ((i = 0; i < k; i++)); do
		echo "user$i@localhost:{PLAIN}$PASS:$VUID:$VGID::$MAIL/localhost/user$i::" >>"$DV/users"
	done
	chmod 640 "$DV/users"
	chgrp dovecot "$DV/users"
	cat >"$DV/dovecot.conf" <<-EOF
		protocols = imap
		listen = 127.0.0.1
		base_dir = $DV/run
		state_dir = $DV/state
		log_path = $DV/dovecot.log
		ssl = no
		disable_plaintext_auth = no
		auth_mechanisms = plain login
		mail_location = maildir:$MAIL/%d/%n
		first_valid_uid = $VUID
		mail_max_userip_connections = 1000
		passdb {
		  driver = passwd-file
		  args = scheme=PLAIN username_format=%u $DV/users
		}
		userdb {
		  driver = passwd-file
		  args = username_format=%u $DV/users
		}
		service imap-login {
		  inet_listener imap {
		    address = ${DV_IMAP%:*}
		    port = ${DV_IMAP##*:}
		  }
		  inet_listener imaps {
		    port = 0
		  }
		}
	EOF
}

start_dovecot() {
	dovecot -c "$DV/dovecot.conf" >>"$W/dovecot-start.log" 2>&1 || die "dovecot failed to start; see $W/dovecot-start.log and $DV/dovecot.log"
	DV_RUNNING=1
	wait_port "$DV_IMAP"
}

stop_dovecot() {
	[[ -n ${DV_RUNNING:-} ]] || return 0
	doveadm -c "$DV/dovecot.conf" stop >>"$W/dovecot-start.log" 2>&1 || true
	DV_RUNNING=
}

# ---- the relay ------------------------------------------------------------

# relay_users DIR: the accounts, made before the server starts.
relay_users() {
	local i k
	k=$(max_users)
	for ((i = 0; i < k; i++)); do
		echo "$PASS" | "$RELAY" user add "user$i@localhost" --password-stdin --data "$1" "${STORE_FLAGS[@]}" >/dev/null
	done
}

# start_relay DIR [FLAGS...]: serve DIR in the background; RELAY_START is
# the seconds from exec until the log line "msg=listening listener=smtp".
start_relay() {
	local dir=$1 t0
	shift
	RELAY_DIR=$dir
	RELAY_STARTS=$((${RELAY_STARTS:-0} + 1))
	RELAY_LOG=$W/relay-$(basename "$dir")-$RELAY_STARTS.log
	t0=$(now)
	"$RELAY" serve --data "$dir" "${STORE_FLAGS[@]}" --smtp "${NODE_SMTP:-$RELAY_SMTP}" --submission "${NODE_SUBMISSION:-$RELAY_SUBMISSION}" --imap "${NODE_IMAP:-$RELAY_IMAP}" \
		"${HTTP_FLAG[@]}" --domain localhost \
		--transport "sink.test=127.0.0.1:$SINK_PORT" --transport "down.test=127.0.0.1:$DOWN_PORT" \
		--log-level "${RELAY_LOG_LEVEL:-info}" "$@" >"$RELAY_LOG" 2>&1 &
	RELAY_PID=$!
	wait_for "the relay to listen" 600 relay_listening
	RELAY_START=$(since "$t0")
}

relay_listening() {
	kill -0 "$RELAY_PID" 2>/dev/null || die "the relay exited; see $RELAY_LOG"
	grep -q 'msg=listening listener=smtp' "$RELAY_LOG" 2>/dev/null
}

stop_relay() {
	[[ -n ${RELAY_PID:-} ]] || return 0
	kill -TERM "$RELAY_PID" 2>/dev/null || true
	wait "$RELAY_PID" 2>/dev/null || true
	RELAY_PID=
}

relay_queue_empty() { "$RELAY" queue list --data "$RELAY_DIR" "${STORE_FLAGS[@]}" 2>/dev/null | grep -q 'queue is empty'; }

# relay_unattempted: recipients in the relay's queue not tried yet.
relay_unattempted() { "$RELAY" queue list --data "$RELAY_DIR" "${STORE_FLAGS[@]}" | grep -c ' 0 tries' || true; }

relay_queued() { "$RELAY" queue list --data "$RELAY_DIR" "${STORE_FLAGS[@]}" | sed -n 's/^-- \([0-9]*\) message.*/\1/p'; }

# relay_inbox_total: messages in all INBOXes, from relay user list.
relay_inbox_total() { "$RELAY" user list --data "$RELAY_DIR" "${STORE_FLAGS[@]}" | awk 'NR > 1 { s += $2 } END { print s + 0 }'; }

# ---- smtp-sink ------------------------------------------------------------

# start_sink PORT: a fresh smtp-sink that counts messages.
start_sink() {
	SINK_OUT=$W/sink-$1-$(date +%s%N).out
	smtp-sink -u nobody -c "127.0.0.1:$1" 1000 >"$SINK_OUT" 2>&1 &
	SINK_PID=$!
	wait_port "127.0.0.1:$1"
}

stop_sink() {
	[[ -n ${SINK_PID:-} ]] || return 0
	kill "$SINK_PID" 2>/dev/null || true
	wait "$SINK_PID" 2>/dev/null || true
	SINK_PID=
}

# sink_count: messages smtp-sink has received (it prints "mesg=N" updates
# separated by CR).
sink_count() {
	local n
	n=$(tail -c 200 "$SINK_OUT" | tr '\r' '\n' | sed -n 's/.*mesg=\([0-9]*\).*/\1/p' | tail -1)
	echo "${n:-0}"
}
sink_has() { (($(sink_count) >= $1)); }

# ---- helpers --------------------------------------------------------------

# rss_of PID [FIELD]: KiB from /proc/PID/status (VmRSS, or e.g. VmHWM).
rss_of() { awk -v f="${2:-VmRSS}:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# bench NAME ARGS...: relay-bench with -json into $W/json/NAME.json.
bench() {
	local name=$1
	shift
	"$BENCH" "$@" -json >"$W/json/$name.json" 2>"$W/json/$name.err" ||
		{ tail -5 "$W/json/$name.err" >&2; die "relay-bench $* failed; see $W/json/$name.err"; }
	local failed
	failed=$(json "$W/json/$name.json" '["failed"]')
	[[ $failed == 0 ]] || note "$name: $failed failed ($(json "$W/json/$name.json" '.get("errors")'))"
}

# smtp_source NAME ADDR COUNT: smtp-source with connection reuse; prints
# the seconds it took.
smtp_source() {
	local t0 s
	t0=$(now)
	smtp-source -d -s "$C" -l "$SIZE" -m "$3" -f bench@localhost -t user0@localhost "$2" >"$W/json/$1.out" 2>&1 ||
		die "smtp-source against $2 failed; see $W/json/$1.out"
	s=$(since "$t0")
	echo "$s"
}

drain() {
	wait_for "the relay's queue to empty" "$WAIT_TIMEOUT" relay_queue_empty
	wait_for "Postfix's queue to empty" "$WAIT_TIMEOUT" pf_queue_empty
}

# The relay-bench smtp flags every SMTP run shares.
SMTP_FLAGS=(-c "$C" -size "$SIZE" -users "$USERS" -quiet)

# ---- the parts ------------------------------------------------------------

# a. SMTP accept, durable: C sessions of SIZE bytes; both tools on both.
part_smtp() {
	log "a. SMTP accept: $N messages, $C sessions, $SIZE bytes"
	local pipes=(false true) p r s
	[[ -n $PIPELINING ]] && pipes=("$PIPELINING")
	for p in "${pipes[@]}"; do
		drain
		bench "smtp-relay-pipe-$p" smtp -addr "$RELAY_SMTP" -n "$N" "${SMTP_FLAGS[@]}" -pipelining="$p"
		drain
		bench "smtp-postfix-pipe-$p" smtp -addr "$PF_SMTP" -n "$N" "${SMTP_FLAGS[@]}" -pipelining="$p"
		result "smtp accept msgs/s (relay-bench, pipelining=$p)" \
			"$(json "$W/json/smtp-relay-pipe-$p.json" '["msgs_per_sec"]')" \
			"$(json "$W/json/smtp-postfix-pipe-$p.json" '["msgs_per_sec"]')" msgs/s higher
		result "smtp accept p99 ms (relay-bench, pipelining=$p)" \
			"$(json "$W/json/smtp-relay-pipe-$p.json" '["latency"]["p99_ms"]')" \
			"$(json "$W/json/smtp-postfix-pipe-$p.json" '["latency"]["p99_ms"]')" ms lower
	done
	drain
	r=$(smtp_source smtp-source-relay "$RELAY_SMTP" "$N")
	drain
	s=$(smtp_source smtp-source-postfix "$PF_SMTP" "$N")
	result "smtp accept msgs/s (smtp-source -d)" "$(per_sec "$N" "$r")" "$(per_sec "$N" "$s")" msgs/s higher
}

# b. Accept plus local delivery until every message is readable.
part_e2e() {
	log "b. accept plus local delivery until readable: $N messages"
	drain
	bench e2e-relay smtp -addr "$RELAY_SMTP" -n "$N" "${SMTP_FLAGS[@]}" -wait-imap "$RELAY_IMAP" -imap-pass "$PASS" \
		-wait-timeout "${WAIT_TIMEOUT}s"
	drain
	bench e2e-postfix smtp -addr "$PF_SMTP" -n "$N" "${SMTP_FLAGS[@]}" -wait-maildir "$MAIL" -wait-timeout "${WAIT_TIMEOUT}s"
	result "accept+deliver msgs/s (relay-bench; IMAP / Maildir)" \
		"$(json "$W/json/e2e-relay.json" '["end_to_end"]["msgs_per_sec"]')" \
		"$(json "$W/json/e2e-postfix.json" '["end_to_end"]["msgs_per_sec"]')" msgs/s higher

	# The same with smtp-source (one recipient), counted by relay user list
	# and in the Maildirs.
	local base t0 r s
	drain
	base=$(relay_inbox_total)
	t0=$(now)
	smtp_source e2e-source-relay "$RELAY_SMTP" "$N" >/dev/null
	wait_for "$N messages in the relay's INBOXes" "$WAIT_TIMEOUT" relay_inbox_reaches $((base + N))
	r=$(since "$t0")
	drain
	base=$(maildir_count)
	t0=$(now)
	smtp_source e2e-source-postfix "$PF_SMTP" "$N" >/dev/null
	wait_for "$N messages in the Maildirs" "$WAIT_TIMEOUT" maildir_reaches $((base + N))
	s=$(since "$t0")
	result "accept+deliver msgs/s (smtp-source -d)" "$(per_sec "$N" "$r")" "$(per_sec "$N" "$s")" msgs/s higher
}

relay_inbox_reaches() { (($(relay_inbox_total) >= $1)); }
maildir_count() { find "$MAIL" -type f \( -path '*/new/*' -o -path '*/cur/*' \) 2>/dev/null | wc -l; }
maildir_reaches() { (($(maildir_count) >= $1)); }

# c. Forwarding: accept, then deliver to smtp-sink, until it has them all.
part_forward() {
	log "c. forwarding to smtp-sink: $N messages"
	local t0 r s
	drain
	start_sink "$SINK_PORT"
	t0=$(now)
	bench forward-relay smtp -addr "$RELAY_SUBMISSION" -auth "user0@localhost:$PASS" -domain sink.test -n "$N" "${SMTP_FLAGS[@]}"
	wait_for "smtp-sink to get $N messages from the relay" "$WAIT_TIMEOUT" sink_has "$N"
	r=$(since "$t0")
	stop_sink
	drain
	start_sink "$SINK_PORT"
	t0=$(now)
	bench forward-postfix smtp -addr "$PF_SMTP" -domain sink.test -n "$N" "${SMTP_FLAGS[@]}"
	wait_for "smtp-sink to get $N messages from Postfix" "$WAIT_TIMEOUT" sink_has "$N"
	s=$(since "$t0")
	stop_sink
	result "forward msgs/s (accept until smtp-sink has all)" "$(per_sec "$N" "$r")" "$(per_sec "$N" "$s")" msgs/s higher
	result "forward: accept msgs/s (submission / smtpd)" \
		"$(json "$W/json/forward-relay.json" '["msgs_per_sec"]')" \
		"$(json "$W/json/forward-postfix.json" '["msgs_per_sec"]')" msgs/s higher
}

# d. DEFERRED messages to a destination that is down: memory, restart,
# and the flush once it is up.
part_deferred() {
	log "d. $DEFERRED deferred messages"
	port_closed "127.0.0.1:$DOWN_PORT" || die "port $DOWN_PORT is in use; deferred needs it closed"
	drain
	stop_relay
	local rd=$W/relay-deferred t0 rrss rrss2 prss prss2 rstart pstart rflush pflush
	relay_users "$rd"
	start_relay "$rd" --retry-first 1h --retry-max 1h
	bench deferred-relay smtp -addr "$RELAY_SUBMISSION" -auth "user0@localhost:$PASS" -domain down.test -n "$DEFERRED" "${SMTP_FLAGS[@]}"
	note "waiting until the relay has tried each message once"
	wait_for "the relay to try every message" "$WAIT_TIMEOUT" relay_all_tried
	sleep "$SETTLE"
	rrss=$(rss_of "$RELAY_PID")
	note "relay: $(relay_queued) messages queued, RSS $(mib "$rrss") MiB, peak $(mib "$(rss_of "$RELAY_PID" VmHWM)") MiB"
	stop_relay
	start_relay "$rd" --retry-first 1h --retry-max 1h
	rstart=$RELAY_START
	sleep 2
	rrss2=$(rss_of "$RELAY_PID")
	note "relay after the restart: RSS $(mib "$rrss2") MiB"
	start_sink "$DOWN_PORT"
	t0=$(now)
	"$RELAY" queue flush --data "$rd" >/dev/null
	wait_for "smtp-sink to get $DEFERRED messages from the relay" "$WAIT_TIMEOUT" sink_has "$DEFERRED"
	rflush=$(since "$t0")
	stop_sink
	stop_relay

	bench deferred-postfix smtp -addr "$PF_SMTP" -domain down.test -n "$DEFERRED" "${SMTP_FLAGS[@]}"
	note "waiting until Postfix has deferred every message"
	wait_for "Postfix to defer every message" "$WAIT_TIMEOUT" pf_all_deferred "$DEFERRED"
	sleep "$SETTLE"
	prss=$(pf_pss)
	note "postfix: $(pf_queue_files deferred) deferred queue files, PSS of master and children $(mib "$prss") MiB ($(pf_procs))"
	stop_postfix
	t0=$(now)
	start_postfix
	pstart=$(since "$t0")
	sleep 2
	prss2=$(pf_pss)
	note "postfix after the restart: PSS $(mib "$prss2") MiB ($(pf_procs))"
	start_sink "$DOWN_PORT"
	t0=$(now)
	postqueue -c "$PFC" -f
	wait_for "smtp-sink to get $DEFERRED messages from Postfix" "$WAIT_TIMEOUT" sink_has "$DEFERRED"
	pflush=$(since "$t0")
	stop_sink

	result "deferred: memory MiB, $DEFERRED queued (RSS / PSS)" "$(mib "$rrss")" "$(mib "$prss")" MiB lower
	result "deferred: memory MiB after a restart" "$(mib "$rrss2")" "$(mib "$prss2")" MiB lower
	result "deferred: restart s (exec until listening)" "$rstart" "$pstart" s lower
	result "deferred: flush msgs/s (until smtp-sink has all)" "$(per_sec "$DEFERRED" "$rflush")" "$(per_sec "$DEFERRED" "$pflush")" msgs/s higher

	# Back to the main relay for the parts after this one.
	start_relay "$W/relay-main"
}

# imap_p50 OP RELAY_JSON PEER_JSON: the median latency of OP in two runs.
imap_p50() {
	local get="[\"per_op\"].get(\"$1\", {}).get(\"latency\", {}).get(\"p50_ms\", 0)"
	result "imap $1 p50 ms" "$(json "$W/json/$2.json" "$get")" "$(json "$W/json/$3.json" "$get")" ms lower
}

relay_all_tried() { (($(relay_unattempted) == 0)); }
pf_all_deferred() { (($(pf_queue_files deferred) >= $1)) && (($(pf_queue_files incoming) + $(pf_queue_files active) == 0)); }

# e. IMAP: the same load on the relay and on Dovecot, on MAILBOX-message
# INBOXes filled by APPEND.
part_imap() {
	log "e. IMAP: $IMAP_C clients on $IMAP_USERS INBOXes of $MAILBOX messages, $IMAP_DURATION"
	drain
	stop_relay
	local rd=$W/relay-imap i op
	relay_users "$rd"
	start_relay "$rd"
	# Dovecot's test INBOXes start empty, like the relay's.
	for ((i = 0; i < IMAP_USERS; i++)); do rm -rf "$MAIL/localhost/user$i"; done
	bench fill-relay imap-fill -addr "$RELAY_IMAP" -users "$IMAP_USERS" -pass "$PASS" -n "$MAILBOX" -size "$SIZE" -quiet
	bench fill-dovecot imap-fill -addr "$DV_IMAP" -users "$IMAP_USERS" -pass "$PASS" -n "$MAILBOX" -size "$SIZE" -quiet
	result "imap-fill APPEND msgs/s (4 connections)" \
		"$(json "$W/json/fill-relay.json" '["msgs_per_sec"]')" \
		"$(json "$W/json/fill-dovecot.json" '["msgs_per_sec"]')" msgs/s higher
	local mix=(-ops "$IMAP_OPS" -c "$IMAP_C" -duration "$IMAP_DURATION")
	bench imap-relay imap -addr "$RELAY_IMAP" -users "$IMAP_USERS" -pass "$PASS" "${mix[@]}" -quiet
	bench imap-dovecot imap -addr "$DV_IMAP" -users "$IMAP_USERS" -pass "$PASS" "${mix[@]}" -quiet
	result "imap ops/s ($IMAP_C clients, mix without text search)" \
		"$(json "$W/json/imap-relay.json" '["ops_per_sec"]')" \
		"$(json "$W/json/imap-dovecot.json" '["ops_per_sec"]')" ops/s higher
	for op in select fetch-headers fetch-body search-unseen store append expunge; do
		imap_p50 "$op" imap-relay imap-dovecot
	done
	local search=(-ops "search-subject:1,search-body:1" -c "$IMAP_SEARCH_C" -duration "$IMAP_SEARCH_DURATION")
	bench search-relay imap -addr "$RELAY_IMAP" -users "$IMAP_USERS" -pass "$PASS" "${search[@]}" -quiet
	bench search-dovecot imap -addr "$DV_IMAP" -users "$IMAP_USERS" -pass "$PASS" "${search[@]}" -quiet
	result "imap text search ops/s ($IMAP_SEARCH_C clients)" \
		"$(json "$W/json/search-relay.json" '["ops_per_sec"]')" \
		"$(json "$W/json/search-dovecot.json" '["ops_per_sec"]')" ops/s higher
	for op in search-subject search-body; do
		imap_p50 "$op" search-relay search-dovecot
	done
	stop_relay
	start_relay "$W/relay-main"
}

# ---- main -----------------------------------------------------------------

cleanup() {
	local rc=$?
	stop_sink
	stop_relay
	stop_nodes
	stop_pg
	stop_postfix nowait
	stop_dovecot
	if [[ -s ${W:-}/results.tsv ]]; then
		table
	fi
	if [[ -n ${RESULTS:-} && -d ${W:-/nonexistent}/json ]]; then
		mkdir -p "$RESULTS"
		cp "$W/results.tsv" "$W"/json/*.json "$RESULTS"/ 2>/dev/null || true
	fi
	if [[ ${KEEP:-0} == 1 || $rc != 0 ]]; then
		echo "work directory kept: $W" >&2
	else
		rm -rf "$W"
	fi
	exit "$rc"
}

# ---- PostgreSQL -------------------------------------------------------------

STORE_FLAGS=()

# start_pg: a throwaway cluster in $W/pg, as the postgres user, on a unix
# socket, with fsync and synchronous commit on (as a site would run it).
start_pg() {
	local bin
	bin=$(dirname "$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")
	[[ -x $bin/initdb ]] || die "PostgreSQL's initdb is missing (apt-get install postgresql)"
	PG=$W/pg
	mkdir -p "$PG/sock" && chown -R postgres "$PG"
	runuser -u postgres -- "$bin/initdb" -D "$PG/data" -A trust -U postgres -E UTF8 --no-locale >/dev/null
	runuser -u postgres -- "$bin/pg_ctl" -D "$PG/data" -l "$PG/log" -w -t 60 \
		-o "-k $PG/sock -c listen_addresses='' -c fsync=on -c synchronous_commit=on -c max_connections=200 -c shared_buffers=128MB" start >/dev/null
	PG_CTL=$bin/pg_ctl
	runuser -u postgres -- psql -h "$PG/sock" -U postgres -qc 'CREATE DATABASE relay' postgres
	PG_URL="postgres:///relay?host=$PG/sock&user=postgres"
}

stop_pg() {
	[[ -n ${PG_CTL:-} ]] || return 0
	runuser -u postgres -- "$PG_CTL" -D "$PG/data" -m fast -w stop >/dev/null 2>&1 || true
	PG_CTL=
}

# pg_size: the database's size on disk, MiB.
pg_size() {
	runuser -u postgres -- psql -h "$PG/sock" -U postgres -Atc "SELECT pg_database_size('relay')" postgres | awk '{ printf "%.1f", $1 / 1048576 }'
}

NODE_PIDS=()
stop_nodes() {
	local p
	for p in "${NODE_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${NODE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	NODE_PIDS=()
}

# f. The relay on PostgreSQL: one node against Postfix, then three nodes
# sharing the database on this one machine (which cannot scale here: they
# share its two cores).
part_postgres() {
	log "f. PostgreSQL store: $N messages, $C sessions; $DEFERRED deferred; three nodes"
	drain
	stop_relay
	start_pg
	STORE_FLAGS=(--store "$PG_URL")
	local rd=$W/relay-pg t0 rrss n i total pids
	relay_users "$rd"
	start_relay "$rd"
	drain
	bench pg-smtp-relay smtp -addr "$RELAY_SMTP" -n "$N" "${SMTP_FLAGS[@]}" -pipelining=false
	drain
	bench pg-smtp-postfix smtp -addr "$PF_SMTP" -n "$N" "${SMTP_FLAGS[@]}" -pipelining=false
	result "postgres: smtp accept msgs/s (relay-bench)" \
		"$(json "$W/json/pg-smtp-relay.json" '["msgs_per_sec"]')" \
		"$(json "$W/json/pg-smtp-postfix.json" '["msgs_per_sec"]')" msgs/s higher
	drain
	bench pg-e2e-relay smtp -addr "$RELAY_SMTP" -n "$N" "${SMTP_FLAGS[@]}" -wait-imap "$RELAY_IMAP" -imap-pass "$PASS" \
		-wait-timeout "${WAIT_TIMEOUT}s"
	drain
	bench pg-e2e-postfix smtp -addr "$PF_SMTP" -n "$N" "${SMTP_FLAGS[@]}" -wait-maildir "$MAIL" -wait-timeout "${WAIT_TIMEOUT}s"
	result "postgres: accept+deliver msgs/s (relay-bench)" \
		"$(json "$W/json/pg-e2e-relay.json" '["end_to_end"]["msgs_per_sec"]')" \
		"$(json "$W/json/pg-e2e-postfix.json" '["end_to_end"]["msgs_per_sec"]')" msgs/s higher

	# Deferred: memory of one node with DEFERRED messages waiting.
	stop_relay
	start_relay "$rd" --retry-first 1h --retry-max 1h
	bench pg-deferred-relay smtp -addr "$RELAY_SUBMISSION" -auth "user0@localhost:$PASS" -domain down.test -n "$DEFERRED" "${SMTP_FLAGS[@]}"
	wait_for "the relay to try every message" "$WAIT_TIMEOUT" relay_all_tried
	sleep "$SETTLE"
	rrss=$(rss_of "$RELAY_PID")
	note "relay on PostgreSQL: $(relay_queued) queued, RSS $(mib "$rrss") MiB, peak $(mib "$(rss_of "$RELAY_PID" VmHWM)") MiB, database $(pg_size) MiB"
	result "postgres: deferred memory MiB, $DEFERRED queued (relay RSS, server not counted)" "$(mib "$rrss")" "" MiB lower
	stop_relay
	"$RELAY" queue list --data "$rd" "${STORE_FLAGS[@]}" --json >/dev/null 2>&1 || true

	# Three nodes on the one database: relay-bench against each, at once.
	runuser -u postgres -- psql -h "$PG/sock" -U postgres -qc 'DROP DATABASE relay WITH (FORCE)' -c 'CREATE DATABASE relay' postgres
	relay_users "$W/relay-n0"
	for i in 0 1 2; do
		NODE_SMTP=127.0.0.1:$((PORT_BASE + 40 + i)) NODE_SUBMISSION=127.0.0.1:$((PORT_BASE + 50 + i)) \
			NODE_IMAP=127.0.0.1:$((PORT_BASE + 60 + i)) start_relay "$W/relay-n$i"
		NODE_PIDS+=("$RELAY_PID")
		RELAY_PID=
	done
	n=$((N / 3))
	t0=$(now)
	pids=()
	for i in 0 1 2; do
		"$BENCH" smtp -addr "127.0.0.1:$((PORT_BASE + 40 + i))" -n "$n" "${SMTP_FLAGS[@]}" -json >"$W/json/pg-nodes-$i.json" 2>"$W/json/pg-nodes-$i.err" &
		pids+=($!)
	done
	for i in "${pids[@]}"; do wait "$i" || die "relay-bench against a node failed"; done
	total=$(since "$t0")
	result "postgres: three nodes, smtp accept msgs/s (all nodes together)" "$(per_sec $((3 * n)) "$total")" "" msgs/s higher
	stop_nodes
	STORE_FLAGS=()
	stop_pg
	start_relay "$W/relay-main"
}

main() {
	local p
	for p in $PARTS; do
		[[ " $ALL_PARTS " == *" $p "* ]] || die "unknown part '$p' (parts: $ALL_PARTS)"
	done
	need_tools
	ports_free
	W=$(mktemp -d /tmp/relay-compare.XXXXXX)
	chmod 755 "$W"
	MAIL=$W/mail
	mkdir -p "$W/bin" "$W/json"
	trap cleanup EXIT
	trap 'exit 130' INT TERM
	install_peers
	build
	vmail_user
	setup_postfix
	setup_dovecot
	start_postfix
	start_dovecot
	relay_users "$W/relay-main"
	start_relay "$W/relay-main"
	note "work directory $W; N=$N DEFERRED=$DEFERRED MAILBOX=$MAILBOX C=$C SIZE=$SIZE USERS=$USERS"
	note "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
	for p in $PARTS; do
		"part_$p"
		note "load average after $p: $(cut -d' ' -f1-3 /proc/loadavg)"
	done
}

main
