package main

// Several relay nodes on one PostgreSQL store: shared work, nodes that die
// or stall, notifications across nodes, and a database that goes away.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/textproto"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/relaymail/relay/internal/testkit/pgtest"
)

// sink is an SMTP server on loopback standing for the rest of the
// internet: it counts the Message-IDs it takes and can hold a transaction
// in DATA until told to go on.
type sink struct {
	addr string
	mu   sync.Mutex
	got  map[string]int // Message-ID -> deliveries
	// hold, while not nil, blocks the first DATA until closed; entered
	// says that one is being held.
	hold    chan struct{}
	entered chan struct{}
	held    atomic.Bool
}

func newSink(t *testing.T) *sink {
	t.Helper()
	k := &sink{got: map[string]int{}}
	s := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &sinkSession{k: k}, nil }))
	s.Domain = "sink.test"
	s.AllowInsecureAuth = true
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	k.addr = l.Addr().String()
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return k
}

type sinkSession struct{ k *sink }

func (s *sinkSession) Reset()                               {}
func (s *sinkSession) Logout() error                        { return nil }
func (s *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	k := s.k
	k.mu.Lock()
	hold := k.hold
	k.mu.Unlock()
	if hold != nil && k.held.CompareAndSwap(false, true) {
		close(k.entered)
		<-hold
	}
	tp := textproto.NewReader(bufioReader(string(b)))
	h, _ := tp.ReadMIMEHeader()
	k.mu.Lock()
	k.got[h.Get("Message-Id")]++
	k.mu.Unlock()
	return nil
}

func (k *sink) count(id string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.got[id]
}

// holdFirst makes the next DATA wait until release is called.
func (k *sink) holdFirst() (entered <-chan struct{}, release func()) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.hold, k.entered = make(chan struct{}), make(chan struct{})
	k.held.Store(false)
	var once sync.Once
	hold := k.hold
	return k.entered, func() { once.Do(func() { close(hold) }) }
}

// node starts `relay serve` on the shared store with a data directory of
// its own, its IMAP listener on, remote.test routed to the sink, and short
// leases so that a dead node's work moves on within the test.
func node(t *testing.T, url, data, sinkAddr string, extra ...string) *server {
	t.Helper()
	args := append([]string{"--store", url, "--imap", "127.0.0.1:0", "--submission", "127.0.0.1:0", "--lease-time", "2s",
		"--transport", "remote.test=" + sinkAddr, "--dns", "127.0.0.1:1",
		"--retry-first", "1s", "--retry-max", "2s"}, extra...)
	return startServer(t, data, args...)
}

// imapMessageIDs returns the Message-IDs in user's INBOX, read through addr.
func imapMessageIDs(t *testing.T, addr, user string) []string {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatalf("IMAP dial %s: %v", addr, err)
	}
	defer c.Close()
	if err := c.Login(user, testPassword).Wait(); err != nil {
		t.Fatalf("IMAP LOGIN: %v", err)
	}
	sel, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if sel.NumMessages == 0 {
		return nil
	}
	msgs, err := c.Fetch(imap.SeqSet{{Start: 1, Stop: 0}}, &imap.FetchOptions{Envelope: true}).Collect()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range msgs {
		ids = append(ids, "<"+m.Envelope.MessageID+">")
	}
	return ids
}

// TestNodesKill: three nodes on one PostgreSQL store, 8 SMTP clients spread
// over them, and one node killed with SIGKILL (and started again) every
// second and a half, 30 times. Every message answered 250 ends up in bob's
// INBOX exactly once, and every remote one at the sink (at least once; the
// duplicates a killed node causes, by delivering and dying before it could
// record it, are counted and reported).
func TestNodesKill(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	k := newSink(t)
	dir := workDir(t)
	mustRelayStdin(t, testPassword+"\n", "user", "add", "bob@localhost", "--password-stdin", "--store", url, "--data", filepath.Join(dir, "cli"))
	var mu sync.Mutex
	nodes := make([]*server, 3)
	for i := range nodes {
		nodes[i] = node(t, url, filepath.Join(dir, fmt.Sprint("n", i)), k.addr)
	}
	addrOf := func(i int) string {
		mu.Lock()
		defer mu.Unlock()
		return nodes[i].addrs["submission"]
	}

	var acked sync.Map // Message-ID -> remote (bool)
	var stop atomic.Bool
	var wg sync.WaitGroup
	var seq atomic.Int64
	for g := range 8 {
		wg.Go(func() {
			for !stop.Load() {
				c, err := smtp.Dial(addrOf(g % 3))
				if err != nil {
					time.Sleep(50 * time.Millisecond) // the node is being restarted
					continue
				}
				if c.Hello("client.e2e.relay.test") != nil || c.Auth(sasl.NewPlainClient("", "bob@localhost", testPassword)) != nil {
					c.Close()
					continue
				}
				for !stop.Load() {
					n := seq.Add(1)
					remote := n%3 == 0
					id := fmt.Sprintf("<node-%d@e2e.relay.test>", n)
					to := []string{"bob@localhost"}
					if remote {
						to = append(to, "carol@remote.test")
					}
					msg := crlf(fmt.Sprintf("Message-ID: %s\nSubject: %d\n\nbody %d\n", id, n, n))
					if err := sendOn(c, "bob@localhost", to, msg); err != nil {
						break // the node died: try the next connection
					}
					acked.Store(id, remote)
				}
				c.Close()
			}
		})
	}
	const cycles = 30
	for i := range cycles {
		time.Sleep(1500 * time.Millisecond)
		victim := rand.IntN(3)
		mu.Lock()
		n := nodes[victim]
		mu.Unlock()
		n.kill()
		restarted := node(t, url, filepath.Join(dir, fmt.Sprint("n", victim)), k.addr)
		mu.Lock()
		nodes[victim] = restarted
		mu.Unlock()
		if i == cycles-1 {
			stop.Store(true)
		}
	}
	wg.Wait()

	var local, remote []string
	acked.Range(func(k, v any) bool {
		local = append(local, k.(string))
		if v.(bool) {
			remote = append(remote, k.(string))
		}
		return true
	})
	t.Logf("%d messages acknowledged over %d kills, %d of them also remote", len(local), cycles, len(remote))
	if len(local) < 100 {
		t.Fatalf("only %d messages acknowledged: the test needs load", len(local))
	}
	// Everything is delivered once the nodes have taken over what the
	// dead ones held.
	imapAddr := nodes[0].listener(t, "imap")
	var got []string
	if !waitFor(60*time.Second, func() bool {
		got = imapMessageIDs(t, imapAddr, "bob@localhost")
		return len(got) >= len(local)
	}) {
		t.Logf("bob's INBOX holds %d of %d acknowledged messages after 60 s", len(got), len(local))
	}
	count := map[string]int{}
	for _, id := range got {
		count[id]++
	}
	lost, dup := 0, 0
	for _, id := range local {
		switch count[id] {
		case 0:
			lost++
		case 1:
		default:
			dup++
		}
	}
	if lost > 0 || dup > 0 {
		t.Errorf("local delivery: %d acknowledged messages lost, %d delivered more than once (exactly-once broken)", lost, dup)
	}
	if !waitFor(60*time.Second, func() bool {
		for _, id := range remote {
			if k.count(id) == 0 {
				return false
			}
		}
		return true
	}) {
		missing := 0
		for _, id := range remote {
			if k.count(id) == 0 {
				missing++
			}
		}
		t.Errorf("remote delivery: %d of %d acknowledged messages never reached the sink", missing, len(remote))
	}
	dups := 0
	for _, id := range remote {
		dups += max(k.count(id)-1, 0)
	}
	t.Logf("remote delivery: %d messages, 0 lost, %d duplicates (at-least-once across node deaths)", len(remote), dups)
}

// sendOn sends one message on an open connection.
func sendOn(c *smtp.Client, from string, to []string, msg string) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return err
	}
	_, err = w.CloseWithResponse()
	return err
}

// TestNodeStalled: node A claims a message, delivers its local recipient,
// and stalls (SIGSTOP) in the middle of the remote delivery, past its lease.
// Node B takes the message over and delivers the remote recipient; when A
// wakes up and gets the sink's answer, its write is refused (the lease was
// taken over), the local recipient was never delivered twice, and the queue
// is empty.
func TestNodeStalled(t *testing.T) {
	t.Parallel()
	url := pgtest.URL(t)
	k := newSink(t)
	dir := workDir(t)
	mustRelayStdin(t, testPassword+"\n", "user", "add", "bob@localhost", "--password-stdin", "--store", url, "--data", filepath.Join(dir, "cli"))
	entered, release := k.holdFirst()
	defer release()
	a := node(t, url, filepath.Join(dir, "a"), k.addr)
	a.submit(t, "bob@localhost", []string{"bob@localhost", "carol@remote.test"}, crlf("Message-ID: <stalled@e2e.relay.test>\nSubject: stalled\n\nx\n"))
	select {
	case <-entered:
	case <-time.After(20 * time.Second):
		t.Fatalf("node A did not reach the sink's DATA within 20 s:\n%s", a.logText())
	}
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	b := node(t, url, filepath.Join(dir, "b"), k.addr)
	// B takes the message over once A's lease (2 s) ran out.
	if !waitFor(30*time.Second, func() bool { return k.count("<stalled@e2e.relay.test>") >= 1 }) {
		t.Fatalf("node B did not deliver the stalled message within 30 s:\n%s", b.logText())
	}
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	release()
	if !waitFor(20*time.Second, func() bool {
		return strings.Contains(a.logText(), "remote outcome not recorded")
	}) {
		t.Errorf("node A's late write was not refused:\n%s", a.logText())
	}
	if ids := imapMessageIDs(t, b.listener(t, "imap"), "bob@localhost"); len(ids) != 1 {
		t.Errorf("bob's INBOX holds %d copies, want 1: %v", len(ids), ids)
	}
	waitQueueEmptyStore(t, url, filepath.Join(dir, "cli"))
	t.Logf("the sink got the message %d times (the second from A after it woke: at-least-once)", k.count("<stalled@e2e.relay.test>"))
}

// waitQueueEmptyStore waits until the shared store's queue is empty.
func waitQueueEmptyStore(t *testing.T, url, data string) {
	t.Helper()
	if !waitFor(30*time.Second, func() bool {
		res := runRelay(t, nil, "queue", "list", "--store", url, "--data", data)
		return res.code == 0 && strings.Contains(res.stdout, "queue is empty")
	}) {
		t.Errorf("the queue is not empty after 30 s:\n%s", runRelay(t, nil, "queue", "list", "--store", url, "--data", data).stdout)
	}
}

// twoNodes starts two nodes on one new database, with an account for user
// and remote mail going to a sink.
func twoNodes(t *testing.T, user string) (a, b *server) {
	t.Helper()
	url := pgtest.URL(t)
	k := newSink(t)
	dir := workDir(t)
	mustRelayStdin(t, testPassword+"\n", "user", "add", user, "--password-stdin", "--store", url, "--data", filepath.Join(dir, "cli"))
	return node(t, url, filepath.Join(dir, "a"), k.addr), node(t, url, filepath.Join(dir, "b"), k.addr)
}

// TestNodesIdle: an IMAP client idling on node B hears of a message that
// node A delivered. The latency is logged; the test allows 10 s, as a
// loaded CI machine may need, and the figure goes to the README.
func TestNodesIdle(t *testing.T) {
	t.Parallel()
	a, b := twoNodes(t, "bob@localhost")

	exists := make(chan uint32, 16)
	c, err := imapclient.DialInsecure(b.listener(t, "imap"), &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					exists <- *d.NumMessages
				}
			},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("bob@localhost", testPassword).Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	idle, err := c.Idle()
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	for i := 1; i <= 5; i++ {
		start := time.Now()
		a.send(t, "alice@localhost", []string{"bob@localhost"}, crlf(fmt.Sprintf("Subject: %d\n\nacross nodes\n", i)))
		select {
		case n := <-exists:
			t.Logf("message %d: EXISTS %d on node B %v after node A's 250", i, n, time.Since(start).Round(time.Millisecond))
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d: no EXISTS on node B within 10 s of node A's 250", i)
		}
	}
}

// TestNodesTail: `relay queue tail -f` on node B follows what node A does:
// the events of a message that node A accepted and delivered.
func TestNodesTail(t *testing.T) {
	t.Parallel()
	a, b := twoNodes(t, "carol@localhost")
	// The follower connects in its own time, and what happened before it
	// did is the past, not followed: send until it shows a message, the
	// sign that it follows. Other tests share the database, so only this
	// test's senders count.
	lines, next := followTail(t, b.data, "-n", "0")
	connected := false
	for i := 0; i < 20 && !connected; i++ {
		from := fmt.Sprintf("warmup%d@localhost", i)
		a.send(t, from, []string{"carol@localhost"}, crlf("Subject: warm-up\n\nis anyone there\n"))
		deadline := time.After(time.Second)
		for waiting := true; waiting; {
			select {
			case l := <-lines:
				if l.ev.Event == "accepted" && strings.HasPrefix(l.ev.From, "warmup") {
					connected, waiting = true, false
				}
			case <-deadline:
				waiting = false
			}
		}
	}
	if !connected {
		t.Fatal("queue tail -f on node B showed none of 20 messages node A accepted")
	}
	for i := 1; i <= 3; i++ {
		from := fmt.Sprintf("tail%d@localhost", i)
		start := time.Now()
		a.send(t, from, []string{"carol@localhost"}, crlf(fmt.Sprintf("Subject: %d\n\nfollowed on another node\n", i)))
		var id string
		for id == "" {
			if l := next("accepted event"); l.ev.Event == "accepted" && l.ev.From == from {
				id = l.ev.ID
				t.Logf("message %d: accepted on node A, shown on node B %v after it was sent", i, l.at.Sub(start).Round(time.Millisecond))
			}
		}
		for {
			l := next("delivered event")
			if l.ev.ID == id && l.ev.Event == "delivered" {
				if l.ev.Rcpt != "carol@localhost" {
					t.Errorf("message %d delivered to %q, want carol@localhost", i, l.ev.Rcpt)
				}
				break
			}
		}
	}
}

// TestNodesVerbs: every queue and user verb run on one node acts on the
// shared store: a message node A accepted is listed, shown, held, released
// and deleted from node B, and an account added on node A logs in on B.
func TestNodesVerbs(t *testing.T) {
	t.Parallel()
	a, b := twoNodes(t, "bob@localhost")
	// No DNS answers here, so mail for nowhere.test stays deferred.
	a.submit(t, "bob@localhost", []string{"x@nowhere.test"}, crlf("Subject: verbs\n\nacross nodes\n"))
	m := queuedFrom(t, b.data, "bob@localhost")

	if sh := showMessage(t, b.data, m.ID); !strings.Contains(sh.Body, "across nodes") {
		t.Errorf("queue show on node B: body %q", sh.Body)
	}
	mustRelay(t, "queue", "hold", m.ID, "--data", b.data)
	if found, held := heldState(t, a.data, m.ID); !found || !held {
		t.Errorf("held on node B: node A lists it found=%v held=%v", found, held)
	}
	mustRelay(t, "queue", "release", m.ID, "--data", a.data)
	if found, held := heldState(t, b.data, m.ID); !found || held {
		t.Errorf("released on node A: node B lists it found=%v held=%v", found, held)
	}
	mustRelay(t, "queue", "flush", m.ID, "--data", b.data)
	mustRelay(t, "queue", "delete", m.ID, "--data", b.data)
	if found, _ := heldState(t, a.data, m.ID); found {
		t.Errorf("deleted on node B: node A still lists %s", m.ID)
	}
	if out := mustRelay(t, "queue", "tail", "-n", "50", "--data", a.data).stdout; !strings.Contains(out, m.ID) {
		t.Errorf("queue tail on node A shows nothing of %s:\n%s", m.ID, out)
	}

	mustRelayStdin(t, testPassword+"\n", "user", "add", "dora@localhost", "--password-stdin", "--data", a.data)
	if out := mustRelay(t, "user", "list", "--data", b.data).stdout; !strings.Contains(out, "dora@localhost") || !strings.Contains(out, "bob@localhost") {
		t.Errorf("user list on node B:\n%s", out)
	}
	c, err := imapclient.DialInsecure(b.listener(t, "imap"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("dora@localhost", testPassword).Wait(); err != nil {
		t.Errorf("an account added on node A cannot log in on node B: %v", err)
	}
	mustRelay(t, "user", "del", "dora@localhost", "--data", b.data)
	c2, err := imapclient.DialInsecure(a.listener(t, "imap"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.Login("dora@localhost", testPassword).Wait(); err == nil {
		t.Error("an account deleted on node B still logs in on node A")
	}
}

// TestPostgresDown: while the database is down, SMTP answers 451 4.3.0 and
// IMAP NO [UNAVAILABLE], the node stays up, and when the database is back
// it works again by itself; nothing acknowledged is lost.
func TestPostgresDown(t *testing.T) {
	t.Parallel()
	c := pgtest.Own(t)
	url := c.URL("postgres")
	k := newSink(t)
	dir := workDir(t)
	mustRelayStdin(t, testPassword+"\n", "user", "add", "bob@localhost", "--password-stdin", "--store", url, "--data", filepath.Join(dir, "cli"))
	n := node(t, url, filepath.Join(dir, "n"), k.addr)
	imapAddr := n.listener(t, "imap")
	n.send(t, "alice@localhost", []string{"bob@localhost"}, crlf("Message-ID: <before@e2e.relay.test>\nSubject: before\n\nx\n"))

	if err := c.Down(); err != nil {
		t.Fatal(err)
	}
	cl := n.dial(t)
	var se *smtp.SMTPError
	err := cl.Mail("alice@localhost", nil)
	if err == nil {
		err = cl.Rcpt("bob@localhost", nil)
	}
	if err == nil {
		err = sendOn(cl, "alice@localhost", []string{"bob@localhost"}, crlf("Subject: during\n\nx\n"))
	}
	if !errors.As(err, &se) || se.Code != 451 || se.EnhancedCode != (smtp.EnhancedCode{4, 3, 0}) {
		t.Errorf("SMTP while the database is down: %v, want 451 4.3.0", err)
	}
	ic, err := imapclient.DialInsecure(imapAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = ic.Login("bob@localhost", testPassword).Wait()
	var ie *imap.Error
	if !errors.As(err, &ie) || ie.Code != imap.ResponseCodeUnavailable {
		t.Errorf("IMAP LOGIN while the database is down: %v, want NO [UNAVAILABLE]", err)
	}
	ic.Close()

	if err := c.Up(); err != nil {
		t.Fatal(err)
	}
	// Back by itself: no restart of the node.
	if !waitFor(30*time.Second, func() bool {
		cl, err := smtp.Dial(n.addr)
		if err != nil {
			return false
		}
		defer cl.Close()
		return cl.Hello("e2e.relay.test") == nil &&
			sendOn(cl, "alice@localhost", []string{"bob@localhost"}, crlf("Message-ID: <after@e2e.relay.test>\nSubject: after\n\nx\n")) == nil
	}) {
		t.Fatalf("the node did not take mail within 30 s of the database's return:\n%s", n.logText())
	}
	var ids []string
	waitFor(20*time.Second, func() bool {
		ids = imapMessageIDs(t, imapAddr, "bob@localhost")
		return len(ids) >= 2
	})
	if strings.Join(ids, " ") != "<before@e2e.relay.test> <after@e2e.relay.test>" {
		t.Errorf("bob's INBOX after the outage: %v, want the message before and the one after", ids)
	}
}

// mustRelayStdin is mustRelay with stdin.
func mustRelayStdin(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	res := runRelayStdin(t, stdin, nil, args...)
	if res.code != 0 {
		t.Fatalf("relay %s: %s", strings.Join(args, " "), res)
	}
	return res
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }
