package main

import (
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// crashMessage is message i of client g. Every message is unique (sender,
// Subject, Message-ID) and can be rebuilt from (g, i), so that what the spool
// holds can be compared byte for byte. Sizes vary so that bodies land inline
// in Badger's LSM tree, in its value log, and across several body chunks.
func crashMessage(g, i int) []byte {
	key := fmt.Sprintf("%d-%d", g, i)
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: <crash-%s@localhost>\r\nTo: <bob@localhost>\r\nSubject: crash %s\r\n", key, key)
	fmt.Fprintf(&b, "Message-ID: <crash-%s@e2e.relay.test>\r\nDate: Tue, 24 Nov 2026 12:00:00 +0000\r\n\r\n", key)
	size := 2<<10 + (g*7919+i*104729)%(6<<10)
	switch {
	case i%24 == 23:
		size = 1<<20 + 300<<10 // more than one body chunk
	case i%4 == 3:
		size = 100 << 10 // above the value-log threshold
	}
	for n := 0; b.Len() < size; n++ {
		fmt.Fprintf(&b, "%s line %06d abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789\r\n", key, n)
	}
	b.WriteString(crashTrailer(g, i))
	return b.Bytes()
}

func crashTrailer(g, i int) string { return fmt.Sprintf("END OF MESSAGE crash-%d-%d\r\n", g, i) }

var crashSender = regexp.MustCompile(`^crash-(\d+)-(\d+)@localhost$`)

// crashLoad is what the clients saw.
type crashLoad struct {
	mu      sync.Mutex
	started map[string]bool // DATA answered 354, message on its way
	acked   map[string]bool // DATA answered 250
	killed  atomic.Bool
	early   []error // failures before the kill
}

func (l *crashLoad) mark(set map[string]bool, key string) {
	l.mu.Lock()
	set[key] = true
	l.mu.Unlock()
}

// waitAcked waits, after the load has run for its time, until at least n
// messages are acknowledged in all: a slow machine makes the load run
// longer rather than leave the kill with nothing to test.
func (l *crashLoad) waitAcked(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		l.mu.Lock()
		got := len(l.acked)
		l.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d messages acknowledged in 60 s of load", got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// client sends messages on one connection until the connection fails. Any
// failure before the kill is a bug and is recorded.
func (l *crashLoad) client(addr string, g int) {
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
	for i := 0; i < 100000 && !l.killed.Load(); i++ {
		key := fmt.Sprintf("%d-%d", g, i)
		if err := c.Mail("crash-"+key+"@localhost", nil); err != nil {
			fail(err)
			return
		}
		if err := c.Rcpt("bob@localhost", nil); err != nil {
			fail(err)
			return
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
		// CloseWithResponse returns no error only for a 250.
		if _, err := w.CloseWithResponse(); err != nil {
			fail(err)
			return
		}
		l.mark(l.acked, key)
	}
}

// TestCrashKill9 runs 8 concurrent SMTP clients against the real binary,
// kills it with SIGKILL mid-load, and checks, with the server down, that every
// message answered 250 is in the data directory exactly once and whole: still
// in the queue (`relay queue list|show`, straight from the database) or
// already delivered to bob's INBOX (read from the database). Then it restarts
// the relay on the same data and checks that it comes up, lists no message
// that was not queued before, delivers the rest, and takes new mail.
func TestCrashKill9(t *testing.T) {
	t.Parallel()
	const clients = 8
	data := workDir(t)
	addUsers(t, data, "bob@localhost")
	srv := startServer(t, data)

	load := loadFor(t, srv, clients, 1500*time.Millisecond, srv.kill)
	t.Logf("%d messages acknowledged, %d more sent without an answer before SIGKILL", len(load.acked), len(load.started)-len(load.acked))
	if len(load.acked) < clients {
		t.Fatalf("only %d messages were acknowledged in 1.5s; the crash test needs load", len(load.acked))
	}

	// Server down: the CLI reads the queue from the database.
	listed, _ := listQueue(t, data)
	queuedIDs := map[string]bool{}
	for _, m := range listed {
		queuedIDs[m.ID] = true
		if crashSender.FindStringSubmatch(m.From) == nil {
			t.Errorf("unexpected queued message %s from %q", m.ID, m.From)
		}
		if len(m.Recipients) != 1 || m.Recipients[0].Address != "bob@localhost" {
			t.Errorf("message %s: recipients %+v, want bob@localhost", m.ID, m.Recipients)
		}
	}
	// The last messages to arrive are the likeliest to be cut by the kill.
	for _, m := range listed[max(0, len(listed)-clients):] {
		checkCrashMessage(t, stored{where: "queue", id: m.ID, from: m.From, size: m.Size, content: showMessage(t, data, m.ID).Whole()})
	}

	before := checkCrashStore(t, load, readStored(t, data, "bob@localhost"))
	inQueue := 0
	for _, where := range before {
		if where == "queue" {
			inQueue++
		}
	}
	if inQueue != len(listed) {
		t.Errorf("relay queue list --json lists %d messages, the database holds %d", len(listed), inQueue)
	}
	t.Logf("after the crash: %d messages stored (%d still queued), every acknowledged one among them", len(before), inQueue)

	// Restart on the same data: the relay comes up, knows no message it had
	// not queued before, delivers what is left and takes new mail.
	srv = startServer(t, data)
	for _, m := range mustListQueue(t, data) {
		if !queuedIDs[m.ID] {
			t.Errorf("after restart the queue holds %s (from %s), which was not queued before", m.ID, m.From)
		}
	}
	srv.send(t, "after-crash@localhost", []string{"bob@localhost"}, crlf("Subject: after the crash\n\nstill here\n"))
	var left []queued
	if !waitFor(30*time.Second, func() bool { left = mustListQueue(t, data); return len(left) == 0 }) {
		t.Errorf("after restart %d messages are still queued after 30s, e.g. %+v", len(left), left[0])
	}
	srv.stop()

	after := checkCrashStore(t, load, readStored(t, data, "bob@localhost"))
	for key := range before {
		if _, ok := after[key]; !ok {
			t.Errorf("message %s was stored before the restart and is gone after it", key)
		}
	}
	if len(after) != len(before) {
		t.Errorf("%d crash-test messages stored before the restart, %d after", len(before), len(after))
	}
}

// loadFor runs clients concurrent senders against srv for d, then calls
// stop (a kill, a SIGTERM) and waits for the clients to end. Failures before
// stop fail the test; after it they are expected.
func loadFor(t *testing.T, srv *server, clients int, d time.Duration, stop func()) *crashLoad {
	t.Helper()
	load := &crashLoad{started: map[string]bool{}, acked: map[string]bool{}}
	var wg sync.WaitGroup
	for g := range clients {
		wg.Go(func() { load.client(srv.addr, g) })
	}
	time.Sleep(d) // the load's length, not a synchronisation
	load.waitAcked(t, clients)
	load.killed.Store(true)
	stop()
	waitGroup(t, &wg, 30*time.Second)
	for _, err := range load.early {
		t.Errorf("before the stop: %v", err)
	}
	return load
}

// mustListQueue is listQueue without the raw output.
func mustListQueue(t *testing.T, data string) []queued {
	t.Helper()
	ms, _ := listQueue(t, data)
	return ms
}

var crashSubject = regexp.MustCompile(`(?m)^Subject: crash (\d+)-(\d+)\r$`)

// checkCrashStore checks the crash-test messages at rest: each is whole, was
// sent, and is there once; every acknowledged one is there. It returns where
// each one is, by key.
func checkCrashStore(t *testing.T, load *crashLoad, all []stored) map[string]string {
	t.Helper()
	where := map[string]string{}
	for _, s := range all {
		sm := crashSubject.FindStringSubmatch(s.content)
		if sm == nil {
			if !strings.Contains(s.content, "Subject: after the crash\r\n") {
				t.Errorf("unexpected message in %s (%s):\n%.300s", s.where, s.id, s.content)
			}
			continue
		}
		key := sm[1] + "-" + sm[2]
		if w, dup := where[key]; dup {
			t.Errorf("message %s is stored twice: in %s and in %s", key, w, s.where)
		}
		where[key] = s.where
		if !load.started[key] {
			t.Errorf("message %s is stored (%s) but its DATA was never sent", key, s.where)
		}
		checkCrashMessage(t, s)
	}
	for key := range load.acked {
		if _, ok := where[key]; !ok {
			t.Errorf("message %s was answered 250 but is neither queued nor delivered", key)
		}
	}
	return where
}

// checkCrashMessage checks that a stored crash-test message is exactly what
// its client sent, behind the relay's Received: header.
func checkCrashMessage(t *testing.T, s stored) {
	t.Helper()
	sm := crashSubject.FindStringSubmatch(s.content)
	if sm == nil {
		t.Errorf("message %s in %s has no crash-test Subject; it begins %q", s.id, s.where, s.content[:min(len(s.content), 300)])
		return
	}
	g, _ := strconv.Atoi(sm[1])
	i, _ := strconv.Atoi(sm[2])
	name := fmt.Sprintf("message %s-%s (in %s %s)", sm[1], sm[2], s.where, s.id)
	switch {
	case int64(len(s.content)) != s.size:
		t.Errorf("%s: %d bytes stored, size says %d", name, len(s.content), s.size)
	case !strings.HasSuffix(s.content, crashTrailer(g, i)):
		t.Errorf("%s is cut short: it ends %q", name, s.content[max(0, len(s.content)-80):])
	case !strings.HasSuffix(s.content, string(crashMessage(g, i))):
		t.Errorf("%s differs from what was sent", name)
	case !strings.HasPrefix(s.content, "Received: "):
		t.Errorf("%s has no Received: header first", name)
	case s.from != "" && s.from != fmt.Sprintf("crash-%d-%d@localhost", g, i):
		t.Errorf("%s has envelope sender %s", name, s.from)
	}
}

// waitGroup waits for wg, failing the test after d.
func waitGroup(t *testing.T, wg *sync.WaitGroup, d time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("clients still running %v after the kill", d)
	}
}
