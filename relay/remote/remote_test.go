package remote_test

import (
	"context"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/relaymail/relay/relay/deliver"
	"github.com/relaymail/relay/relay/remote"
	"github.com/relaymail/relay/spool"
)

const sample = "From: alice@a.test\r\nTo: bob@b.test\r\nSubject: hello\r\n\r\nHello Bob.\r\n.leading dot\r\n"

// via routes b.test (and any more domains given) to srv by transport map.
func via(srv *scripted, domains ...string) remote.Config {
	m := map[string]string{"b.test": srv.addr}
	for _, d := range domains {
		m[d] = srv.addr
	}
	return remote.Config{Transports: m}
}

func TestDeliverSuccess(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	srv := newScripted(t, script{})
	tr := newTransport(t, q, via(srv))
	m := q.add(t, sample, nil, "bob@b.test")

	out := deliverNow(t, tr, m)
	checkOK(t, "bob", out[0])
	if out[0].RemoteMTA != "127.0.0.1" {
		t.Errorf("RemoteMTA %q, want 127.0.0.1", out[0].RemoteMTA)
	}
	got := srv.delivered()
	if len(got) != 1 {
		t.Fatalf("server got %d delivered transactions, want 1: %+v", len(got), srv.transactions())
	}
	x := got[0]
	if x.From != "alice@a.test" || !slices.Equal(x.accepted(), []string{"bob@b.test"}) {
		t.Errorf("envelope MAIL %q RCPT %v, want alice@a.test -> bob@b.test", x.From, x.accepted())
	}
	if x.Opts.Size != m.Size {
		t.Errorf("SIZE=%d, want %d", x.Opts.Size, m.Size)
	}
	if x.Body != sample {
		t.Errorf("body arrived as %q, want %q", x.Body, sample)
	}
}

// TestPerRecipientReplies: one transaction, each recipient with its own
// answer; a recipient deferred at the first attempt is accepted at the
// second.
func TestPerRecipientReplies(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	srv := newScripted(t, script{rcpt: map[string][]string{
		"busy@b.test": {"450 4.2.0 mailbox busy", "250"},
		"gone@b.test": {"550 5.1.1 no such user"},
		"full@b.test": {"452 4.2.2 over quota"},
		"bad@b.test":  {"553 5.1.3 bad address"},
	}})
	tr := newTransport(t, q, via(srv))
	m := q.add(t, sample, nil, "ok@b.test", "busy@b.test", "gone@b.test", "full@b.test", "bad@b.test")

	out := deliverNow(t, tr, m)
	checkOK(t, "ok", out[0])
	checkFail(t, "busy", out[1], false, "450 4.2.0 mailbox busy")
	checkFail(t, "gone", out[2], true, "550 5.1.1 no such user")
	checkFail(t, "full", out[3], false, "452 4.2.2 over quota")
	checkFail(t, "bad", out[4], true, "553 5.1.3 bad address")
	for i, o := range out {
		if o.RemoteMTA != "127.0.0.1" {
			t.Errorf("outcome %d: RemoteMTA %q, want 127.0.0.1 for a failure too", i, o.RemoteMTA)
		}
	}
	txns := srv.transactions()
	if len(txns) != 1 || len(txns[0].Rcpts) != 5 {
		t.Fatalf("want one transaction with five RCPTs, got %+v", txns)
	}
	if got := txns[0].accepted(); !slices.Equal(got, []string{"ok@b.test"}) || txns[0].Body != sample {
		t.Errorf("accepted %v, body %q; want only ok@b.test, with the message", got, txns[0].Body)
	}

	// The second attempt, for the deferred recipients only.
	out = deliverNow(t, tr, m, 1, 3)
	checkOK(t, "busy, second attempt", out[0])
	checkFail(t, "full, second attempt", out[1], false, "452 4.2.2")
	txns = srv.transactions()
	if len(txns) != 2 || !slices.Equal(txns[1].accepted(), []string{"busy@b.test"}) {
		t.Errorf("second transaction %+v, want busy@b.test accepted", txns[1:])
	}
}

// TestAllRecipientsRefused: no DATA when no recipient was accepted, and the
// connection stays usable.
func TestAllRecipientsRefused(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	srv := newScripted(t, script{rcpt: map[string][]string{
		"x@b.test": {"550 5.1.1 no"},
		"y@b.test": {"450 4.3.2 later"},
	}}, withTLS)
	tr := newTransport(t, q, via(srv))
	out := deliverNow(t, tr, q.add(t, sample, nil, "x@b.test", "y@b.test"))
	checkFail(t, "x", out[0], true, "5.1.1")
	checkFail(t, "y", out[1], false, "4.3.2")
	if x := srv.transactions(); len(x) != 1 || x[0].Data {
		t.Errorf("transactions %+v, want one without DATA", x)
	}
	out = deliverNow(t, tr, q.add(t, sample, nil, "z@b.test"))
	checkOK(t, "z, on the same connection", out[0])
	if n := srv.connections(); n != 1 {
		t.Errorf("%d connections, want the first one reused", n)
	}
}

func TestMailRefused(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	srv := newScripted(t, script{mail: []string{"451 4.7.1 greylisted", "550 5.7.1 sender rejected"}})
	tr := newTransport(t, q, via(srv))
	m := q.add(t, sample, nil, "bob@b.test", "carol@b.test")
	out := deliverNow(t, tr, m)
	checkFail(t, "bob", out[0], false, "451 4.7.1 greylisted")
	checkFail(t, "carol", out[1], false, "451 4.7.1 greylisted")
	out = deliverNow(t, tr, m)
	checkFail(t, "bob", out[0], true, "550 5.7.1 sender rejected")
	checkFail(t, "carol", out[1], true, "550 5.7.1 sender rejected")
}

// TestDataReplies: the reply to the final dot applies to every accepted
// recipient; a recipient refused at RCPT keeps its own.
func TestDataReplies(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		reply     string
		permanent bool
	}{
		{"554 5.6.0 content rejected", true},
		{"451 4.3.0 try again", false},
		{"552 5.3.4 too big", true},
	} {
		t.Run(tc.reply[:3], func(t *testing.T) {
			t.Parallel()
			q := newQueue(t)
			srv := newScripted(t, script{
				data: []string{tc.reply},
				rcpt: map[string][]string{"gone@b.test": {"550 5.1.1 no such user"}},
			})
			tr := newTransport(t, q, via(srv))
			out := deliverNow(t, tr, q.add(t, sample, nil, "bob@b.test", "gone@b.test", "carol@b.test"))
			checkFail(t, "bob", out[0], tc.permanent, tc.reply)
			checkFail(t, "gone", out[1], true, "550 5.1.1")
			checkFail(t, "carol", out[2], tc.permanent, tc.reply)
		})
	}
}

// TestDropMidData: a connection lost during DATA is a temporary failure for
// every recipient of the transaction, and the next attempt opens a new
// connection instead of reusing the dead one.
func TestDropMidData(t *testing.T) {
	t.Parallel()
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 998)+"\r\n", 4096)
	for _, tc := range []struct {
		name, action, body string
	}{
		{"after body", dropAfterBody, sample},
		{"early, small", dropEarly, sample},
		{"early, 4 MB", dropEarly, big},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q := newQueue(t)
			srv := newScripted(t, script{data: []string{tc.action, "250"}}, withTLS)
			tr := newTransport(t, q, via(srv))
			m := q.add(t, tc.body, nil, "bob@b.test", "carol@b.test")
			out := deliverNow(t, tr, m)
			for i, o := range out {
				checkFail(t, m.Rcpts[i].Address, o, false, "4.4.2")
			}
			out = deliverNow(t, tr, m)
			checkOK(t, "bob, second attempt", out[0])
			checkOK(t, "carol, second attempt", out[1])
			if n := srv.connections(); n != 2 {
				t.Errorf("%d connections, want 2 (the dropped one is not reused)", n)
			}
			if d := srv.delivered(); len(d) != 1 || d[0].Body != tc.body {
				t.Errorf("delivered %d transactions, want one with the whole body", len(d))
			}
		})
	}
}

// TestHangInRcpt: a server that stops answering after RCPT is given up
// after CommandTimeout, as a temporary failure.
func TestHangInRcpt(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	srv := newScripted(t, script{hangRcpt: true})
	cfg := via(srv)
	cfg.CommandTimeout = 300 * time.Millisecond
	tr := newTransport(t, q, cfg)
	out, took, ok := deliverWithin(t, tr, q.add(t, sample, nil, "bob@b.test"), []int{0}, 3*time.Second)
	if !ok {
		t.Fatalf("Deliver to a server hanging at RCPT still runs after %v (CommandTimeout 300ms)", took)
	}
	checkFail(t, "bob", out[0], false, "4.4.2")
	if took < 300*time.Millisecond {
		t.Errorf("gave up after %v, before CommandTimeout", took)
	}
}

// TestHangInData: a server that stops reading the body, or takes it and
// never answers the final dot, is given up after a bounded time, as a
// temporary failure.
func TestHangInData(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, body, bug string
	}{
		{"before reply", sample, "remote.Transport never sets smtp.Client.SubmissionTimeout, so a server that " +
			"hangs after the final dot holds the delivery for go-smtp's default 12 minutes (CommandTimeout is " +
			"300ms; still waiting after %v); relay/remote/remote.go connect() sets only c.CommandTimeout"},
		{"while reading 16 MB", "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("y", 1000)+"\r\n", 16<<10),
			"the message body is written with no deadline at all (go-smtp clears the deadline after DATA's 354, " +
				"and relay/remote/remote.go send() io.Copy sets none), so a server that stops reading mid-body holds " +
				"the delivery for ever (CommandTimeout is 300ms; still waiting after %v)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			q := newQueue(t)
			srv := newScripted(t, script{data: []string{hang}})
			cfg := via(srv)
			cfg.CommandTimeout = 300 * time.Millisecond
			tr := newTransport(t, q, cfg)
			// A hang guard, generous for a loaded machine under -race:
			// writing 16 MB costs CPU time before the stall is seen.
			out, took, ok := deliverWithin(t, tr, q.add(t, tc.body, nil, "bob@b.test"), []int{0}, 15*time.Second)
			if !ok {
				t.Fatalf(tc.bug, took)
			}
			checkFail(t, "bob", out[0], false, "4.")
		})
	}
}

// TestCancelWhileHanging: cancelling the context (relay shutdown) ends a
// delivery stuck on a silent server promptly, as a temporary failure,
// instead of holding shutdown for CommandTimeout.
func TestCancelWhileHanging(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	srv := newScripted(t, script{hangRcpt: true})
	cfg := via(srv)
	cfg.CommandTimeout = 30 * time.Second
	tr := newTransport(t, q, cfg)
	m := q.add(t, sample, nil, "bob@b.test")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan []deliver.Outcome, 1)
	go func() { done <- tr.Deliver(ctx, m, []int{0}, nil) }()
	deadline := time.Now().Add(10 * time.Second)
	for srv.hanging() == 0 { // the delivery is stuck at RCPT
		if time.Now().After(deadline) {
			t.Fatal("the delivery reached no RCPT within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case out := <-done:
		checkFail(t, "bob", out[0], false, "4.")
	case <-time.After(3 * time.Second):
		t.Fatalf("remote.Transport.Deliver ignores ctx once connected: after cancel a delivery stuck at RCPT " +
			"runs on until CommandTimeout (here 30s, default 5 min), and deliver.Loop.Run waits for it, so " +
			"`relay serve` cannot stop promptly while a remote hangs (relay/remote/remote.go send/connect use ctx " +
			"only for dialing and the slot)")
		t.Fatalf("Deliver still runs 3s after its context was cancelled")
	}
}

// TestHangAtGreeting: a server that accepts the connection and never greets
// is given up after CommandTimeout.
func TestHangAtGreeting(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	cfg := remote.Config{Transports: map[string]string{"b.test": silent(t)}, CommandTimeout: 300 * time.Millisecond}
	tr := newTransport(t, q, cfg)
	out, took, ok := deliverWithin(t, tr, q.add(t, sample, nil, "bob@b.test"), []int{0}, 3*time.Second)
	if !ok {
		t.Fatalf("remote.Transport.connect sets c.CommandTimeout only after smtp.NewClientStartTLS has "+
			"read the greeting and sent EHLO, so a silent server holds the delivery for go-smtp's default 5 "+
			"minutes (CommandTimeout is 300ms; still waiting after %v); relay/remote/remote.go connect()", took)
		t.Fatalf("Deliver to a silent server still runs after %v", took)
	}
	checkFail(t, "bob", out[0], false, "4.")
}

func TestConnectionRefused(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	tr := newTransport(t, q, remote.Config{Transports: map[string]string{"b.test": closedAddr(t)}})
	out := deliverNow(t, tr, q.add(t, sample, nil, "bob@b.test", "carol@b.test"))
	checkFail(t, "bob", out[0], false, "4.4.1")
	checkFail(t, "carol", out[1], false, "4.4.1")
}

// TestSMTPUTF8: a message that needs SMTPUTF8 fails permanently with 5.6.7
// at a server without it, before MAIL; one that offers it gets it.
func TestSMTPUTF8(t *testing.T) {
	t.Parallel()
	body := "From: jöran@a.test\r\nSubject: grüße\r\n\r\nHallo.\r\n"
	utf8 := func(m *spool.Message) { m.Params.SMTPUTF8, m.From = true, "jöran@a.test" }

	q := newQueue(t)
	without := newScripted(t, script{})
	tr := newTransport(t, q, via(without))
	out := deliverNow(t, tr, q.add(t, body, utf8, "bob@b.test", "carol@b.test"))
	checkFail(t, "bob", out[0], true, "5.6.7")
	checkFail(t, "carol", out[1], true, "5.6.7")
	if x := without.transactions(); len(x) != 0 {
		t.Errorf("server without SMTPUTF8 got %+v, want no MAIL at all", x)
	}
	// An ASCII message still goes through the same connection.
	checkOK(t, "ASCII message", deliverNow(t, tr, q.add(t, sample, nil, "bob@b.test"))[0])

	with := newScripted(t, script{}, withUTF8)
	tr = newTransport(t, q, via(with))
	out = deliverNow(t, tr, q.add(t, body, utf8, "bob@b.test", "zoë@b.test"))
	checkOK(t, "bob", out[0])
	checkOK(t, "zoë", out[1])
	d := with.delivered()
	if len(d) != 1 || !d[0].Opts.UTF8 || d[0].From != "jöran@a.test" || d[0].Body != body {
		t.Errorf("server with SMTPUTF8 got %+v, want MAIL with SMTPUTF8 from jöran@a.test", d)
	}
}

// TestDSNParameters: RET, ENVID, NOTIFY and ORCPT go on only to a server
// that offers DSN (RFC 3461 §4), and the outcome says whether it did.
func TestDSNParameters(t *testing.T) {
	t.Parallel()
	params := func(m *spool.Message) {
		m.Params.Ret, m.Params.EnvID = "HDRS", "env-42"
		m.Rcpts[0].Notify = []string{"SUCCESS", "FAILURE"}
		m.Rcpts[0].ORcpt = "rfc822;Bob.Original@b.test"
		m.Rcpts[1].Notify = []string{"NEVER"}
	}
	for _, offer := range []bool{true, false} {
		t.Run("offered="+strconv.FormatBool(offer), func(t *testing.T) {
			t.Parallel()
			q := newQueue(t)
			var opts []option
			if offer {
				opts = append(opts, withDSN)
			}
			srv := newScripted(t, script{}, opts...)
			tr := newTransport(t, q, via(srv))
			out := deliverNow(t, tr, q.add(t, sample, params, "bob@b.test", "carol@b.test"))
			for i, o := range out {
				checkOK(t, "recipient "+strconv.Itoa(i), o)
				if o.RemoteDSN != offer {
					t.Errorf("recipient %d: RemoteDSN %v, want %v", i, o.RemoteDSN, offer)
				}
			}
			d := srv.delivered()
			if len(d) != 1 || len(d[0].Rcpts) != 2 {
				t.Fatalf("server got %+v, want one transaction for two recipients", srv.transactions())
			}
			x := d[0]
			if !offer {
				if x.Opts.Return != "" || x.Opts.EnvelopeID != "" || x.Rcpts[0].Notify != nil || x.Rcpts[0].ORcpt != "" {
					t.Errorf("server without DSN got RET=%q ENVID=%q NOTIFY=%v ORCPT=%q, want none",
						x.Opts.Return, x.Opts.EnvelopeID, x.Rcpts[0].Notify, x.Rcpts[0].ORcpt)
				}
				return
			}
			if x.Opts.Return != smtp.DSNReturnHeaders || x.Opts.EnvelopeID != "env-42" {
				t.Errorf("MAIL RET=%q ENVID=%q, want HDRS and env-42", x.Opts.Return, x.Opts.EnvelopeID)
			}
			if got := x.Rcpts[0].Notify; !slices.Equal(got, []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure}) {
				t.Errorf("bob NOTIFY=%v, want SUCCESS,FAILURE", got)
			}
			if got := x.Rcpts[0].ORcpt; got != "RFC822;Bob.Original@b.test" {
				t.Errorf("bob ORCPT=%q, want RFC822;Bob.Original@b.test", got)
			}
			if got := x.Rcpts[1].Notify; !slices.Equal(got, []smtp.DSNNotify{smtp.DSNNotifyNever}) || x.Rcpts[1].ORcpt != "" {
				t.Errorf("carol NOTIFY=%v ORCPT=%q, want NEVER and none", got, x.Rcpts[1].ORcpt)
			}
		})
	}
}

// TestOneTransactionPerDestination: recipients of one domain share a
// transaction; two destinations get one each; outcomes come back in the
// order of the indexes asked for.
func TestOneTransactionPerDestination(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	b := newScripted(t, script{rcpt: map[string][]string{"b2@b.test": {"550 5.1.1 no"}}})
	c := newScripted(t, script{rcpt: map[string][]string{"c1@c.test": {"451 4.3.0 later"}}})
	tr := newTransport(t, q, remote.Config{Transports: map[string]string{"b.test": b.addr, "c.test": c.addr}})
	m := q.add(t, sample, nil, "b1@b.test", "c1@c.test", "b2@B.TEST", "c2@c.test", "b3@b.test", "skipped@b.test")

	rcpts := []int{4, 3, 2, 1, 0} // not 5, and in reverse
	out := deliverNow(t, tr, m, rcpts...)
	want := map[string]string{"b1@b.test": "", "c1@c.test": "451", "b2@B.TEST": "550", "c2@c.test": "", "b3@b.test": ""}
	for j, i := range rcpts {
		addr := m.Rcpts[i].Address
		switch w := want[addr]; w {
		case "":
			checkOK(t, addr, out[j])
		default:
			checkFail(t, addr, out[j], w[0] == '5', w)
		}
	}
	bx, cx := b.transactions(), c.transactions()
	if len(bx) != 1 || len(bx[0].Rcpts) != 3 || len(cx) != 1 || len(cx[0].Rcpts) != 2 {
		t.Fatalf("b.test got %+v, c.test got %+v; want one transaction each, with 3 and 2 recipients", bx, cx)
	}
	for _, r := range append(bx[0].Rcpts, cx[0].Rcpts...) {
		if r.Addr == "skipped@b.test" {
			t.Errorf("recipient not asked for was sent: %+v", r)
		}
	}
}

// TestConnectionReuse: a second message to the same destination goes over
// the connection of the first; one the server closed meanwhile is replaced.
func TestConnectionReuse(t *testing.T) {
	t.Parallel()
	for _, tls := range []bool{true, false} {
		t.Run("tls="+strconv.FormatBool(tls), func(t *testing.T) {
			t.Parallel()
			q := newQueue(t)
			var opts []option
			if tls {
				opts = append(opts, withTLS)
			}
			srv := newScripted(t, script{}, opts...)
			tr := newTransport(t, q, via(srv))
			checkOK(t, "first", deliverNow(t, tr, q.add(t, sample, nil, "bob@b.test"))[0])
			first := srv.connections()
			if tls && first != 1 {
				t.Errorf("first message: %d connections, want 1", first)
			}
			checkOK(t, "second", deliverNow(t, tr, q.add(t, sample, nil, "carol@b.test"))[0])
			checkOK(t, "third", deliverNow(t, tr, q.add(t, sample, nil, "dave@b.test"))[0])
			if n := srv.connections(); n != first {
				t.Errorf("%d connections after three messages, want %d (reused)", n, first)
			}
			d := srv.delivered()
			if len(d) != 3 || d[0].Conn != d[1].Conn || d[1].Conn != d[2].Conn {
				t.Errorf("transactions %+v, want three on one connection", d)
			}
			for _, x := range d {
				if x.TLS != tls {
					t.Errorf("transaction on connection %d: TLS %v, want %v", x.Conn, x.TLS, tls)
				}
			}
		})
	}

	t.Run("closed by server", func(t *testing.T) {
		t.Parallel()
		q := newQueue(t)
		srv := newScripted(t, script{data: []string{"250"}}, withTLS)
		tr := newTransport(t, q, via(srv))
		checkOK(t, "first", deliverNow(t, tr, q.add(t, sample, nil, "bob@b.test"))[0])
		// Close the server's side of every connection, as an idle timeout
		// at the remote would.
		srv.srv.Close()
		srv2 := newScripted(t, script{}, withTLS, at(srv.addr))
		checkOK(t, "after the remote closed", deliverNow(t, tr, q.add(t, sample, nil, "carol@b.test"))[0])
		if n := len(srv2.delivered()); n != 1 {
			t.Errorf("restarted server got %d messages, want 1", n)
		}
	})
}

// TestSTARTTLSFailure: when the TLS handshake fails, the message goes in
// plain text on a new connection (opportunistic TLS, RFC 3207 §4.1 lets the
// client decide), and later messages do not try TLS again.
func TestSTARTTLSFailure(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	srv := newScripted(t, script{}, withOldTLS)
	tr := newTransport(t, q, via(srv))
	o := deliverNow(t, tr, q.add(t, sample, nil, "bob@b.test"))[0]
	if strings.Contains(o.Reply.String(), "tls:") {
		t.Fatalf("a failed STARTTLS handshake is a temporary failure for ever (%q): go-smtp's "+
			"NewClientStartTLS only wraps the conn, the handshake runs in the c.Hello that follows, and "+
			"relay/remote/remote.go connect() treats that error as an EHLO failure instead of falling back to "+
			"plain text and remembering noTLS, so mail to a host with a broken TLS setup bounces after 5 days", o.Reply)
	}
	checkOK(t, "first", o)
	srv.srv.Close() // drop the pooled connection: the next one is new
	srv2 := newScripted(t, script{}, withOldTLS, at(srv.addr))
	checkOK(t, "second", deliverNow(t, tr, q.add(t, sample, nil, "carol@b.test"))[0])
	if n := srv2.connections(); n != 1 {
		t.Errorf("second message: %d connections, want 1 (no new TLS attempt)", n)
	}
	for _, x := range append(srv.delivered(), srv2.delivered()...) {
		if x.TLS {
			t.Errorf("transaction %+v over TLS 1.0, which the transport should refuse", x)
		}
	}
	if n := len(srv.delivered()) + len(srv2.delivered()); n != 2 {
		t.Errorf("%d messages arrived, want 2", n)
	}
}

// TestEHLOName: every EHLO, also the one before STARTTLS, names us
// (RFC 5321 §4.1.1.1).
func TestEHLOName(t *testing.T) {
	t.Parallel()
	for _, opts := range [][]option{{withTLS}, nil} {
		q := newQueue(t)
		srv := newScripted(t, script{}, opts...)
		tr := newTransport(t, q, via(srv))
		checkOK(t, "bob", deliverNow(t, tr, q.add(t, sample, nil, "bob@b.test"))[0])
		for _, h := range srv.helloNames() {
			if h != "relay.a.test" {
				t.Errorf("EHLO %q, want relay.a.test (all: %q, STARTTLS offered: %v)", h, srv.helloNames(), opts != nil)
			}
		}
	}
}

// TestRoutes: the transport map wins over the relayhost, which takes every
// other domain, with AUTH on loopback.
func TestRoutes(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	b := newScripted(t, script{})
	smart := newScripted(t, script{}, withAuth)
	tr := newTransport(t, q, remote.Config{
		Transports: map[string]string{"b.test": b.addr},
		Relayhost:  smart.addr, RelayUser: "relayuser", RelayPassword: "secret",
	})
	out := deliverNow(t, tr, q.add(t, sample, nil, "bob@b.test", "x@elsewhere.test", "y@other.test"))
	for i, o := range out {
		checkOK(t, "recipient "+strconv.Itoa(i), o)
	}
	if d := b.delivered(); len(d) != 1 || !slices.Equal(d[0].accepted(), []string{"bob@b.test"}) {
		t.Errorf("transport b.test got %+v, want bob only", d)
	}
	d := smart.delivered()
	var got []string
	for _, x := range d {
		got = append(got, x.accepted()...)
		if x.Auth != "relayuser" {
			t.Errorf("relayhost transaction authenticated as %q, want relayuser", x.Auth)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"x@elsewhere.test", "y@other.test"}) {
		t.Errorf("relayhost got %v", got)
	}

	// A wrong password is the relayhost's answer, permanent.
	q2 := newQueue(t)
	tr = newTransport(t, q2, remote.Config{Relayhost: smart.addr, RelayUser: "relayuser", RelayPassword: "wrong"})
	checkFail(t, "wrong password", deliverNow(t, tr, q2.add(t, sample, nil, "x@elsewhere.test"))[0], true, "535")
}

// TestOneTransactionPerRelayhost: recipients of several domains that all go
// to the one relayhost share a transaction, as they share a destination.
func TestOneTransactionPerRelayhost(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	smart := newScripted(t, script{})
	tr := newTransport(t, q, remote.Config{Relayhost: smart.addr})
	out := deliverNow(t, tr, q.add(t, sample, nil, "x@one.test", "y@two.test", "z@three.test"))
	for i, o := range out {
		checkOK(t, "recipient "+strconv.Itoa(i), o)
	}
	if d := smart.delivered(); len(d) != 1 {
		t.Fatalf("remote.Transport.Deliver groups recipients by domain, not by destination: three domains "+
			"routed to the one relayhost went in %d transactions, the body sent %d times (relay/remote/remote.go "+
			"Deliver keys groups by domain while route.key names the destination)", len(d), len(d))
		t.Errorf("relayhost got %d transactions for three domains, want one", len(d))
	}
}

// mxWorld is a loopback DNS zone and scripted servers on one port, at
// 127.0.0.1 and 127.0.0.3; 127.0.0.2 refuses connections on that port.
type mxWorld struct {
	z          *zone
	dns        string
	one, three *scripted
}

func newMXWorld(t *testing.T) *mxWorld {
	t.Helper()
	w := &mxWorld{z: &zone{}}
	w.one = newScripted(t, script{})
	port := strconv.Itoa(w.one.port())
	ln, err := net.Listen("tcp", "127.0.0.3:"+port)
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.3: %v", err)
	}
	ln.Close()
	w.three = newScripted(t, script{}, at("127.0.0.3:"+port))
	w.z.add(t,
		// Answered highest preference first, to see that order is by
		// preference, not by answer.
		"order.test. 300 IN MX 20 second.order.test.",
		"order.test. 300 IN MX 10 first.order.test.",
		"first.order.test. 300 IN A 127.0.0.3",
		"second.order.test. 300 IN A 127.0.0.1",

		"fallback.test. 300 IN MX 5 down.fallback.test.",
		"fallback.test. 300 IN MX 50 up.fallback.test.",
		"down.fallback.test. 300 IN A 127.0.0.2",
		"up.fallback.test. 300 IN A 127.0.0.1",

		"alldown.test. 300 IN MX 10 down.alldown.test.",
		"down.alldown.test. 300 IN A 127.0.0.2",

		"aonly.test. 300 IN A 127.0.0.1",

		"nullmx.test. 300 IN MX 0 .",
		"nullmx.test. 300 IN A 127.0.0.1",

		"brokenmx.test. 300 IN MX 10 mx.brokenmx.test.",
		"mx.brokenmx.test. 300 IN TXT \"no address\"",
	)
	w.z.fail("servfail.test")
	w.dns = dnsServer(t, w.z)
	return w
}

func (w *mxWorld) transport(t *testing.T, q *queue) *remote.Transport {
	return newTransport(t, q, remote.Config{DNS: w.dns, Port: w.one.port()})
}

// TestMX: routing by MX preference, fallback to the next MX when one
// refuses, the implicit MX (A record), null MX, NXDOMAIN and SERVFAIL.
func TestMX(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t)
	q := newQueue(t)
	tr := w.transport(t, q)

	out := deliverNow(t, tr, q.add(t, sample, nil, "a@order.test", "b@order.test"))
	checkOK(t, "a@order.test", out[0])
	checkOK(t, "b@order.test", out[1])
	if n, m := len(w.three.delivered()), len(w.one.delivered()); n != 1 || m != 0 {
		t.Errorf("order.test: MX 10 got %d transactions, MX 20 got %d; want 1 and 0", n, m)
	}
	if out[0].RemoteMTA != "first.order.test" {
		t.Errorf("RemoteMTA %q, want first.order.test", out[0].RemoteMTA)
	}

	out = deliverNow(t, tr, q.add(t, sample, nil, "a@fallback.test"))
	checkOK(t, "a@fallback.test", out[0])
	if out[0].RemoteMTA != "up.fallback.test" {
		t.Errorf("RemoteMTA %q, want up.fallback.test (the lower preference MX refuses)", out[0].RemoteMTA)
	}

	out = deliverNow(t, tr, q.add(t, sample, nil, "a@aonly.test"))
	checkOK(t, "a@aonly.test (implicit MX)", out[0])
	if out[0].RemoteMTA != "aonly.test" {
		t.Errorf("RemoteMTA %q, want aonly.test", out[0].RemoteMTA)
	}
	if d := w.one.delivered(); len(d) != 2 || d[1].accepted()[0] != "a@aonly.test" {
		t.Errorf("127.0.0.1 got %+v, want fallback.test then aonly.test", d)
	}

	before := w.one.connections() + w.three.connections()
	out = deliverNow(t, tr, q.add(t, sample, nil, "a@nullmx.test", "b@nullmx.test"))
	checkFail(t, "a@nullmx.test", out[0], true, "5.1.10")
	checkFail(t, "b@nullmx.test", out[1], true, "5.1.10")
	if after := w.one.connections() + w.three.connections(); after != before {
		t.Errorf("null MX: %d connections made, want none", after-before)
	}

	out = deliverNow(t, tr, q.add(t, sample, nil, "a@servfail.test"))
	checkFail(t, "a@servfail.test", out[0], false, "4.4.3")

	out = deliverNow(t, tr, q.add(t, sample, nil, "a@nxdomain.test"))
	checkFail(t, "a@nxdomain.test", out[0], true, "5.1.2")

	out = deliverNow(t, tr, q.add(t, sample, nil, "a@alldown.test"))
	checkFail(t, "a@alldown.test (every MX refuses)", out[0], false, "4.4.1")

	out = deliverNow(t, tr, q.add(t, sample, nil, "a@brokenmx.test"))
	if out[0].Reply.IsZero() || out[0].Reply.Permanent {
		t.Errorf("a@brokenmx.test (MX host without address): %s, want a temporary failure", describe(out[0]))
	}

	// One message to several domains: each routed on its own.
	out = deliverNow(t, tr, q.add(t, sample, nil, "x@order.test", "x@nullmx.test", "x@servfail.test", "x@fallback.test"))
	checkOK(t, "x@order.test", out[0])
	checkFail(t, "x@nullmx.test", out[1], true, "5.1.10")
	checkFail(t, "x@servfail.test", out[2], false, "4.4.3")
	checkOK(t, "x@fallback.test", out[3])
	t.Logf("DNS queries: %v", w.z.asked())
}

// TestTransportSkipsDNS: a domain in the transport map is never looked up.
func TestTransportSkipsDNS(t *testing.T) {
	t.Parallel()
	w := newMXWorld(t)
	q := newQueue(t)
	tr := newTransport(t, q, remote.Config{DNS: w.dns, Port: w.one.port(),
		Transports: map[string]string{"nullmx.test": w.three.addr}})
	checkOK(t, "a@nullmx.test by transport", deliverNow(t, tr, q.add(t, sample, nil, "a@nullmx.test"))[0])
	for _, qn := range w.z.asked() {
		if strings.Contains(qn, "nullmx.test") {
			t.Errorf("DNS asked %q for a domain with a transport", qn)
		}
	}
}
