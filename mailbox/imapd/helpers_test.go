package imapd_test

// Layered helpers over real loopback sockets and a real Badger:
// startServer -> dial / login (imapclient) or dialRaw (line-level) ->
// selectInbox with sample messages.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	storebadger "github.com/relaymail/relay/internal/store/badger"
	"github.com/relaymail/relay/internal/testkit"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/mailbox/imapd"
)

const (
	testUser = "alice@example.test"
	testPass = "pw"
)

// ioWait bounds each read and write of a test's raw connection. It only
// stops a test that would otherwise hang; a LOGIN (bcrypt) on two busy
// cores under -race once took longer than the 10 s it used to be.
const ioWait = 2 * time.Minute

// testServer is an imapd.Server on loopback over a Badger in a temp dir.
type testServer struct {
	t     testing.TB
	dir   string
	cfg   imapd.Config
	opts  storebadger.Options
	db    *storebadger.DB
	store *storebadger.Store
	boxes *mailbox.Store
	srv   *imapd.Server
	ln    net.Listener
	addr  string
	done  chan error
}

// startServer opens a database in a fresh temp dir, adds testUser and
// serves IMAP on 127.0.0.1:0. Everything is closed in t.Cleanup.
func startServer(t testing.TB, cfg imapd.Config) *testServer {
	t.Helper()
	return startServerOpts(t, cfg, storebadger.Options{})
}

// startServerOpts is startServer with store options.
func startServerOpts(t testing.TB, cfg imapd.Config, opts storebadger.Options) *testServer {
	t.Helper()
	ts := &testServer{t: t, dir: t.TempDir(), cfg: cfg, opts: opts}
	ts.open()
	if err := ts.boxes.AddUser(testUser, testPass); err != nil {
		t.Fatalf("AddUser: %v", err)
	}
	ts.serve()
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testServer) open() {
	ts.t.Helper()
	db, err := storebadger.Open(ts.dir, ts.opts)
	if err != nil {
		ts.t.Fatalf("open database: %v", err)
	}
	ts.db = db
	ts.store = storebadger.New(db, nil)
	ts.boxes = mailbox.New(ts.store, nil)
}

func (ts *testServer) serve() {
	ts.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		ts.t.Fatalf("listen: %v", err)
	}
	ts.ln, ts.addr = ln, ln.Addr().String()
	ts.srv = imapd.New(ts.cfg, ts.boxes)
	ts.done = make(chan error, 1)
	go func() { ts.done <- ts.srv.Serve(ln) }()
}

// stop closes the server, its listener and the database; safe to call twice.
func (ts *testServer) stop() {
	if ts.srv == nil {
		return
	}
	ts.srv.Close()
	select {
	case err := <-ts.done:
		// ErrServerClosed: the goroutine reached Serve only after
		// Close, in a test that never connected.
		if err != nil && !errors.Is(err, imapd.ErrServerClosed) {
			ts.t.Errorf("Serve: %v", err)
		}
	case <-time.After(ioWait):
		ts.t.Errorf("Serve did not return after Close")
	}
	if err := ts.db.Close(); err != nil {
		ts.t.Errorf("db.Close: %v", err)
	}
	ts.srv = nil
}

// serveCounting serves cfg over ts's store on another loopback listener
// whose connections count the bytes the server has read from them, so that
// a test can send a command in pieces that arrive apart.
func (ts *testServer) serveCounting(t *testing.T, cfg imapd.Config) (addr string, read *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	read = new(atomic.Int64)
	srv := imapd.New(cfg, ts.boxes)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(&countingListener{Listener: ln, read: read}) }()
	t.Cleanup(func() { srv.Close(); <-served })
	return ln.Addr().String(), read
}

type countingListener struct {
	net.Listener
	read *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, read: l.read}, nil
}

type countingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// restart closes everything and opens the same data directory again, as a
// relay restart does.
func (ts *testServer) restart() {
	ts.t.Helper()
	ts.stop()
	ts.open()
	ts.serve()
}

// dial connects an imapclient (not logged in).
func (ts *testServer) dial(t testing.TB, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(ts.addr, opts)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.WaitGreeting(); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	return c
}

// login connects and logs in as testUser.
func (ts *testServer) login(t testing.TB, opts *imapclient.Options) *imapclient.Client {
	t.Helper()
	c := ts.dial(t, opts)
	if err := c.Login(testUser, testPass).Wait(); err != nil {
		t.Fatalf("LOGIN: %v", err)
	}
	return c
}

// sample reads testdata/imap/name with CRLF line endings.
func sample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "imap", name))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
}

// sampleNames is the order selectSamples appends in: UIDs 1..4.
var sampleNames = []string{"plain.eml", "multipart.eml", "8bit.eml", "nested.eml"}

// sampleDates are the internal dates of the samples.
var sampleDates = []time.Time{
	time.Date(2024, 1, 1, 12, 0, 0, 0, time.UTC),
	time.Date(2024, 1, 2, 12, 0, 0, 0, time.UTC),
	time.Date(2024, 1, 3, 12, 0, 0, 0, time.UTC),
	time.Date(2024, 1, 4, 12, 0, 0, 0, time.UTC),
}

// appendSamples stores the four samples in INBOX through the store (as
// delivery or another client would) and returns their bodies.
func (ts *testServer) appendSamples(t testing.TB) [][]byte {
	t.Helper()
	var out [][]byte
	for i, name := range sampleNames {
		body := sample(t, name)
		if _, _, err := ts.boxes.Append(testUser, "INBOX", bytes.NewReader(body), sampleDates[i], nil); err != nil {
			t.Fatalf("Append %s: %v", name, err)
		}
		out = append(out, body)
	}
	return out
}

// appendN stores n small messages in mailbox name; message i (from 1) has
// subject "message i".
func (ts *testServer) appendN(t testing.TB, name string, n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		body := fmt.Sprintf("From: x@example.net\r\nSubject: message %d\r\n\r\nbody %d\r\n", i, i)
		if _, _, err := ts.boxes.Append(testUser, name, strings.NewReader(body), time.Now(), nil); err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
}

// deliver files body in the INBOX the way SMTP final delivery does: one
// update of the store that marks the recipient delivered and files the
// message, which tells the sessions.
func (ts *testServer) deliver(t testing.TB, body []byte) {
	t.Helper()
	if err := testkit.Deliver(ts.store, body, time.Now(), testUser); err != nil {
		t.Fatalf("deliver: %v", err)
	}
}

// selectSamples logs in, fills INBOX with the samples and selects it.
func (ts *testServer) selectSamples(t testing.TB, opts *imapclient.Options) (*imapclient.Client, [][]byte) {
	t.Helper()
	bodies := ts.appendSamples(t)
	c := ts.login(t, opts)
	data, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	if data.NumMessages != uint32(len(bodies)) {
		t.Fatalf("SELECT: EXISTS %d, want %d", data.NumMessages, len(bodies))
	}
	return c, bodies
}

// rawConn speaks IMAP line by line, for assertions on the exact responses.
type rawConn struct {
	t   testing.TB
	c   net.Conn
	r   *bufio.Reader
	n   int
	Hi  string // greeting
	buf []string
}

func dialRaw(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return newRaw(t, c)
}

func newRaw(t testing.TB, c net.Conn) *rawConn {
	t.Helper()
	t.Cleanup(func() { c.Close() })
	rc := &rawConn{t: t, c: c, r: bufio.NewReader(c)}
	rc.Hi = rc.readResp()
	return rc
}

var literalRE = regexp.MustCompile(`~?\{(\d+)\+?\}$`)

// readResp reads one response, with any literals inlined.
func (rc *rawConn) readResp() string {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(ioWait))
	var sb strings.Builder
	for {
		line, err := rc.r.ReadString('\n')
		if err != nil {
			rc.t.Fatalf("read: %v (so far %q)", err, sb.String()+line)
		}
		line = strings.TrimSuffix(line, "\r\n")
		sb.WriteString(line)
		m := literalRE.FindStringSubmatch(line)
		if m == nil {
			return sb.String()
		}
		n, _ := strconv.Atoi(m[1])
		lit := make([]byte, n)
		if _, err := io.ReadFull(rc.r, lit); err != nil {
			rc.t.Fatalf("read literal: %v", err)
		}
		sb.Write([]byte("\r\n"))
		sb.Write(lit)
	}
}

// send writes a raw line (CRLF added).
func (rc *rawConn) send(line string) {
	rc.t.Helper()
	rc.c.SetWriteDeadline(time.Now().Add(ioWait))
	if _, err := rc.c.Write([]byte(line + "\r\n")); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

// run sends a tagged command and returns the untagged responses and the
// tagged status ("OK ...", "NO ...", "BAD ...").
func (rc *rawConn) run(cmd string) (untagged []string, status string) {
	rc.t.Helper()
	rc.n++
	tag := fmt.Sprintf("T%d", rc.n)
	rc.send(tag + " " + cmd)
	return rc.wait(tag)
}

func (rc *rawConn) wait(tag string) (untagged []string, status string) {
	rc.t.Helper()
	for {
		resp := rc.readResp()
		if rest, ok := strings.CutPrefix(resp, tag+" "); ok {
			return untagged, rest
		}
		untagged = append(untagged, resp)
	}
}

// ok runs cmd and fails the test unless it answers OK.
func (rc *rawConn) ok(cmd string) []string {
	rc.t.Helper()
	u, st := rc.run(cmd)
	if !strings.HasPrefix(st, "OK") {
		rc.t.Fatalf("%s: %s (untagged %q)", cmd, st, u)
	}
	return u
}

// appendLit APPENDs body with a LITERAL+ literal; args go between the
// mailbox and the literal (flags, date).
func (rc *rawConn) appendLit(mbox, args string, body []byte) (untagged []string, status string) {
	rc.t.Helper()
	rc.n++
	tag := fmt.Sprintf("T%d", rc.n)
	if args != "" {
		args += " "
	}
	rc.c.SetWriteDeadline(time.Now().Add(ioWait))
	fmt.Fprintf(rc.c, "%s APPEND %s %s{%d+}\r\n", tag, mbox, args, len(body))
	rc.c.Write(body)
	rc.c.Write([]byte("\r\n"))
	return rc.wait(tag)
}

func rawLogin(t testing.TB, addr string) *rawConn {
	t.Helper()
	rc := dialRaw(t, addr)
	rc.ok("LOGIN " + testUser + " " + testPass)
	return rc
}

// find returns the responses containing all of subs.
func find(resps []string, subs ...string) []string {
	var out []string
	for _, r := range resps {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(r, s)
		}
		if all {
			out = append(out, r)
		}
	}
	return out
}

// updates collects the unsolicited data an imapclient receives.
type updates struct {
	mu       sync.Mutex
	exists   []uint32
	expunges []uint32
	flags    map[uint32][]imap.Flag // by sequence number
	signal   chan struct{}
}

func newUpdates() *updates {
	return &updates{flags: map[uint32][]imap.Flag{}, signal: make(chan struct{}, 100)}
}

func (u *updates) handler() *imapclient.UnilateralDataHandler {
	notify := func() {
		select {
		case u.signal <- struct{}{}:
		default:
		}
	}
	return &imapclient.UnilateralDataHandler{
		Expunge: func(seq uint32) {
			u.mu.Lock()
			u.expunges = append(u.expunges, seq)
			u.mu.Unlock()
			notify()
		},
		Mailbox: func(d *imapclient.UnilateralDataMailbox) {
			if d.NumMessages != nil {
				u.mu.Lock()
				u.exists = append(u.exists, *d.NumMessages)
				u.mu.Unlock()
				notify()
			}
		},
		Fetch: func(msg *imapclient.FetchMessageData) {
			buf, err := msg.Collect()
			if err != nil {
				return
			}
			u.mu.Lock()
			if buf.Flags != nil {
				u.flags[buf.SeqNum] = buf.Flags
			}
			u.mu.Unlock()
			notify()
		},
	}
}

func (u *updates) snapshot() (exists, expunges []uint32, flags map[uint32][]imap.Flag) {
	u.mu.Lock()
	defer u.mu.Unlock()
	f := map[uint32][]imap.Flag{}
	for k, v := range u.flags {
		f[k] = v
	}
	return append([]uint32(nil), u.exists...), append([]uint32(nil), u.expunges...), f
}

func (u *updates) reset() {
	u.mu.Lock()
	u.exists, u.expunges, u.flags = nil, nil, map[uint32][]imap.Flag{}
	u.mu.Unlock()
}

// imapCode returns the response code of an IMAP error ("" if none).
func imapCode(err error) imap.ResponseCode {
	var ie *imap.Error
	if errors.As(err, &ie) {
		return ie.Code
	}
	return ""
}

func hasFlag(flags []imap.Flag, f imap.Flag) bool {
	for _, x := range flags {
		if strings.EqualFold(string(x), string(f)) {
			return true
		}
	}
	return false
}
