package main

// Remote delivery end to end: two real `relay serve` processes, A for a.test
// and B for b.test, A routing b.test to B by transport map.

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/relaymail/relay/relay"
)

// listener returns the address a running server logged for listener name
// (e.g. imap), waiting for the log line if need be.
func (s *server) listener(t *testing.T, name string) string {
	t.Helper()
	var addr string
	found := waitFor(10*time.Second, func() bool {
		for _, m := range listenLine.FindAllStringSubmatch(s.logText(), -1) {
			if m[1] == name {
				addr = m[2]
			}
		}
		return addr != ""
	})
	if !found {
		t.Fatalf("relay serve --data %s logged no %s listener:\n%s", s.data, name, s.logText())
	}
	return addr
}

// inboxIMAP logs in to the IMAP server at addr as user and returns every
// message in INBOX (BODY.PEEK[]).
func inboxIMAP(t *testing.T, addr, user string) []string {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatalf("IMAP dial %s: %v", addr, err)
	}
	defer c.Close()
	if err := c.Login(user, testPassword).Wait(); err != nil {
		t.Fatalf("IMAP LOGIN %s: %v", user, err)
	}
	sel, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		t.Fatalf("IMAP EXAMINE INBOX: %v", err)
	}
	if sel.NumMessages == 0 {
		c.Logout().Wait()
		return nil
	}
	section := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		t.Fatalf("IMAP FETCH: %v", err)
	}
	var out []string
	for _, m := range msgs {
		out = append(out, string(m.FindBodySection(section)))
	}
	c.Logout().Wait()
	return out
}

// waitInbox polls user's INBOX over IMAP until it holds n messages.
func waitInbox(t *testing.T, addr, user string, n int) []string {
	t.Helper()
	var got []string
	if !waitFor(20*time.Second, func() bool { got = inboxIMAP(t, addr, user); return len(got) >= n }) {
		t.Fatalf("%s's INBOX at %s holds %d messages after 20s, want %d", user, addr, len(got), n)
	}
	return got
}

// TestRemoteDelivery: a message submitted at A is read over IMAP at B;
// while B is down A keeps the next one and retries; after B is back and a
// queue flush it arrives exactly once; mail to an unknown user at B comes
// back to the sender at A as a DSN with Status 5.1.1.
func TestRemoteDelivery(t *testing.T) {
	t.Parallel()
	dataA := filepath.Join(workDir(t), "a")
	dataB := filepath.Join(workDir(t), "b")
	addUsers(t, dataA, "alice@a.test")
	addUsers(t, dataB, "bob@b.test")
	bArgs := []string{"--domain", "b.test", "--hostname", "mx.b.test", "--imap", "127.0.0.1:0"}
	b := startServer(t, dataB, bArgs...)
	bSMTP := b.addr
	a := startServer(t, dataA, "--domain", "a.test", "--hostname", "mx.a.test",
		"--submission", "127.0.0.1:0", "--imap", "127.0.0.1:0",
		"--transport", "b.test="+bSMTP, "--dns", "127.0.0.1:1",
		"--retry-first", "1s", "--retry-max", "2s")
	aIMAP := a.listener(t, "imap")

	// A complete message (Date: and Message-ID:, which submission would
	// add) arrives at B as alice sent it.
	first := crlf("From: Alice <alice@a.test>\nTo: bob@b.test\nSubject: first\nMessage-Id: <first@a.test>\nDate: Tue, 01 Dec 2026 12:00:00 +0000\n\nHello Bob, from A to B.\n..and a line with a dot.\n")
	a.submit(t, "alice@a.test", []string{"bob@b.test"}, first)
	got := waitInbox(t, b.listener(t, "imap"), "bob@b.test", 1)
	if len(got) != 1 || !strings.HasSuffix(got[0], first) {
		t.Fatalf("bob's INBOX at B: %q, want one message ending with what alice sent", got)
	}
	if n := strings.Count(got[0][:strings.Index(got[0], "\r\n\r\n")], "Received: "); n < 2 {
		t.Errorf("message at B has %d Received: fields, want one from each relay:\n%s", n, got[0])
	}
	waitQueueEmpty(t, dataA)

	// B goes away: A keeps the message and retries.
	b.kill()
	second := crlf("From: Alice <alice@a.test>\nTo: bob@b.test\nSubject: second\nMessage-Id: <second@a.test>\nDate: Tue, 01 Dec 2026 12:05:00 +0000\n\nWhile you were out.\n")
	a.submit(t, "alice@a.test", []string{"bob@b.test"}, second)
	var q queued
	if !waitFor(20*time.Second, func() bool {
		q = queuedFrom(t, dataA, "alice@a.test")
		return len(q.Recipients) == 1 && q.Recipients[0].Attempts >= 2
	}) {
		t.Fatalf("A did not retry the message for B twice within 20s: %s", rcptStates(q))
	}
	r := q.Recipients[0]
	if r.Address != "bob@b.test" || r.State != "pending" || r.LastError == "" || !strings.HasPrefix(r.LastError, "4") {
		t.Errorf("while B is down, A's queue says %+v; want bob@b.test pending with a 4xx last error", r)
	}
	t.Logf("while B is down: %s, last error %q", rcptStates(q), r.LastError)

	// B comes back on the same port; a flush sends the message at once.
	b = startServer(t, dataB, append(bArgs, "--smtp", bSMTP)...)
	mustRelay(t, "queue", "flush", "--data", dataA)
	waitQueueEmpty(t, dataA)
	got = waitInbox(t, b.listener(t, "imap"), "bob@b.test", 2)
	if len(got) != 2 || !strings.HasSuffix(got[1], second) {
		t.Fatalf("bob's INBOX at B after B came back: %d messages, want 2, the second ending with what alice sent", len(got))
	}
	if n := strings.Count(strings.Join(got, ""), "<second@a.test>"); n != 1 {
		t.Errorf("the second message arrived %d times, want exactly once", n)
	}

	// Mail to an unknown user at B comes back to alice.
	a.submit(t, "alice@a.test", []string{"unknown@b.test"},
		crlf("From: alice@a.test\nTo: unknown@b.test\nSubject: lost\nMessage-Id: <lost@a.test>\n\nAnyone there?\n"))
	notes := waitInbox(t, aIMAP, "alice@a.test", 1)
	if len(notes) != 1 {
		t.Fatalf("alice has %d messages at A, want one notice", len(notes))
	}
	n := notes[0]
	for _, want := range []string{
		"multipart/report", "report-type=delivery-status", "message/delivery-status",
		"Final-Recipient: rfc822; unknown@b.test", "Action: failed", "Status: 5.1.1",
		"Diagnostic-Code: smtp; 550 5.1.1", "Subject: lost", "Message-Id: <lost@a.test>",
	} {
		if !strings.Contains(strings.ReplaceAll(n, "\r\n ", " "), want) {
			t.Errorf("notice at A lacks %q:\n%s", want, n)
		}
	}
	waitQueueEmpty(t, dataA)
	if got := inboxIMAP(t, b.listener(t, "imap"), "bob@b.test"); len(got) != 2 {
		t.Errorf("bob has %d messages at the end, want still 2", len(got))
	}
	// A first: its QUIT on the pooled connection leaves B without clients.
	a.stop()
	b.stop()
	if left := readStored(t, dataB); len(left) != 0 {
		t.Errorf("B's queue holds %d messages at the end, want none", len(left))
	}
}

// TestStopWithIdleSMTPClient: SIGTERM stops `relay serve` at once, without
// waiting out the shutdown grace, while an SMTP client (such as another relay
// keeping its connection for the next message) sits idle after EHLO; the
// client hears 421 4.3.2.
func TestStopWithIdleSMTPClient(t *testing.T) {
	t.Parallel()
	s := startServer(t, filepath.Join(workDir(t), "data"))
	c := s.dial(t) // connected, EHLO said, then idle
	start := time.Now()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.done:
		if s.waitErr != nil {
			t.Errorf("relay serve exited with %v after SIGTERM", s.waitErr)
		}
		t.Logf("stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))
	case <-time.After(relay.ShutdownGrace):
		t.Fatalf("relay serve still runs %v after SIGTERM with an idle SMTP client: it waited for the client", time.Since(start).Round(time.Second))
	}
	if err := c.Noop(); err == nil || !strings.Contains(err.Error(), "421") {
		t.Errorf("idle client after SIGTERM: NOOP = %v, want the 421 the server sent before closing", err)
	}
}

// waitQueueEmpty waits until `relay queue list` on data says nothing is
// queued.
func waitQueueEmpty(t *testing.T, data string) {
	t.Helper()
	var out string
	if !waitFor(20*time.Second, func() bool {
		var ms []queued
		ms, out = listQueue(t, data)
		return len(ms) == 0
	}) {
		t.Fatalf("queue of %s not empty after 20s:\n%s", data, out)
	}
}
