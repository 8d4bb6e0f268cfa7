package main

// End-to-end tests of the operator tools against a running `relay serve`:
// the queue verbs, queue tail (replay, after a restart, live), sendmail,
// /metrics and /healthz, SIGTERM under load and SIGHUP.

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// event is one line of `relay queue tail --json`.
type event struct {
	Time     time.Time `json:"time"`
	Event    string    `json:"event"`
	ID       string    `json:"id"`
	From     string    `json:"from"`
	Rcpt     string    `json:"rcpt"`
	Relay    string    `json:"relay"`
	Status   string    `json:"status"`
	Delay    float64   `json:"delay"`
	Operator bool      `json:"operator"`
}

// tailJSON runs `relay queue tail -n N --json` and decodes every line.
func tailJSON(t *testing.T, data string, n int) ([]event, string) {
	t.Helper()
	res := mustRelay(t, "queue", "tail", "-n", fmt.Sprint(n), "--json", "--data", data)
	var out []event
	for line := range strings.SplitSeq(strings.TrimSpace(res.stdout), "\n") {
		if line == "" {
			continue
		}
		var ev event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("queue tail --json line %q: %v", line, err)
		}
		out = append(out, ev)
	}
	return out, res.stdout
}

// eventsOf returns "event rcpt" for each of id's events, in order.
func eventsOf(evs []event, id string) []string {
	var out []string
	for _, ev := range evs {
		if ev.ID == id {
			out = append(out, strings.TrimSpace(ev.Event+" "+ev.Rcpt))
		}
	}
	return out
}

// heldState decodes the hold flag, which `queued` leaves out.
func heldState(t *testing.T, data, id string) (found, held bool) {
	t.Helper()
	var ms []struct {
		ID   string `json:"id"`
		Hold bool   `json:"hold"`
	}
	if err := json.Unmarshal([]byte(mustRelay(t, "queue", "list", "--json", "--data", data).stdout), &ms); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.ID == id {
			return true, m.Hold
		}
	}
	return false, false
}

func attemptsOf(t *testing.T, data, id string) int {
	t.Helper()
	for _, m := range mustListQueue(t, data) {
		if m.ID == id {
			return m.Recipients[0].Attempts
		}
	}
	return -1
}

// TestQueueVerbs drives each queue verb against a running server, as an
// operator would postsuper: hold, release, flush, delete and bounce; then
// reads what happened with queue show and queue tail, also after a restart.
func TestQueueVerbs(t *testing.T) {
	t.Parallel()
	data := filepath.Join(workDir(t), "data")
	addUsers(t, data, "alice@localhost")
	srv := startServer(t, data, append([]string{"--submission", "127.0.0.1:0", "--imap", "127.0.0.1:0",
		"--retry-first", "1h"}, remoteFlags...)...)

	// Four messages for a remote domain that is down: each is tried once
	// and deferred for an hour.
	for i := range 4 {
		srv.submit(t, "alice@localhost", []string{fmt.Sprintf("r%d@example.test", i)}, crlf(fmt.Sprintf("Subject: verb %d\n\nbody %d\n", i, i)))
	}
	var ms []queued
	if !waitFor(15*time.Second, func() bool {
		ms = mustListQueue(t, data)
		return len(ms) == 4 && !slices.ContainsFunc(ms, func(m queued) bool { return m.Recipients[0].Attempts == 0 })
	}) {
		t.Fatalf("four messages not all tried once within 15s: %+v", ms)
	}
	held, flushed, deleted, bounced := ms[0].ID, ms[1].ID, ms[2].ID, ms[3].ID

	// A recipient waiting for its retry lists as deferred, with the reason;
	// the filters narrow the listing.
	res := mustRelay(t, "queue", "list", "--state", "deferred", "--data", data)
	if strings.Count(res.stdout, "@example.test  deferred, 1 tries, next in ") != 4 || !strings.Contains(res.stdout, "-- 4 message(s)") {
		t.Errorf("queue list --state deferred:\n%s", res.stdout)
	}
	if res := mustRelay(t, "queue", "list", "--limit", "1", "--domain", "EXAMPLE.test", "--data", data); !strings.Contains(res.stdout, held) ||
		strings.Contains(res.stdout, flushed) || !strings.Contains(res.stdout, "stopped at --limit 1") {
		t.Errorf("queue list --limit 1 --domain EXAMPLE.test:\n%s", res.stdout)
	}
	for _, args := range [][]string{{"--domain", "other.test"}, {"--older-than", "1h"}, {"--state", "due"}} {
		if res := mustRelay(t, append([]string{"queue", "list", "--data", data}, args...)...); res.stdout != "no queued message matches\n" {
			t.Errorf("queue list %s: %q, want no match", strings.Join(args, " "), res.stdout)
		}
	}

	// hold: the message stays, marked, and is not retried by a flush.
	if res := mustRelay(t, "queue", "hold", held, "--data", data); !strings.Contains(res.stdout, "hold: 1 message") {
		t.Errorf("queue hold: %q", res.stdout)
	}
	if _, h := heldState(t, data, held); !h {
		t.Errorf("%s not held after queue hold", held)
	}
	if res := mustRelay(t, "queue", "list", "--state", "held", "--data", data); !strings.Contains(res.stdout, held) ||
		!strings.Contains(res.stdout, "r0@example.test  held, 1 tries") || !strings.Contains(res.stdout, "-- 1 message(s)") {
		t.Errorf("queue list --state held does not show the hold alone:\n%s", res.stdout)
	}
	if res := mustRelay(t, "queue", "flush", held, flushed, "--data", data); !strings.Contains(res.stdout, "flush: 2 message(s)") {
		t.Errorf("queue flush of two messages says %q", res.stdout)
	}
	if !waitFor(10*time.Second, func() bool { return attemptsOf(t, data, flushed) == 2 }) {
		t.Errorf("flushed message %s not retried within 10s (attempts %d)", flushed, attemptsOf(t, data, flushed))
	}
	if n := attemptsOf(t, data, held); n != 1 {
		t.Errorf("held message tried again by a flush: %d attempts", n)
	}
	// release: due again at once, since the flush made it due now.
	mustRelay(t, "queue", "release", held, "--data", data)
	if _, h := heldState(t, data, held); h {
		t.Errorf("%s still held after queue release", held)
	}
	if !waitFor(10*time.Second, func() bool { return attemptsOf(t, data, held) == 2 }) {
		t.Errorf("released message %s not retried within 10s", held)
	}

	// delete: gone, without a notice.
	mustRelay(t, "queue", "delete", deleted, "--data", data)
	if found, _ := heldState(t, data, deleted); found {
		t.Errorf("%s still queued after queue delete", deleted)
	}
	if res := runRelay(t, nil, "queue", "show", deleted, "--data", data); res.code != 1 || !strings.Contains(res.stderr, "no such message") {
		t.Errorf("queue show of a deleted message: %s", res)
	}

	// bounce: gone, and the sender gets a failure notice in her INBOX.
	mustRelay(t, "queue", "bounce", bounced, "--data", data)
	if found, _ := heldState(t, data, bounced); found {
		t.Errorf("%s still queued after queue bounce", bounced)
	}
	inbox := waitInbox(t, srv.listener(t, "imap"), "alice@localhost", 1)
	if len(inbox) != 1 || !strings.Contains(inbox[0], "Final-Recipient: rfc822; r3@example.test") ||
		!strings.Contains(inbox[0], "Status: 5.0.0") || !strings.Contains(inbox[0], "multipart/report") {
		t.Errorf("alice's INBOX after queue bounce: want one DSN for r3@example.test with Status 5.0.0, got %q", inbox)
	}

	// Unknown IDs exit 1 and say so; the known IDs of a batch are done.
	for _, verb := range []string{"hold", "release", "delete", "bounce", "flush", "show"} {
		if res := runRelay(t, nil, "queue", verb, "NOSUCHID", "--data", data); res.code != 1 || !strings.Contains(res.stderr, "NOSUCHID: no such message") {
			t.Errorf("queue %s NOSUCHID: %s\nwant exit 1 naming the ID", verb, res)
		}
	}
	if res := runRelay(t, nil, "queue", "hold", "NOSUCHID", flushed, "--data", data); res.code != 1 {
		t.Errorf("queue hold NOSUCHID %s: exit %d, want 1", flushed, res.code)
	}
	if _, h := heldState(t, data, flushed); !h {
		t.Errorf("queue hold NOSUCHID %s did not hold %s", flushed, flushed)
	}
	for _, args := range [][]string{{"hold"}, {"bounce"}, {"tail", "extra"}, {"tail", "-n", "-1"},
		{"list", "--state", "pending"}, {"list", "--limit", "-1"}, {"list", "--older-than", "-1h"}, {"list", "--domain", "a@b.test"}} {
		if res := runRelay(t, nil, append(append([]string{"queue"}, args...), "--data", data)...); res.code != 2 {
			t.Errorf("queue %s: %s\nwant exit 2 (bad usage)", strings.Join(args, " "), res)
		}
	}

	// queue show prints the history; queue tail the same events.
	res = mustRelay(t, "queue", "show", held, "--data", data)
	for _, want := range []string{"history:", " accepted from=alice@localhost", " deferred rcpt=r0@example.test", " held by=operator", " released by=operator", " attempt rcpt=r0@example.test attempt=2"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("queue show %s lacks %q:\n%s", held, want, res.stdout)
		}
	}
	evs, _ := tailJSON(t, data, 1000)
	for id, want := range map[string][]string{
		held:    {"accepted", "attempt r0@example.test", "deferred r0@example.test", "held", "released", "attempt r0@example.test", "deferred r0@example.test"},
		flushed: {"accepted", "attempt r1@example.test", "deferred r1@example.test", "attempt r1@example.test", "deferred r1@example.test", "held"},
		deleted: {"accepted", "attempt r2@example.test", "deferred r2@example.test", "deleted"},
		bounced: {"accepted", "attempt r3@example.test", "deferred r3@example.test", "bounced r3@example.test"},
	} {
		if got := eventsOf(evs, id); !slices.Equal(got, want) {
			t.Errorf("tail events of %s:\n%q\nwant\n%q", id, got, want)
		}
	}
	for _, ev := range evs {
		if ev.Event == "bounced" && !strings.Contains(ev.Status, "5.0.0") {
			t.Errorf("bounced event %+v: want status 5.0.0", ev)
		}
		if ev.Event == "delivered" && (ev.Rcpt != "alice@localhost" || ev.Relay != "local") {
			t.Errorf("delivered event %+v: want the notice to alice, relay local", ev)
		}
		if ev.Time.IsZero() || ev.ID == "" {
			t.Errorf("event without time or ID: %+v", ev)
		}
	}
	if res := mustRelay(t, "queue", "tail", "-n", "3", "--data", data); strings.Count(res.stdout, "\n") != 3 {
		t.Errorf("queue tail -n 3 printed:\n%s", res.stdout)
	}

	// tail -n after a restart: the log is in the database. With the server
	// down the CLI reads it directly; after the restart, over the socket.
	before, beforeOut := tailJSON(t, data, 8)
	srv.stop()
	if _, out := tailJSON(t, data, 8); out != beforeOut {
		t.Errorf("queue tail -n 8 with the server down differs:\n%s\nwas\n%s", out, beforeOut)
	}
	if res := runRelay(t, nil, "queue", "tail", "-f", "--data", data); res.code != 1 || !strings.Contains(res.stderr, "start relay serve") {
		t.Errorf("queue tail -f without a server: %s\nwant exit 1 saying a server must run", res)
	}
	srv = startServer(t, data, remoteFlags...)
	if _, afterOut := tailJSON(t, data, 8); len(before) != 8 || afterOut != beforeOut {
		t.Errorf("queue tail -n 8 after a restart:\n%s\nwas\n%s", afterOut, beforeOut)
	}
	srv.stop()
}

// tailLine is one event printed by `relay queue tail -f --json`, with the
// time it was read.
type tailLine struct {
	ev event
	at time.Time
}

// followTail starts `relay queue tail -f --json` on data with args and
// returns its lines and a function that reads the next one, failing the test
// after 10 s without one.
func followTail(t *testing.T, data string, args ...string) (<-chan tailLine, func(what string) tailLine) {
	t.Helper()
	cmd := exec.Command(relayBinary(t), append([]string{"queue", "tail", "-f", "--json", "--data", data}, args...)...)
	cmd.Env = testEnv()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan tailLine, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var ev event
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				lines <- tailLine{ev, time.Now()}
			}
		}
		close(lines)
	}()
	next := func(what string) tailLine {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("queue tail -f ended before %s", what)
			}
			return l
		case <-time.After(10 * time.Second):
			t.Fatalf("queue tail -f printed no %s within 10s", what)
		}
		return tailLine{}
	}
	return lines, next
}

// TestQueueTailFollow: `relay queue tail -f` shows a new message's events
// within a second of its 250.
func TestQueueTailFollow(t *testing.T) {
	t.Parallel()
	data := filepath.Join(workDir(t), "data")
	addUsers(t, data, "bob@localhost")
	srv := startServer(t, data)
	srv.send(t, "first@localhost", []string{"bob@localhost"}, crlf("Subject: first\n\nbefore the tail\n"))

	lines, next := followTail(t, data, "-n", "1")
	// The replayed line shows the follower is connected (it subscribes
	// before it replays).
	if l := next("replayed event"); l.ev.Event != "delivered" || l.ev.Rcpt != "bob@localhost" {
		t.Fatalf("replayed %+v, want the first message's delivery", l.ev)
	}
	srv.send(t, "second@localhost", []string{"bob@localhost"}, crlf("Subject: second\n\nwhile tailing\n"))
	acked := time.Now()
	l := next("accepted event")
	if l.ev.Event != "accepted" || l.ev.From != "second@localhost" {
		t.Fatalf("followed %+v, want the second message accepted", l.ev)
	}
	// The latency is a figure to report, not a test of speed on a shared
	// machine; only a follower that polls slowly fails.
	if d := l.at.Sub(acked); d > 5*time.Second {
		t.Errorf("queue tail -f showed the accepted event %v after the 250", d)
	} else {
		t.Logf("accepted event shown %v after the 250", d.Round(time.Millisecond))
	}
	if l := next("delivered event"); l.ev.Event != "delivered" || l.ev.ID == "" {
		t.Errorf("followed %+v, want the second message delivered", l.ev)
	}
	// The follower ends cleanly when the server stops.
	srv.stop()
	select {
	case _, ok := <-lines:
		for ok {
			_, ok = <-lines
		}
	case <-time.After(10 * time.Second):
		t.Errorf("queue tail -f still runs 10s after the server stopped")
	}
}

// TestSendmail: `relay sendmail` with the usual flags hands a program's
// message to the running server: -t takes the recipients from the header
// (a bare name, "To: ..., carol", as a local user) and drops Bcc, missing
// header fields are added, a lone dot ends the input unless -i; bad input
// exits non-zero and queues nothing.
func TestSendmail(t *testing.T) {
	t.Parallel()
	data := filepath.Join(workDir(t), "data")
	addUsers(t, data, "bob@localhost", "carol@localhost", "erin@localhost")
	srv := startServer(t, data, append([]string{"--imap", "127.0.0.1:0"}, remoteFlags...)...)
	imapAddr := srv.listener(t, "imap")
	fixture, err := os.ReadFile(filepath.Join("..", "..", "testdata", "messages", "sendmail-t.eml"))
	if err != nil {
		t.Fatal(err)
	}

	res := runRelayStdin(t, string(fixture), nil, "sendmail", "-t", "-f", "cron@localhost", "-FCron Daemon", "--data", data)
	if res.code != 0 || res.stdout != "" {
		t.Fatalf("sendmail -t: %s", res)
	}
	for _, u := range []string{"bob@localhost", "carol@localhost", "erin@localhost"} {
		got := waitInbox(t, imapAddr, u, 1)
		if len(got) != 1 {
			t.Fatalf("%s: %d messages, want 1", u, len(got))
		}
		m := got[0]
		for _, want := range []string{
			"Received: by localhost (relay sendmail, from user ", "From: Cron Daemon <cron@localhost>\r\n",
			"Subject: nightly backup report\r\n", "\r\nDate: ", "\r\nMessage-ID: <",
			"\r\n\r\nThe nightly backup finished.\r\n\r\n.leading dot line, kept as it is\r\n",
		} {
			if !strings.Contains(m, want) {
				t.Errorf("%s's copy lacks %q:\n%s", u, want, m)
			}
		}
		if strings.Contains(m, "Bcc") || strings.Contains(m, "with -i it is text") || strings.Contains(strings.ReplaceAll(m, "\r\n", ""), "\n") {
			t.Errorf("%s's copy: want no Bcc, input ended at the lone dot, CRLF line ends:\n%q", u, m)
		}
	}
	q := queuedFrom(t, data, "cron@localhost")
	if got := rcptStates(q); got != "bob@localhost delivered 1, carol@localhost delivered 1, dave@example.test pending 1, erin@localhost delivered 1" {
		t.Errorf("queued for the remote Cc: %s", got)
	}

	// -i (and -oi): the lone dot is text. A bare name is a local user.
	for _, flag := range []string{"-i", "-oi"} {
		res = runRelayStdin(t, string(fixture), nil, "sendmail", flag, "bob", "--data", data)
		if res.code != 0 {
			t.Fatalf("sendmail %s bob: %s", flag, res)
		}
	}
	got := waitInbox(t, imapAddr, "bob@localhost", 3)
	for _, m := range got[1:] {
		if !strings.Contains(m, "\r\n.\r\nThe line above is a lone dot; with -i it is text.\r\n") || !strings.Contains(m, "\r\nBcc: erin@localhost\r\n") {
			t.Errorf("sendmail -i: want the whole input, Bcc untouched without -t:\n%s", m)
		}
		if !strings.Contains(m, "Return-Path") && !strings.Contains(m, "From: Cron Daemon <cron@localhost>") {
			t.Errorf("sendmail -i: From: changed:\n%s", m)
		}
	}
	if n := len(inboxIMAP(t, imapAddr, "erin@localhost")); n != 1 {
		t.Errorf("erin got %d messages; without -t the Bcc must not be a recipient", n)
	}

	// Refusals.
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"nosuchuser@localhost"}, 1, "no such user"},
		{[]string{"bad address@"}, 1, "not a valid address"},
		{[]string{"-f", "no space@localhost", "bob"}, 1, "not a valid address"},
		{[]string{}, 2, "no recipients"},
		{[]string{"-X", "bob"}, 2, "unknown option -X"},
		{[]string{"-f"}, 2, "-f needs a value"},
		{[]string{"-N", "SOMETIMES", "bob"}, 1, "NOTIFY"},
		{[]string{"bob", "--data", filepath.Join(workDir(t), "none")}, 1, "start relay serve"},
	} {
		args := []string{"sendmail"}
		if !slices.Contains(tc.args, "--data") {
			args = append(args, "--data", data)
		}
		args = append(args, tc.args...)
		res := runRelayStdin(t, "Subject: refused\n\nx\n", nil, args...)
		if res.code != tc.code || !strings.Contains(res.stderr, tc.msg) {
			t.Errorf("relay %s: %s\nwant exit %d saying %q", strings.Join(args, " "), res, tc.code, tc.msg)
		}
	}
	if n := len(inboxIMAP(t, imapAddr, "bob@localhost")); n != 3 {
		t.Errorf("bob has %d messages after the refusals, want 3", n)
	}
	srv.stop()
}

// TestSendmailMutt: mutt, set up to send through `relay sendmail` as
// /usr/sbin/sendmail would be, delivers to a local user.
func TestSendmailMutt(t *testing.T) {
	t.Parallel()
	mutt := needTool(t, "mutt")
	dir := workDir(t)
	data := filepath.Join(dir, "data")
	addUsers(t, data, "bob@localhost")
	srv := startServer(t, data, "--imap", "127.0.0.1:0")
	rc := filepath.Join(dir, "muttrc")
	conf := fmt.Sprintf("set sendmail=\"%s sendmail --data %s\"\nset from=\"alice@localhost\"\nset realname=\"Alice Example\"\nset use_from=yes\nset record=\"\"\nset copy=no\nset charset=\"utf-8\"\nset send_charset=\"utf-8\"\n", relayBinary(t), data)
	if err := os.WriteFile(rc, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(mutt, "-n", "-F", rc, "-s", "sent with mutt", "--", "bob@localhost")
	cmd.Env = append(testEnv(), "HOME="+dir, "TMPDIR="+dir)
	cmd.Stdin = strings.NewReader("Hello Bob,\n\nthis came through relay sendmail. Grüße.\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mutt: %v\n%s", err, out)
	}
	got := waitInbox(t, srv.listener(t, "imap"), "bob@localhost", 1)
	for _, want := range []string{"Subject: sent with mutt", "From: Alice Example <alice@localhost>", "this came through relay sendmail.", "relay sendmail"} {
		if !strings.Contains(got[0], want) {
			t.Errorf("message from mutt lacks %q:\n%s", want, got[0])
		}
	}
	srv.stop()
}

// TestSIGTERMUnderLoad: SIGTERM while 8 clients send stops the server within
// 15 s with status 0, and every message answered 250 is there afterwards,
// whole and once; a message in flight is finished rather than cut.
func TestSIGTERMUnderLoad(t *testing.T) {
	t.Parallel()
	const clients = 8
	data := workDir(t)
	addUsers(t, data, "bob@localhost")
	srv := startServer(t, data)
	var stopped time.Duration
	load := loadFor(t, srv, clients, 1500*time.Millisecond, func() {
		start := time.Now()
		srv.stop()
		stopped = time.Since(start)
	})
	if stopped > 15*time.Second {
		t.Errorf("relay serve took %v to stop after SIGTERM, want at most 15s", stopped)
	}
	if len(load.acked) < clients {
		t.Fatalf("only %d messages acknowledged before SIGTERM; the test needs load", len(load.acked))
	}
	where := checkCrashStore(t, load, readStored(t, data, "bob@localhost"))
	t.Logf("%d acknowledged, %d sent without an answer, %d stored after SIGTERM", len(load.acked), len(load.started)-len(load.acked), len(where))
	if unanswered := len(load.started) - len(load.acked); unanswered > clients {
		t.Errorf("%d messages in flight got no answer; at most one per client can be cut", unanswered)
	}
	if !strings.Contains(srv.logText(), "msg=stopped") {
		t.Errorf("no clean stop in the log:\n%s", srv.logText())
	}
}

// scrape fetches /metrics and parses it as the Prometheus text format.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return fams
}

// metricValue returns the value of the series of family name whose labels
// include want, or -1 when there is none.
func metricValue(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
	for _, m := range f.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			match = match && labels[k] == v
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

// TestMetrics: /metrics counts what the relay did, every name starts with
// relay_, and /healthz answers ok.
func TestMetrics(t *testing.T) {
	t.Parallel()
	data := filepath.Join(workDir(t), "data")
	addUsers(t, data, "alice@localhost", "bob@localhost")
	srv := startServer(t, data, append([]string{"--http", "127.0.0.1:0", "--submission", "127.0.0.1:0", "--imap", "127.0.0.1:0"}, remoteFlags...)...)
	httpAddr := srv.listener(t, "http")

	srv.send(t, "a@localhost", []string{"bob@localhost"}, crlf("Subject: counted\n\nx\n"))
	c := srv.dial(t)
	if err := c.Mail("a@localhost", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("v@example.test", nil); err == nil || !strings.Contains(err.Error(), "554") {
		t.Fatalf("relay attempt: %v, want 554", err)
	}
	if err := c.Rcpt("nobody@localhost", nil); err == nil || !strings.Contains(err.Error(), "550") {
		t.Fatalf("unknown user: %v, want 550", err)
	}
	c.Quit()
	sc := srv.dialAddr(t, srv.addrs["submission"])
	if err := sc.Auth(sasl.NewPlainClient("", "alice@localhost", "wrong")); err == nil {
		t.Fatal("AUTH with a wrong password succeeded")
	}
	sc.Close()
	ic, err := imapclient.DialInsecure(srv.listener(t, "imap"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ic.Login("alice@localhost", "wrong").Wait(); err == nil {
		t.Fatal("IMAP LOGIN with a wrong password succeeded")
	}
	ic.Close()
	srv.submit(t, "alice@localhost", []string{"far@example.test"}, crlf("Subject: deferred\n\nx\n"))

	var fams map[string]*dto.MetricFamily
	if !waitFor(10*time.Second, func() bool {
		fams = scrape(t, httpAddr)
		return metricValue(fams, "relay_deliveries_total", map[string]string{"outcome": "deferred"}) >= 1
	}) {
		t.Fatalf("no deferred delivery counted within 10s")
	}
	for name := range fams {
		if !strings.HasPrefix(name, "relay_") {
			t.Errorf("metric %s does not start with relay_", name)
		}
	}
	for _, tc := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"relay_messages_accepted_total", nil, 2},
		{"relay_messages_rejected_total", map[string]string{"reason": "relay denied"}, 1},
		{"relay_messages_rejected_total", map[string]string{"reason": "no such user"}, 1},
		{"relay_deliveries_total", map[string]string{"outcome": "delivered"}, 1},
		{"relay_deliveries_total", map[string]string{"outcome": "deferred"}, 1},
		{"relay_delivery_latency_seconds", nil, 1},
		{"relay_queue_messages", nil, 1},
		{"relay_queue_oldest_age_seconds", nil, 0},
		{"relay_sessions_total", map[string]string{"listener": "smtp"}, 2},
		{"relay_sessions_total", map[string]string{"listener": "submission"}, 2},
		{"relay_sessions_active", map[string]string{"listener": "smtp"}, 0},
		{"relay_auth_failures_total", map[string]string{"proto": "smtp"}, 1},
		{"relay_auth_failures_total", map[string]string{"proto": "imap"}, 1},
		{"relay_sessions_total", map[string]string{"listener": "imap"}, 1},
	} {
		if v := metricValue(fams, tc.name, tc.labels); v < tc.min {
			t.Errorf("%s%v = %v, want at least %v", tc.name, tc.labels, v, tc.min)
		}
	}
	if fams["relay_delivery_latency_seconds"].GetType() != dto.MetricType_HISTOGRAM {
		t.Errorf("relay_delivery_latency_seconds is a %v, want a histogram", fams["relay_delivery_latency_seconds"].GetType())
	}
	resp, err := http.Get("http://" + httpAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "ok" {
		t.Errorf("/healthz: %s %q", resp.Status, body)
	}
	// Profiles only with --pprof.
	if resp, err := http.Get("http://" + httpAddr + "/debug/pprof/"); err != nil || resp.StatusCode != 404 {
		t.Errorf("/debug/pprof/ without --pprof: %v %v, want 404", resp.Status, err)
	}
	srv.stop()
	srv = startServer(t, data, "--http", "127.0.0.1:0", "--pprof")
	resp, err = http.Get("http://" + srv.listener(t, "http") + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "goroutine profile") {
		t.Errorf("/debug/pprof/goroutine with --pprof: %s %.100q", resp.Status, body)
	}
	srv.stop()
}

// writeCert makes a self-signed certificate for cn and writes it and its
// key as PEM files.
func writeCert(t *testing.T, certFile, keyFile, cn string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		DNSNames: []string{cn}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}

// servedCN returns the common name of the certificate the submission port
// presents after STARTTLS.
func servedCN(t *testing.T, addr string) string {
	t.Helper()
	c, err := smtp.DialStartTLS(addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("STARTTLS to %s: %v", addr, err)
	}
	defer c.Close()
	if err := c.Noop(); err != nil { // the handshake runs at the first use
		t.Fatalf("NOOP after STARTTLS: %v", err)
	}
	st, ok := c.TLSConnectionState()
	if !ok || len(st.PeerCertificates) == 0 {
		t.Fatal("no TLS state after STARTTLS")
	}
	return st.PeerCertificates[0].Subject.CommonName
}

// TestSIGHUP: SIGHUP makes the running server present a new certificate
// written over the old files; a broken one changes nothing; a changed
// setting that needs a restart is named in the log.
func TestSIGHUP(t *testing.T) {
	t.Parallel()
	dir := workDir(t)
	data := filepath.Join(dir, "data")
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeCert(t, certFile, keyFile, "old.relay.test")
	cfgFile := filepath.Join(dir, "relay.toml")
	if err := os.WriteFile(cfgFile, []byte("max-recipients = 100\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, data, "--config", cfgFile, "--submission", "127.0.0.1:0", "--tls-cert", certFile, "--tls-key", keyFile)
	sub := srv.addrs["submission"]
	if cn := servedCN(t, sub); cn != "old.relay.test" {
		t.Fatalf("served %q before the reload", cn)
	}
	hup := func(n int) {
		t.Helper()
		if err := srv.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if !waitFor(10*time.Second, func() bool {
			return strings.Count(srv.logText(), "msg=reloaded")+strings.Count(srv.logText(), `msg="reload failed`) >= n
		}) {
			t.Fatalf("no reload logged within 10s of SIGHUP %d:\n%s", n, srv.logText())
		}
	}
	writeCert(t, certFile, keyFile, "new.relay.test")
	if err := os.WriteFile(cfgFile, []byte("max-recipients = 50\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hup(1)
	if cn := servedCN(t, sub); cn != "new.relay.test" {
		t.Errorf("served %q after SIGHUP, want the new certificate", cn)
	}
	if !strings.Contains(srv.logText(), `msg="reload: setting needs a restart to take effect" setting=max-recipients`) {
		t.Errorf("the changed max-recipients is not named in the log:\n%s", srv.logText())
	}
	// A broken certificate: the reload fails and the server keeps the
	// one it has.
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	hup(2)
	if !strings.Contains(srv.logText(), `msg="reload failed; the running configuration stays"`) {
		t.Errorf("a broken certificate did not fail the reload:\n%s", srv.logText())
	}
	if cn := servedCN(t, sub); cn != "new.relay.test" {
		t.Errorf("served %q after a failed reload, want the last good certificate", cn)
	}
	srv.stop()
}
