package main

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// TestSubmissionSwaks submits with swaks over STARTTLS with AUTH PLAIN and
// LOGIN, as an MUA would on port 587, and checks that each message reaches
// the recipient's INBOX once, marked ESMTPSA (RFC 3848), and that a wrong
// password is refused with 535 and stores nothing.
func TestSubmissionSwaks(t *testing.T) {
	t.Parallel()
	swaks := needTool(t, "swaks")
	data := workDir(t)
	addUsers(t, data, "alice@localhost", "bob@localhost")
	srv := startServer(t, data, "--submission", "127.0.0.1:0")
	sub := srv.addrs["submission"]

	tests := []struct {
		name, mech, password string
		ok                   bool
	}{
		{"PLAIN", "PLAIN", testPassword, true},
		{"LOGIN", "LOGIN", testPassword, true},
		{"PLAIN wrong password", "PLAIN", "not-" + testPassword, false},
	}
	for _, tt := range tests {
		out, code := runTool(t, swaks, "--server", sub, "--tls", "--helo", "swaks.e2e.relay.test",
			"--auth", tt.mech, "--auth-user", "alice@localhost", "--auth-password", tt.password,
			"--from", "alice@localhost", "--to", "bob@localhost", "--header", "Subject: swaks "+tt.name)
		switch {
		case !strings.Contains(out, "=== TLS started") || !strings.Contains(out, " ~> AUTH "+tt.mech):
			t.Errorf("%s: swaks did not start TLS and then AUTH %s:\n%s", tt.name, tt.mech, out)
		case tt.ok && (code != 0 || !strings.Contains(out, "<~  235 ") || !strings.Contains(out, "<~  250 2.0.0 OK: queued")):
			t.Errorf("%s: swaks exit %d, want 0 with 235 and the message queued:\n%s", tt.name, code, out)
		case !tt.ok && (code == 0 || !strings.Contains(out, "535 5.7.8")):
			t.Errorf("%s: swaks exit %d, want a failure with 535 5.7.8:\n%s", tt.name, code, out)
		}
	}

	if !waitFor(10*time.Second, func() bool { return len(mustListQueue(t, data)) == 0 }) {
		t.Errorf("messages still queued 10s after submission")
	}
	srv.stop()
	all := readStored(t, data, "alice@localhost", "bob@localhost")
	for _, tt := range tests {
		subject := "\r\nSubject: swaks " + tt.name + "\r\n"
		var found []stored
		for _, s := range all {
			if strings.Contains(s.content, subject) {
				found = append(found, s)
			}
		}
		if !tt.ok {
			if len(found) != 0 {
				t.Errorf("%s: %d messages stored after a refused AUTH", tt.name, len(found))
			}
			continue
		}
		if len(found) != 1 || found[0].where != "bob@localhost" {
			t.Errorf("%s: stored in %v, want once in the INBOX of bob@localhost", tt.name, wheres(found))
			continue
		}
		s := found[0]
		if int64(len(s.content)) != s.size {
			t.Errorf("%s: %d bytes stored, size says %d", tt.name, len(s.content), s.size)
		}
		hdr, _, _ := strings.Cut(s.content, "\r\n\r\n")
		if !strings.HasPrefix(hdr, "Received: from swaks.e2e.relay.test ([127.0.0.1])") || !strings.Contains(hdr, " with ESMTPSA id ") {
			t.Errorf("%s: the Received: header does not say ESMTPSA from swaks:\n%.400s", tt.name, s.content)
		}
	}
}

func wheres(ss []stored) []string {
	var w []string
	for _, s := range ss {
		w = append(w, s.where)
	}
	return w
}

// TestCrashKill9TwoUsers complements TestCrashKill9 (one recipient, one
// kill): clients submit (AUTH, then one message after the other to two
// local users) while the relay is killed with SIGKILL three times and
// restarted in between, so that kills land in the middle of deliveries of
// one body to two INBOXes. Once a last run has drained the queue, every
// acknowledged message must be in each INBOX exactly once, and no message
// may be in one INBOX and not the other.
func TestCrashKill9TwoUsers(t *testing.T) {
	t.Parallel()
	const (
		rounds  = 3
		clients = 4
	)
	users := []string{"alice@localhost", "bob@localhost"}
	data := workDir(t)
	addUsers(t, data, users...)
	load := &crashLoad{started: map[string]bool{}, acked: map[string]bool{}}
	for r := range rounds {
		srv := startServer(t, data, "--submission", "127.0.0.1:0")
		load.killed.Store(false)
		var wg sync.WaitGroup
		for c := range clients {
			wg.Go(func() { submitLoad(load, srv.addrs["submission"], r*100+c, users) })
		}
		time.Sleep(700 * time.Millisecond) // the load's length
		load.waitAcked(t, (r+1)*clients)
		load.killed.Store(true)
		srv.kill()
		waitGroup(t, &wg, 30*time.Second)
	}
	for _, err := range load.early {
		t.Errorf("before a kill: %v", err)
	}
	if len(load.acked) < rounds*clients {
		t.Fatalf("only %d messages acknowledged in %d rounds; the test needs load", len(load.acked), rounds)
	}

	srv := startServer(t, data)
	var left []queued
	if !waitFor(20*time.Second, func() bool { left = mustListQueue(t, data); return len(left) == 0 }) {
		t.Errorf("%d messages still queued 20s after the last restart, e.g. %+v", len(left), left[0])
	}
	srv.stop()

	count := map[string]map[string]int{} // key, user: copies
	for _, s := range readStored(t, data, users...) {
		sm := crashSubject.FindStringSubmatch(s.content)
		if sm == nil || s.where == "queue" {
			t.Errorf("unexpected message in %s (%s):\n%.300s", s.where, s.id, s.content)
			continue
		}
		key := sm[1] + "-" + sm[2]
		if count[key] == nil {
			count[key] = map[string]int{}
		}
		count[key][s.where]++
		if !load.started[key] {
			t.Errorf("message %s is in the INBOX of %s but its DATA was never sent", key, s.where)
		}
		checkCrashMessage(t, s)
	}
	for key, per := range count {
		for _, u := range users {
			if per[u] != 1 {
				t.Errorf("message %s is %d times in the INBOX of %s, want once (copies by user: %v)", key, per[u], u, per)
			}
		}
	}
	for key := range load.acked {
		if count[key] == nil {
			t.Errorf("message %s was answered 250 but is in no INBOX", key)
		}
	}
	t.Logf("%d messages acknowledged, %d delivered, over %d kills", len(load.acked), len(count), rounds)
}

// submitLoad is one client of TestCrashKill9TwoUsers: it logs in as the
// first user and sends message (g, i) for i = 0, 1, ... to every user until
// the connection fails. Failures before the kill are recorded.
func submitLoad(l *crashLoad, addr string, g int, users []string) {
	fail := func(err error) {
		if !l.killed.Load() {
			l.mu.Lock()
			l.early = append(l.early, fmt.Errorf("client %d: %w", g, err))
			l.mu.Unlock()
		}
	}
	c, err := smtp.Dial(addr)
	if err != nil {
		fail(err)
		return
	}
	defer c.Close()
	if err := c.Hello(fmt.Sprintf("client%d.e2e.relay.test", g)); err != nil {
		fail(err)
		return
	}
	if err := c.Auth(sasl.NewPlainClient("", users[0], testPassword)); err != nil {
		fail(err)
		return
	}
	for i := 0; !l.killed.Load(); i++ {
		key := fmt.Sprintf("%d-%d", g, i)
		if err := c.Mail(users[0], nil); err != nil {
			fail(err)
			return
		}
		for _, u := range users {
			if err := c.Rcpt(u, nil); err != nil {
				fail(err)
				return
			}
		}
		w, err := c.Data()
		if err != nil {
			fail(err)
			return
		}
		l.mark(l.started, key)
		if _, err := w.Write(crashMessage(g, i)); err != nil {
			fail(err)
			return
		}
		if _, err := w.CloseWithResponse(); err != nil {
			fail(err)
			return
		}
		l.mark(l.acked, key)
	}
}
