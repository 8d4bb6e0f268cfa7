package deliver_test

// Retry, lifetime and DSN tests on a fake clock: a scripted deliver.Remote
// answers each attempt, the test moves the clock to the next attempt and
// kicks the loop, so five days of retries run in well under a second.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"

	"github.com/relaymail/relay/relay/deliver"
	"github.com/relaymail/relay/spool"
)

const (
	alice = "alice@example.test" // the local sender
	bob   = "bob@remote.test"
	carol = "carol@remote.test"
	mta   = "mx.remote.test"
	plan  = "From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: the plan\r\nMessage-Id: <plan@example.test>\r\n\r\nHere is the plan.\r\n"
)

// remoteCall is one Deliver call as the fake remote saw it.
type remoteCall struct {
	at    time.Time
	id    string
	from  string
	rcpts []string
	body  string
}

// fakeRemote is a deliver.Remote that answers from a function of the
// recipient and the attempt (from 1, counted per message and recipient).
type fakeRemote struct {
	clock  *fakeClock
	sp     *spool.Spool
	answer func(rc spool.Recipient, attempt int) deliver.Outcome

	mu    sync.Mutex
	calls []remoteCall
	tries map[string]int
}

func newRemote(e *env, answer func(rc spool.Recipient, attempt int) deliver.Outcome) *fakeRemote {
	return &fakeRemote{clock: e.clock, sp: e.sp, answer: answer, tries: map[string]int{}}
}

func (f *fakeRemote) Deliver(_ context.Context, m *spool.Message, idx []int, _ func([]int, string)) []deliver.Outcome {
	var body string
	if r, err := f.sp.Body(m.ID); err == nil {
		b, _ := io.ReadAll(r)
		body = string(b)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c := remoteCall{at: f.clock.Now(), id: m.ID, from: m.From, body: body}
	out := make([]deliver.Outcome, len(idx))
	for j, i := range idx {
		rc := m.Rcpts[i]
		c.rcpts = append(c.rcpts, rc.Address)
		k := m.ID + " " + rc.Address
		f.tries[k]++
		out[j] = f.answer(rc, f.tries[k])
	}
	f.calls = append(f.calls, c)
	return out
}

// summary renders calls without their bodies.
func summary(calls []remoteCall) string {
	var s []string
	for _, c := range calls {
		s = append(s, fmt.Sprintf("{%s %s from %q to %v}", c.at.Format(time.TimeOnly), c.id, c.from, c.rcpts))
	}
	return "[" + strings.Join(s, " ") + "]"
}

// seen returns the calls so far.
func (f *fakeRemote) seen() []remoteCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func ok(remoteDSN bool) deliver.Outcome {
	return deliver.Outcome{RemoteMTA: mta, RemoteDSN: remoteDSN}
}

// fail is a failed attempt with the reply code, enhanced, text from mta:
// permanent for a 5yz code.
func fail(code int, enhanced, text string) deliver.Outcome {
	return deliver.Outcome{Reply: spool.NewReply(code, enhanced, text), RemoteMTA: mta}
}

// by answers per recipient address; others get def.
func by(def deliver.Outcome, per map[string]deliver.Outcome) func(spool.Recipient, int) deliver.Outcome {
	return func(rc spool.Recipient, _ int) deliver.Outcome {
		if o, ok := per[rc.Address]; ok {
			return o
		}
		return def
	}
}

// The relay's documented schedule.
var defaultRetry = deliver.Config{
	RetryFirst: 5 * time.Minute, RetryMax: time.Hour,
	Lifetime: 5 * 24 * time.Hour, DelayNotice: 4 * time.Hour,
}

// A short one for tests that only need a bounce or a delay notice.
var shortRetry = deliver.Config{
	RetryFirst: 10 * time.Minute, RetryMax: 20 * time.Minute,
	Lifetime: 2 * time.Hour, DelayNotice: 30 * time.Minute,
}

// start runs a loop for example.test with remote r and alice as a local
// user.
func (e *env) start(t *testing.T, cfg deliver.Config, r deliver.Remote) *deliver.Loop {
	t.Helper()
	cfg.Domains = []string{"example.test"}
	cfg.Hostname = "relay.example.test"
	l := deliver.New(cfg, e.sp, e.boxes, r, nil)
	run(t, l)
	return l
}

// send queues body from "from" with params to rcpts.
func send(t *testing.T, sp *spool.Spool, from string, params spool.MailParams, body string, rcpts ...spool.Recipient) string {
	t.Helper()
	m := &spool.Message{ID: sp.NewID(), From: from, Params: params, Rcpts: rcpts}
	if err := sp.Enqueue(m, strings.NewReader(body)); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	return m.ID
}

func to(addr string, notify ...string) spool.Recipient {
	return spool.Recipient{Address: addr, Notify: notify}
}

// poll waits up to 10 s for cond, checking every millisecond.
func poll(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		done, state := cond()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last state: %s", what, state)
		}
		time.Sleep(time.Millisecond)
	}
}

// attempted waits until addr of message id has had n attempts or the
// message has left the queue; it returns the recipient (zero if gone).
func attempted(t *testing.T, sp *spool.Spool, id, addr string, n int) (spool.Recipient, bool) {
	t.Helper()
	var r spool.Recipient
	var left bool
	poll(t, fmt.Sprintf("attempt %d of %s", n, addr), func() (bool, string) {
		m, err := sp.Get(id)
		if errors.Is(err, spool.ErrNotFound) {
			left = true
			return true, ""
		}
		if err != nil {
			return false, err.Error()
		}
		for _, rc := range m.Rcpts {
			if rc.Address == addr {
				r = rc
				return rc.Attempts >= n, fmt.Sprintf("%+v", rc)
			}
		}
		return false, "no such recipient"
	})
	return r, left
}

// drive moves the clock to each next attempt of addr until the recipient
// is final, and returns how many attempts it took.
func drive(t *testing.T, e *env, l *deliver.Loop, id, addr string) int {
	t.Helper()
	for n := 1; n < 1000; n++ {
		r, left := attempted(t, e.sp, id, addr, n)
		if left || r.State != spool.Pending {
			return n
		}
		e.clock.Advance(r.NextAttempt.Sub(e.clock.Now()))
		l.Kick()
	}
	t.Fatalf("%s still pending after 1000 attempts", addr)
	return 0
}

// settle waits until the queue is empty: every notice delivered.
func settle(t *testing.T, e *env) {
	t.Helper()
	poll(t, "an empty queue", func() (bool, string) {
		ms, err := e.sp.List()
		if err != nil {
			return false, err.Error()
		}
		var s []string
		for _, m := range ms {
			s = append(s, fmt.Sprintf("%s from %q %+v", m.ID, m.From, m.Rcpts))
		}
		return len(ms) == 0, strings.Join(s, "; ")
	})
}

// notice is a parsed DSN.
type notice struct {
	raw        string
	header     message.Header
	types      []string // media types of the parts
	text       string
	perMessage textproto.Header
	perRcpt    []textproto.Header
	returned   string // the third part
}

// action returns the Action of the first recipient block.
func (n notice) action() string { return n.perRcpt[0].Get("Action") }

// parseNotice reads a DSN with go-message and fails the test unless it is a
// multipart/report; report-type=delivery-status with three parts.
func parseNotice(t *testing.T, raw string) notice {
	t.Helper()
	n := notice{raw: raw}
	e, err := message.Read(strings.NewReader(raw))
	if err != nil {
		t.Fatalf("read notice: %v\n%s", err, raw)
	}
	n.header = e.Header
	mt, params, _ := e.Header.ContentType()
	if mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("notice is %s %v, want multipart/report; report-type=delivery-status:\n%s", mt, params, raw)
	}
	mr := e.MultipartReader()
	var bodies [][]byte
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("notice part: %v", err)
		}
		pt, _, _ := p.Header.ContentType()
		b, _ := io.ReadAll(p.Body)
		n.types = append(n.types, pt)
		bodies = append(bodies, b)
	}
	if len(bodies) != 3 {
		t.Fatalf("notice has %d parts (%v), want 3:\n%s", len(bodies), n.types, raw)
	}
	n.text, n.returned = string(bodies[0]), string(bodies[2])
	br := bufio.NewReader(bytes.NewReader(bodies[1]))
	if n.perMessage, err = textproto.ReadHeader(br); err != nil {
		t.Fatalf("per-message fields: %v", err)
	}
	for {
		if _, err := br.Peek(1); err != nil {
			break
		}
		h, err := textproto.ReadHeader(br)
		if err != nil {
			t.Fatalf("per-recipient fields: %v", err)
		}
		n.perRcpt = append(n.perRcpt, h)
	}
	if len(n.perRcpt) == 0 {
		t.Fatalf("notice reports on no recipient:\n%s", raw)
	}
	return n
}

// notices returns the DSNs in user's INBOX, in arrival order.
func notices(t *testing.T, e *env, user string) []notice {
	t.Helper()
	var out []notice
	for _, m := range inbox(t, e.boxes, user) {
		out = append(out, parseNotice(t, body(t, e.boxes, m)))
	}
	return out
}

// far is a remote sender: notices to it go out through the fake remote,
// which accepts them and keeps their text. (Local senders cost a bcrypt
// hash each, slow under -race.)
const far = "zed@far.test"

// sentNotices returns the notices the fake remote was given, in order.
func sentNotices(t *testing.T, fr *fakeRemote) []notice {
	t.Helper()
	var out []notice
	for _, c := range fr.seen() {
		if c.from == "" {
			out = append(out, parseNotice(t, c.body))
		}
	}
	return out
}

// acceptNotices wraps answer so that notices to far are delivered.
func acceptNotices(answer func(spool.Recipient, int) deliver.Outcome) func(spool.Recipient, int) deliver.Outcome {
	return func(rc spool.Recipient, n int) deliver.Outcome {
		if rc.Address == far {
			return ok(false)
		}
		return answer(rc, n)
	}
}

// want checks fields of a header section ("" means absent).
func want(t *testing.T, what string, h textproto.Header, fields map[string]string) {
	t.Helper()
	for k, v := range fields {
		if got := h.Get(k); got != v {
			t.Errorf("%s: %s = %q, want %q", what, k, got, v)
		}
	}
}

func rfc1123(t time.Time) string { return t.Format(time.RFC1123Z) }

// TestRetrySchedule walks the whole documented schedule of a recipient
// that is always deferred: retries after 5, 10, 20, 40 minutes, then every
// hour, each within ±10% jitter; one delay notice at the first attempt 4 h
// after arrival; a bounce with 5.4.7 at the first attempt after 5 days.
func TestRetrySchedule(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	addUsers(t, e.boxes, alice)
	fr := newRemote(e, func(spool.Recipient, int) deliver.Outcome { return fail(451, "4.2.0", "mailbox busy") })
	l := e.start(t, defaultRetry, fr)
	arrived := e.clock.Now()
	id := send(t, e.sp, alice, spool.MailParams{}, plan, to(bob))

	var times []time.Time // of each attempt
	notified := 0
	for n := 1; ; n++ {
		if n > 200 {
			t.Fatalf("still retrying after %d attempts", n)
		}
		r, left := attempted(t, e.sp, id, bob, n)
		now := e.clock.Now()
		times = append(times, now)
		if left {
			break
		}
		if r.Attempts != n || r.State != spool.Pending || r.Reply != spool.NewReply(451, "4.2.0", "mailbox busy") || r.RemoteMTA != mta {
			t.Fatalf("after attempt %d: %+v", n, r)
		}
		base := min(5*time.Minute<<min(n-1, 10), time.Hour)
		lo, hi := time.Duration(float64(base)*0.9), time.Duration(float64(base)*1.1)
		if d := r.NextAttempt.Sub(now); d < lo || d >= hi || d > time.Hour {
			t.Errorf("after attempt %d: next in %v, want in [%v, %v)", n, d, lo, hi)
		}
		due := now.Sub(arrived) >= 4*time.Hour
		if r.DelayNotified != due {
			t.Errorf("after attempt %d at +%v: DelayNotified %v, want %v", n, now.Sub(arrived), r.DelayNotified, due)
		}
		if r.DelayNotified {
			notified++
		}
		e.clock.Advance(r.NextAttempt.Sub(now))
		l.Kick()
	}
	last := times[len(times)-1]
	if last.Sub(arrived) < 5*24*time.Hour || times[len(times)-2].Sub(arrived) >= 5*24*time.Hour {
		t.Errorf("bounced at +%v after a try at +%v; want the first attempt at or after +120h",
			last.Sub(arrived), times[len(times)-2].Sub(arrived))
	}
	// 75 minutes for the first four retries, then hourly ±10% to 120 h.
	if n := len(times); n < 110 || n > 140 {
		t.Errorf("%d attempts in 5 days, want about 123", n)
	}
	calls := fr.seen()
	if len(calls) != len(times) {
		t.Fatalf("remote was called %d times for %d attempts", len(calls), len(times))
	}
	for i, c := range calls {
		if !c.at.Equal(times[i]) || c.id != id {
			t.Errorf("call %d at +%v for %s, want at +%v for %s", i+1, c.at.Sub(arrived), c.id, times[i].Sub(arrived), id)
		}
	}

	settle(t, e)
	ns := notices(t, e, alice)
	if len(ns) != 2 {
		t.Fatalf("alice got %d notices, want 2 (one delay, one failure)", len(ns))
	}
	delayed, failed := ns[0], ns[1]
	if delayed.action() != "delayed" || failed.action() != "failed" {
		t.Fatalf("notices say %q then %q, want delayed then failed", delayed.action(), failed.action())
	}
	if !strings.Contains(delayed.header.Get("Subject"), "Delayed") || !strings.Contains(failed.header.Get("Subject"), "Undelivered") {
		t.Errorf("subjects %q, %q", delayed.header.Get("Subject"), failed.header.Get("Subject"))
	}
	want(t, "delay notice", delayed.perMessage, map[string]string{
		"Reporting-MTA": "dns; relay.example.test",
		"Arrival-Date":  rfc1123(arrived),
	})
	want(t, "delay notice", delayed.perRcpt[0], map[string]string{
		"Final-Recipient":  "rfc822; " + bob,
		"Status":           "4.2.0",
		"Remote-MTA":       "dns; " + mta,
		"Diagnostic-Code":  "smtp; 451 4.2.0 mailbox busy",
		"Will-Retry-Until": rfc1123(arrived.Add(5 * 24 * time.Hour)),
	})
	want(t, "failure notice", failed.perRcpt[0], map[string]string{
		"Final-Recipient":   "rfc822; " + bob,
		"Status":            "5.4.7",
		"Remote-MTA":        "dns; " + mta,
		"Last-Attempt-Date": rfc1123(last),
		"Will-Retry-Until":  "",
	})
	if d := failed.perRcpt[0].Get("Diagnostic-Code"); !strings.Contains(d, "451 4.2.0 mailbox busy") {
		t.Errorf("failure notice Diagnostic-Code %q, want the last error in it", d)
	}
}

// TestNoticeMessageIDsUnique: each notice is a message of its own with its
// own Message-Id (RFC 5322 §3.6.4), also two about the same original.
func TestNoticeMessageIDsUnique(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	fr := newRemote(e, acceptNotices(by(fail(451, "4.2.0", "busy"), nil)))
	l := e.start(t, shortRetry, fr)
	id := send(t, e.sp, far, spool.MailParams{}, plan, to(bob))
	drive(t, e, l, id, bob)
	settle(t, e)
	ns := sentNotices(t, fr)
	if len(ns) != 2 {
		t.Fatalf("%d notices, want a delay and a failure notice", len(ns))
	}
	if id1, id2 := ns[0].header.Get("Message-Id"), ns[1].header.Get("Message-Id"); id1 == id2 {
		t.Fatalf("the delay notice and the failure notice for one message carry the same Message-Id %s "+
			"(relay/dsn/dsn.go Build makes it from Report.QueueID, which relay/deliver/notify.go sets to the "+
			"original's queue ID, not the notice's), so clients that drop duplicate Message-Ids lose the bounce", id1)
		t.Errorf("both notices have Message-Id %s", id1)
	}
}

// TestPermanentFailureBouncesAtOnce: a 5xx ends the recipient at the first
// attempt with a failure notice about it alone; the others go on.
func TestPermanentFailureBouncesAtOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	addUsers(t, e.boxes, alice)
	fr := newRemote(e, func(rc spool.Recipient, n int) deliver.Outcome {
		switch {
		case rc.Address == bob:
			return fail(550, "5.1.1", "no such user")
		case rc.Address == carol && n == 1:
			return fail(451, "4.3.0", "later")
		}
		return ok(false)
	})
	l := e.start(t, shortRetry, fr)
	id := send(t, e.sp, alice, spool.MailParams{}, plan, to(bob), to(carol), to("dave@remote.test"))
	attempted(t, e.sp, id, carol, 1)
	m, err := e.sp.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]spool.State{}
	for _, r := range m.Rcpts {
		states[r.Address] = r.State
	}
	if states[bob] != spool.Failed || states[carol] != spool.Pending || states["dave@remote.test"] != spool.Delivered {
		t.Errorf("after one attempt: %v, want bob failed, carol pending, dave delivered", states)
	}
	poll(t, "the failure notice", func() (bool, string) {
		n := len(inbox(t, e.boxes, alice))
		return n == 1, fmt.Sprintf("%d notices", n)
	})
	n := notices(t, e, alice)[0]
	if len(n.perRcpt) != 1 {
		t.Fatalf("failure notice reports on %d recipients, want bob only:\n%s", len(n.perRcpt), n.raw)
	}
	want(t, "failure notice", n.perRcpt[0], map[string]string{
		"Final-Recipient": "rfc822; " + bob,
		"Action":          "failed",
		"Status":          "5.1.1",
		"Remote-MTA":      "dns; " + mta,
		"Diagnostic-Code": "smtp; 550 5.1.1 no such user",
	})
	if n.types[1] != "message/delivery-status" || n.types[2] != "text/rfc822-headers" {
		t.Errorf("parts %v, want the headers only (no RET)", n.types)
	}
	if !strings.Contains(n.text, "<"+bob+">: 550 5.1.1 no such user") {
		t.Errorf("human-readable part:\n%s", n.text)
	}
	// carol is delivered at the retry; no notice about her (no NOTIFY).
	drive(t, e, l, id, carol)
	settle(t, e)
	if got := len(inbox(t, e.boxes, alice)); got != 1 {
		t.Errorf("alice has %d notices, want still 1", got)
	}
	if c := fr.seen(); len(c) != 2 || !slices.Equal(c[1].rcpts, []string{carol}) {
		t.Errorf("remote calls %s, want two, the second for carol only", summary(c))
	}
}

// TestNotify: NOTIFY decides which notices go out (RFC 3461 §4.1).
func TestNotify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		rcpt    spool.Recipient
		answer  func(spool.Recipient, int) deliver.Outcome
		actions []string // notices the sender gets, by action
	}{
		{"NEVER, 5xx", to(bob, "NEVER"), by(fail(550, "5.1.1", "no"), nil), nil},
		{"NEVER, expired", to(bob, "NEVER"), by(fail(451, "4.2.0", "busy"), nil), nil},
		{"default, expired", to(bob), by(fail(451, "4.2.0", "busy"), nil), []string{"delayed", "failed"}},
		{"FAILURE, expired", to(bob, "FAILURE"), by(fail(451, "4.2.0", "busy"), nil), []string{"failed"}},
		{"DELAY, expired", to(bob, "DELAY"), by(fail(451, "4.2.0", "busy"), nil), []string{"delayed"}},
		{"DELAY,FAILURE, 5xx", to(bob, "DELAY", "FAILURE"), by(fail(550, "5.1.1", "no"), nil), []string{"failed"}},
		{"default, success", to(bob), by(ok(false), nil), nil},
		{"SUCCESS, remote without DSN", to(bob, "SUCCESS"), by(ok(false), nil), []string{"relayed"}},
		{"SUCCESS, remote with DSN", to(bob, "SUCCESS"), by(ok(true), nil), nil},
		{"SUCCESS, 5xx", to(bob, "SUCCESS"), by(fail(550, "5.1.1", "no"), nil), nil},
		{"SUCCESS, local", to("ann@example.test", "SUCCESS"), by(ok(false), nil), []string{"delivered"}},
		{"SUCCESS,DELAY, late success", to(bob, "SUCCESS", "DELAY"), func(_ spool.Recipient, n int) deliver.Outcome {
			if n < 5 {
				return fail(451, "4.2.0", "busy")
			}
			return ok(false)
		}, []string{"delayed", "relayed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			if tc.rcpt.Address == "ann@example.test" {
				addUsers(t, e.boxes, tc.rcpt.Address)
			}
			fr := newRemote(e, acceptNotices(tc.answer))
			l := e.start(t, shortRetry, fr)
			id := send(t, e.sp, far, spool.MailParams{}, plan, tc.rcpt)
			drive(t, e, l, id, tc.rcpt.Address)
			settle(t, e)
			var got []string
			for _, n := range sentNotices(t, fr) {
				got = append(got, n.action())
				want(t, n.action()+" notice", n.perRcpt[0], map[string]string{"Final-Recipient": "rfc822; " + tc.rcpt.Address})
				if s := n.perRcpt[0].Get("Status"); (n.action() == "relayed" || n.action() == "delivered") && s != "2.0.0" {
					t.Errorf("%s notice: Status %q, want 2.0.0", n.action(), s)
				}
			}
			if !slices.Equal(got, tc.actions) {
				t.Errorf("notices %v, want %v", got, tc.actions)
			}
		})
	}
}

// TestNullSenderGetsNoNotice: a failure of a message from <> (a bounce
// itself) makes no notice, so bounces cannot loop.
func TestNullSenderGetsNoNotice(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	fr := newRemote(e, by(fail(550, "5.1.1", "no such user"), map[string]deliver.Outcome{carol: fail(451, "4.2.0", "busy")}))
	l := e.start(t, shortRetry, fr)
	id := send(t, e.sp, "", spool.MailParams{}, plan, to(bob), to(carol, "SUCCESS", "FAILURE", "DELAY"))
	drive(t, e, l, id, carol)
	settle(t, e)
	for _, c := range fr.seen() {
		if c.id != id {
			t.Errorf("a notice was sent for a message from <>: %s", summary([]remoteCall{c}))
		}
	}
}

// TestReturnedContent: RET=FULL returns the whole message in a failure
// notice, RET=HDRS (and no RET) only its header; a delay notice returns
// the header whatever RET says (RFC 3461 §4.3).
func TestReturnedContent(t *testing.T) {
	t.Parallel()
	header := plan[:strings.Index(plan, "\r\n\r\n")+4]
	for _, tc := range []struct {
		ret, mediaType, content string
	}{
		{"FULL", "message/rfc822", plan},
		{"HDRS", "text/rfc822-headers", header},
		{"", "text/rfc822-headers", header},
	} {
		t.Run("RET="+tc.ret, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			fr := newRemote(e, acceptNotices(by(fail(451, "4.2.0", "busy"), map[string]deliver.Outcome{carol: fail(554, "5.6.0", "no")})))
			l := e.start(t, shortRetry, fr)
			id := send(t, e.sp, far, spool.MailParams{Ret: tc.ret}, plan, to(bob), to(carol))
			drive(t, e, l, id, bob)
			settle(t, e)
			ns := sentNotices(t, fr)
			var kinds []string
			for _, n := range ns {
				kinds = append(kinds, n.action())
				mt, content := tc.mediaType, tc.content
				if n.action() == "delayed" {
					mt, content = "text/rfc822-headers", header
				}
				if n.types[2] != mt || n.returned != content {
					t.Errorf("%s notice: third part %s %q, want %s %q", n.action(), n.types[2], n.returned, mt, content)
				}
			}
			if !slices.Equal(kinds, []string{"failed", "delayed", "failed"}) {
				t.Errorf("notices %v, want failed (carol), delayed (bob), failed (bob)", kinds)
			}
		})
	}
}

// TestEnvelopeIDAndOriginalRecipient: ENVID and ORCPT come back in the
// notice (RFC 3464 §2.2.1, §2.3.1).
func TestEnvelopeIDAndOriginalRecipient(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	fr := newRemote(e, acceptNotices(by(fail(550, "5.1.1", "no such user"), nil)))
	e.start(t, shortRetry, fr)
	r1 := to(bob)
	r1.ORcpt = "rfc822;Bob.Original@Remote.test"
	send(t, e.sp, far, spool.MailParams{EnvID: "env-2026-03-01.42", Ret: "HDRS"}, plan, r1, to(carol))
	settle(t, e)
	ns := sentNotices(t, fr)
	if len(ns) != 1 || len(ns[0].perRcpt) != 2 {
		t.Fatalf("%d notices, want one about two recipients", len(ns))
	}
	want(t, "per-message", ns[0].perMessage, map[string]string{"Original-Envelope-Id": "env-2026-03-01.42"})
	want(t, "bob", ns[0].perRcpt[0], map[string]string{
		"Original-Recipient": "rfc822; Bob.Original@Remote.test",
		"Final-Recipient":    "rfc822; " + bob,
	})
	want(t, "carol", ns[0].perRcpt[1], map[string]string{"Original-Recipient": "", "Final-Recipient": "rfc822; " + carol})
}

// TestRemoteSenderNoticeQueued: a remote sender's notice goes through the
// queue to the remote, from <>, asking for no further notices; when that
// fails too, nothing more is made.
func TestRemoteSenderNoticeQueued(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const sender = "zed@far.test"
	fr := newRemote(e, by(fail(550, "5.1.1", "no such user"), map[string]deliver.Outcome{sender: fail(550, "5.1.1", "gone too")}))
	e.start(t, shortRetry, fr)
	id := send(t, e.sp, sender, spool.MailParams{}, plan, to(bob))
	settle(t, e)
	calls := fr.seen()
	if len(calls) != 2 {
		t.Fatalf("remote calls %s, want the message and its notice", summary(calls))
	}
	nc := calls[1]
	if nc.id == id || nc.from != "" || !slices.Equal(nc.rcpts, []string{sender}) {
		t.Errorf("notice sent as %q -> %v, want <> -> %s", nc.from, nc.rcpts, sender)
	}
	n := parseNotice(t, nc.body)
	want(t, "notice", n.perRcpt[0], map[string]string{"Action": "failed", "Status": "5.1.1", "Final-Recipient": "rfc822; " + bob})
	if got := n.header.Get("To"); got != "<"+sender+">" {
		t.Errorf("notice To %q", got)
	}
}

// TestRetryResumesAfterRestart: a deferred recipient keeps its schedule
// across a restart and is delivered at its next attempt.
func TestRetryResumesAfterRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	fr := newRemote(e, by(fail(421, "4.4.2", "closing"), nil))
	cfg := defaultRetry
	cfg.Domains, cfg.Hostname = []string{"example.test"}, "relay.example.test"
	stop := run(t, deliver.New(cfg, e.sp, e.boxes, fr, nil))
	id := send(t, e.sp, "sender@example.org", spool.MailParams{}, plan, to(bob))
	r, _ := attempted(t, e.sp, id, bob, 1)
	stop()
	e.reopen(t)

	fr2 := newRemote(e, by(ok(false), nil))
	l := e.start(t, defaultRetry, fr2)
	nothingDue(t, l, "after a restart, before the scheduled retry")
	if c := fr2.seen(); len(c) != 0 {
		t.Fatalf("after restart, tried at once (%s) instead of at the scheduled time", summary(c))
	}
	e.clock.Advance(r.NextAttempt.Sub(e.clock.Now()))
	l.Kick()
	poll(t, "delivery after restart", func() (bool, string) { return gone(e.sp, id) })
	if c := fr2.seen(); len(c) != 1 || !c[0].at.Equal(r.NextAttempt) {
		t.Errorf("calls after restart %s, want one at %v", summary(c), r.NextAttempt)
	}
}

// TestFlushMakesDueNow: spool.Flush and a kick retry a deferred recipient
// without waiting for its time.
func TestFlushMakesDueNow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	fr := newRemote(e, func(_ spool.Recipient, n int) deliver.Outcome {
		if n == 1 {
			return fail(451, "4.2.0", "busy")
		}
		return ok(false)
	})
	l := e.start(t, defaultRetry, fr)
	id := send(t, e.sp, "sender@example.org", spool.MailParams{}, plan, to(bob))
	attempted(t, e.sp, id, bob, 1)
	if err := e.sp.Flush(id); err != nil {
		t.Fatal(err)
	}
	l.Kick()
	poll(t, "delivery after flush", func() (bool, string) { return gone(e.sp, id) })
	if c := fr.seen(); len(c) != 2 || !c[1].at.Equal(c[0].at) {
		t.Errorf("calls %s, want two at the same fake time", summary(c))
	}
}

// TestExpiryWithoutRemote: with no remote transport configured, a remote
// recipient is deferred and bounces at the end of its lifetime.
func TestExpiryWithoutRemote(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	addUsers(t, e.boxes, alice)
	l := e.start(t, shortRetry, nil)
	id := send(t, e.sp, alice, spool.MailParams{}, plan, to(bob, "FAILURE"))
	drive(t, e, l, id, bob)
	settle(t, e)
	ns := notices(t, e, alice)
	if len(ns) != 1 || ns[0].action() != "failed" {
		t.Fatalf("notices %d, want one failure", len(ns))
	}
	want(t, "failure", ns[0].perRcpt[0], map[string]string{"Status": "5.4.7", "Remote-MTA": ""})
}

// TestLocalFailureExpires: a local recipient whose delivery always fails
// (the store errs before the commit) follows the same schedule as a remote
// one: one delay notice after DelayNotice, a bounce with 5.4.7 after
// Lifetime, a bounded number of attempts in between. The notices carry the
// fixed reply for local trouble; the store's error goes to the log only.
func TestLocalFailureExpires(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const dan = "dan@example.test"
	addUsers(t, e.boxes, dan)
	fr := newRemote(e, acceptNotices(by(ok(false), nil)))
	cfg := shortRetry
	cfg.Domains, cfg.Hostname = []string{"example.test"}, "relay.example.test"
	var logged bytes.Buffer
	var logMu sync.Mutex
	l := deliver.New(cfg, e.sp, e.boxes, fr, slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logged}, nil)))
	errInjected := errors.New("injected: value log write failed at /var/relay/000042.vlog")
	l.SetBeforeCommit(func(string) error { return errInjected })
	run(t, l)
	arrived := e.clock.Now()
	id := send(t, e.sp, far, spool.MailParams{}, plan, to(dan))

	var last time.Time
	attempts := 0
	for n := 1; ; n++ {
		if n > 20 {
			t.Fatalf("%s still pending after %d attempts over %v; want a bounce after %v",
				dan, n-1, e.clock.Now().Sub(arrived), cfg.Lifetime)
		}
		r, left := attempted(t, e.sp, id, dan, n)
		last, attempts = e.clock.Now(), n
		if left || r.State != spool.Pending {
			break
		}
		if r.Reply != spool.LocalTrouble {
			t.Fatalf("after attempt %d: reply %q, want %q", n, r.Reply, spool.LocalTrouble)
		}
		if due := last.Sub(arrived) >= cfg.DelayNotice; r.DelayNotified != due {
			t.Errorf("after attempt %d at +%v: DelayNotified %v, want %v", n, last.Sub(arrived), r.DelayNotified, due)
		}
		e.clock.Advance(r.NextAttempt.Sub(last))
		l.Kick()
	}
	if last.Sub(arrived) < cfg.Lifetime {
		t.Errorf("bounced at +%v, before the lifetime of %v", last.Sub(arrived), cfg.Lifetime)
	}
	// 10, 20, then every 20 minutes ±10% until 2 h: 7 or 8 attempts.
	if attempts < 6 || attempts > 9 {
		t.Errorf("%d attempts in %v, want 7 or 8", attempts, cfg.Lifetime)
	}
	settle(t, e)
	if n := len(inbox(t, e.boxes, dan)); n != 0 {
		t.Errorf("%s has %d messages, want none", dan, n)
	}

	ns := sentNotices(t, fr)
	var actions []string
	for _, n := range ns {
		actions = append(actions, n.action())
	}
	if !slices.Equal(actions, []string{"delayed", "failed"}) {
		t.Fatalf("notices %v, want one delay notice, then one failure notice", actions)
	}
	want(t, "delay notice", ns[0].perRcpt[0], map[string]string{
		"Final-Recipient": "rfc822; " + dan,
		"Status":          "4.3.0",
		"Diagnostic-Code": "smtp; 451 4.3.0 temporary local problem",
		"Remote-MTA":      "",
	})
	want(t, "failure notice", ns[1].perRcpt[0], map[string]string{
		"Final-Recipient":   "rfc822; " + dan,
		"Status":            "5.4.7",
		"Diagnostic-Code":   "smtp; 451 4.3.0 temporary local problem",
		"Last-Attempt-Date": rfc1123(last),
	})
	for _, n := range ns {
		if strings.Contains(n.raw, "injected") || strings.Contains(n.raw, "vlog") {
			t.Errorf("%s notice carries the store's error:\n%s", n.action(), n.raw)
		}
	}
	logMu.Lock()
	defer logMu.Unlock()
	if !strings.Contains(logged.String(), errInjected.Error()) {
		t.Errorf("the store's error is not in the log:\n%s", logged.String())
	}
}

// lockedWriter serializes writes to w: the loop logs from its workers.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (lw lockedWriter) Write(p []byte) (int, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.w.Write(p)
}

// TestRemoteReplyInNotice: the notices about a remote recipient carry the
// remote server's reply as it came, code, enhanced code and text: the
// Status is its enhanced code (the class alone when it gave none) and the
// Diagnostic-Code the reply (RFC 3464 §2.3.4, §2.3.6).
func TestRemoteReplyInNotice(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name         string
		reply        spool.Reply
		action       string
		status, diag string
	}{
		{"permanent", spool.NewReply(550, "5.7.26", "Unauthenticated mail from a.test is not accepted; see https://b.test/spf"),
			"failed", "5.7.26", "smtp; 550 5.7.26 Unauthenticated mail from a.test is not accepted; see https://b.test/spf"},
		{"permanent, no enhanced code", spool.NewReply(554, "", "no thanks"), "failed", "5.0.0", "smtp; 554 no thanks"},
		{"temporary", spool.NewReply(452, "4.2.2", "Mailbox full"), "delayed", "4.2.2", "smtp; 452 4.2.2 Mailbox full"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			fr := newRemote(e, acceptNotices(by(deliver.Outcome{Reply: tc.reply, RemoteMTA: mta}, nil)))
			cfg := shortRetry
			cfg.DelayNotice = time.Nanosecond // a notice at the first retry
			l := e.start(t, cfg, fr)
			id := send(t, e.sp, far, spool.MailParams{}, plan, to(bob))
			if r, _ := attempted(t, e.sp, id, bob, 1); tc.action == "delayed" {
				if r.Reply != tc.reply {
					t.Errorf("recipient's reply %#v, want %#v", r.Reply, tc.reply)
				}
				e.clock.Advance(r.NextAttempt.Sub(e.clock.Now()))
				l.Kick()
			}
			poll(t, "the notice", func() (bool, string) {
				n := len(sentNotices(t, fr))
				return n == 1, fmt.Sprintf("%d notices", n)
			})
			n := sentNotices(t, fr)[0]
			want(t, n.action()+" notice", n.perRcpt[0], map[string]string{
				"Action": tc.action, "Status": tc.status, "Diagnostic-Code": tc.diag, "Remote-MTA": "dns; " + mta,
			})
		})
	}
}
