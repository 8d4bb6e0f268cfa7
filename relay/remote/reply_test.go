package remote_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"

	"github.com/relaymail/relay/internal/testkit"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/relay/deliver"
	"github.com/relaymail/relay/relay/remote"
	"github.com/relaymail/relay/spool"
)

// TestRepliesAreTyped: a remote server's reply comes back as it was sent,
// code, enhanced code and text; a failure that is no reply comes back as a
// fixed text of its class that names the peer, never the Go error.
func TestRepliesAreTyped(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	srv := newScripted(t, script{rcpt: map[string][]string{
		"gone@b.test":  {"550 5.7.26 Unauthenticated mail from a.test is not accepted"},
		"later@b.test": {"421 closing"},
	}})
	tr := newTransport(t, q, via(srv))
	out := deliverNow(t, tr, q.add(t, sample, nil, "gone@b.test", "later@b.test"))
	for i, want := range []spool.Reply{
		{Code: 550, Enhanced: "5.7.26", Text: "Unauthenticated mail from a.test is not accepted", Permanent: true},
		{Code: 421, Text: "closing"},
	} {
		if out[i].Reply != want {
			t.Errorf("outcome %d: %#v, want %#v", i, out[i].Reply, want)
		}
	}

	closed := closedAddr(t)
	tr = newTransport(t, q, remote.Config{Transports: map[string]string{"b.test": closed}})
	out = deliverNow(t, tr, q.add(t, sample, nil, "bob@b.test"))
	host, port, _ := strings.Cut(closed, ":")
	if want := spool.TempReply("4.4.1", fmt.Sprintf("connection refused by %s[%s]:%s", host, host, port)); out[0].Reply != want {
		t.Errorf("refused connection: %#v, want %#v", out[0].Reply, want)
	}

	hung := newScripted(t, script{hangRcpt: true})
	cfg := via(hung)
	cfg.CommandTimeout = 300 * time.Millisecond
	tr = newTransport(t, q, cfg)
	out = deliverNow(t, tr, q.add(t, sample, nil, "bob@b.test"))
	host, port, _ = strings.Cut(hung.addr, ":")
	if want := spool.TempReply("4.4.2", fmt.Sprintf("timeout during RCPT with %s[%s]:%s", host, host, port)); out[0].Reply != want {
		t.Errorf("server hanging at RCPT: %#v, want %#v", out[0].Reply, want)
	}

	dropped := newScripted(t, script{data: []string{dropAfterBody}})
	tr = newTransport(t, q, via(dropped))
	out = deliverNow(t, tr, q.add(t, sample, nil, "bob@b.test"))
	host, port, _ = strings.Cut(dropped.addr, ":")
	if want := spool.TempReply("4.4.2", fmt.Sprintf("connection with %s[%s]:%s failed during end of DATA", host, host, port)); out[0].Reply != want {
		t.Errorf("connection dropped before the reply to the dot: %#v, want %#v", out[0].Reply, want)
	}
}

// TestRoutingRepliesAreTyped: DNS failures and a null MX have fixed texts
// that name the domain, with RFC 7505's 556 5.1.10 for a null MX.
func TestRoutingRepliesAreTyped(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t)
	q := newQueue(t)
	tr := w.transport(t, q)
	out := deliverNow(t, tr, q.add(t, sample, nil, "a@nullmx.test", "a@servfail.test", "a@nxdomain.test", "a@alldown.test"))
	for i, want := range []spool.Reply{
		spool.NewReply(556, "5.1.10", "nullmx.test does not accept mail (null MX)"),
		spool.TempReply("4.4.3", "DNS lookup for servfail.test failed"),
		spool.NewReply(550, "5.1.2", "nxdomain.test: no MX or address records"),
		spool.TempReply("4.4.1", fmt.Sprintf("connection refused by down.alldown.test[127.0.0.2]:%d", w.one.port())),
	} {
		if out[i].Reply != want {
			t.Errorf("outcome %d: %#v, want %#v", i, out[i].Reply, want)
		}
	}
}

// TestRemoteReplyReachesNotice runs the delivery loop with the real
// transport: the failure notice about a recipient the remote server
// refused, and the delay notice about one it deferred, carry that server's
// reply exactly, its enhanced code as the Status and the reply as the
// Diagnostic-Code (RFC 3464 §2.3.4, §2.3.6).
func TestRemoteReplyReachesNotice(t *testing.T) {
	t.Parallel()
	engine, _ := testkit.Badger(t, nil)
	sp := spool.New(engine, nil)
	b := newScripted(t, script{rcpt: map[string][]string{
		"gone@b.test": {"550 5.7.26 Unauthenticated mail from a.test is not accepted"},
		"full@b.test": {"452 4.2.2 Mailbox full, try again later"},
	}})
	a := newScripted(t, script{}) // the sender's server, which gets the notices
	tr := newTransport(t, &queue{sp: sp}, remote.Config{Transports: map[string]string{"b.test": b.addr, "a.test": a.addr}})
	l := deliver.New(deliver.Config{Domains: []string{"relay.test"}, Hostname: "relay.test", DelayNotice: time.Nanosecond},
		sp, mailbox.New(engine, nil), tr, nil)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { l.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	m := &spool.Message{ID: sp.NewID(), From: "alice@a.test", Rcpts: []spool.Recipient{{Address: "gone@b.test"}, {Address: "full@b.test"}}}
	if err := sp.Enqueue(m, strings.NewReader(sample)); err != nil {
		t.Fatal(err)
	}
	// The delay notice comes at the first attempt the message is older
	// than DelayNotice: the second, which a flush brings forward.
	deadline := time.Now().Add(20 * time.Second)
	for len(notices(a)) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("notices at a.test: %+v, want a failure and a delay notice", a.transactions())
		}
		if err := sp.Flush(m.ID); err == nil {
			l.Kick()
		}
		time.Sleep(10 * time.Millisecond)
	}
	byAction := map[string]textproto.Header{}
	for _, body := range notices(a) {
		h := perRecipient(t, body)
		byAction[h.Get("Action")] = h
	}
	for _, tc := range []struct {
		action, rcpt, status, diag string
	}{
		{"failed", "gone@b.test", "5.7.26", "smtp; 550 5.7.26 Unauthenticated mail from a.test is not accepted"},
		{"delayed", "full@b.test", "4.2.2", "smtp; 452 4.2.2 Mailbox full, try again later"},
	} {
		h := byAction[tc.action]
		if h.Get("Final-Recipient") != "rfc822; "+tc.rcpt || h.Get("Status") != tc.status ||
			h.Get("Diagnostic-Code") != tc.diag || h.Get("Remote-Mta") != "dns; 127.0.0.1" {
			t.Errorf("%s notice: Final-Recipient %q, Status %q, Diagnostic-Code %q, Remote-MTA %q; want %s, %s, %q, 127.0.0.1",
				tc.action, h.Get("Final-Recipient"), h.Get("Status"), h.Get("Diagnostic-Code"), h.Get("Remote-Mta"),
				tc.rcpt, tc.status, tc.diag)
		}
	}
}

// notices returns the bodies srv has taken in whole: a transaction is
// marked as having DATA before its body is read.
func notices(srv *scripted) []string {
	var out []string
	for _, x := range srv.delivered() {
		if x.Body != "" {
			out = append(out, x.Body)
		}
	}
	return out
}

// perRecipient returns the first per-recipient block of a DSN.
func perRecipient(t *testing.T, raw string) textproto.Header {
	t.Helper()
	e, err := message.Read(strings.NewReader(raw))
	if err != nil {
		t.Fatalf("read notice: %v", err)
	}
	mr := e.MultipartReader()
	if mr == nil {
		t.Fatalf("notice is not multipart:\n%s", raw)
	}
	for {
		p, err := mr.NextPart()
		if err != nil {
			t.Fatalf("no delivery-status part: %v\n%s", err, raw)
		}
		if mt, _, _ := p.Header.ContentType(); mt != "message/delivery-status" {
			continue
		}
		var buf bytes.Buffer
		buf.ReadFrom(p.Body)
		br := bufio.NewReader(&buf)
		if _, err := textproto.ReadHeader(br); err != nil {
			t.Fatalf("per-message block: %v", err)
		}
		h, err := textproto.ReadHeader(br)
		if err != nil {
			t.Fatalf("per-recipient block: %v", err)
		}
		return h
	}
}
