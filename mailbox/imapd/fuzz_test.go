package imapd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	storebadger "github.com/relaymail/relay/internal/store/badger"
	"github.com/relaymail/relay/mailbox"

	"github.com/relaymail/relay/mailbox/imapd"
)

// fuzzSeedDir holds the FuzzIMAPSession seeds at the module root, in the
// "go test fuzz v1" format. go test reads testdata/fuzz only next to the
// package, so they are added with f.Add; a crasher that go test -fuzz
// writes to mailbox/imapd/testdata/fuzz/FuzzIMAPSession belongs there.
const fuzzSeedDir = "../../testdata/fuzz/FuzzIMAPSession"

// FuzzIMAPSession feeds the input as the client side of one connection,
// sent at once and then half-closed, to a server on a real Badger whose
// INBOX holds the sample messages, and reads everything until the server
// hangs up. The server must not panic (imapserver recovers and logs it),
// must answer only with well-formed responses (RFC 9051 §7: untagged,
// continuation or tagged with a tag the client sent, CRLF after every
// line, literals as announced), and must close the connection once the
// client has finished.
//
// Each input starts from the same state: the same mailbox records, UIDs
// and flags (the store's keys are put back as they were), a fresh server
// (and so an empty SEARCH field cache), and input that arrives in the
// same pieces. An input that behaves differently each time it runs shows
// the fuzzer coverage that its minimiser then chases for a minute; with a
// growing mailbox and a loopback socket the fuzzer ran about one input a
// second. The database is opened once per fuzzing process.
func FuzzIMAPSession(f *testing.F) {
	for _, seed := range loadByteSeeds(f, fuzzSeedDir) {
		f.Add(seed)
	}
	f.Add([]byte("a LOGIN " + testUser + " " + testPass + "\r\nb SELECT INBOX\r\nc FETCH 1:* (BODYSTRUCTURE)\r\n"))
	rec := &panicRecorder{}
	srvTLS, _ := selfSigned(f)
	// No fsync: the inputs run by the thousand and survive no crash.
	ts := startServerOpts(f, imapd.Config{TLS: srvTLS, AppendLimit: 64 << 10, Log: slog.New(rec)}, storebadger.Options{Sync: storebadger.SyncNone})
	for i, body := range fuzzSamples() {
		if _, _, err := ts.boxes.Append(testUser, "INBOX", bytes.NewReader(body), sampleDates[i], nil); err != nil {
			f.Fatal(err)
		}
	}
	start := saveMailboxes(f, ts.db)
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 64<<10 {
			t.Skip("input too large")
		}
		if err := start.restore(ts.db); err != nil {
			t.Fatalf("restore the mailboxes: %v", err)
		}
		out, err := pipeSession(ts, in)
		if p := rec.take(); p != "" {
			t.Fatalf("server panicked: %s\nresponses:\n%q", p, out)
		}
		if err != nil {
			t.Fatalf("%v\nresponses so far:\n%q", err, out)
		}
		if err := checkResponses(out, in); err != nil {
			t.Fatalf("%v\nresponses:\n%q", err, out)
		}
	})
}

// fuzzLogin is the password check of the fuzzed server: testUser's
// password and nothing else, as the store's check, without its bcrypt.
func fuzzLogin(user, password string) (string, error) {
	if mailbox.NormalizeUser(user) == testUser && password == testPass {
		return testUser, nil
	}
	return "", mailbox.ErrAuth
}

// mailboxPrefix is where the Badger engine keeps the mailbox store: every
// account, mailbox, message, body and counter.
const mailboxPrefix = "m/"

// mailboxState is the mailbox store's keys and values at one moment, and
// how to put them back.
type mailboxState struct {
	kv map[string][]byte
	// restores counts restore calls; every rebuildEvery-th empties the
	// database first.
	restores int
}

// rebuildEvery bounds the versions of rewritten keys the database holds.
// Each input rewrites a few of the same keys (the INBOX record, flags),
// Badger keeps every version until its tables are compacted, and reading a
// prefix steps over all of them: after 20,000 inputs a restore took 15 ms
// and a session 4 ms. Emptying the database (DropAll) and writing the
// state afresh takes about 10 ms.
const rebuildEvery = 250

func saveMailboxes(tb testing.TB, db *storebadger.DB) *mailboxState {
	tb.Helper()
	st := &mailboxState{kv: map[string][]byte{}}
	err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(mailboxPrefix)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			st.kv[string(it.Item().Key())] = v
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("save the mailboxes: %v", err)
	}
	return st
}

// restore puts the mailbox store back as it was when st was saved, in one
// transaction that writes only the keys that changed.
func (st *mailboxState) restore(db *storebadger.DB) error {
	st.restores++
	if st.restores%rebuildEvery == 0 {
		if err := db.DropAll(); err != nil {
			return err
		}
	}
	return db.Update(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(mailboxPrefix)})
		var gone [][]byte
		same := map[string]bool{}
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			want, ok := st.kv[string(item.Key())]
			if !ok {
				gone = append(gone, item.KeyCopy(nil))
				continue
			}
			err := item.Value(func(v []byte) error {
				same[string(item.Key())] = bytes.Equal(v, want)
				return nil
			})
			if err != nil {
				it.Close()
				return err
			}
		}
		it.Close()
		for _, k := range gone {
			if err := txn.Delete(k); err != nil {
				return err
			}
		}
		for k, v := range st.kv {
			if !same[k] {
				if err := txn.Set([]byte(k), v); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

var fuzzSamples = sync.OnceValue(func() [][]byte {
	var out [][]byte
	for _, n := range sampleNames {
		b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "imap", n))
		if err != nil {
			panic(err)
		}
		out = append(out, bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n")))
	}
	return out
})

// pipeSession serves one connection whose client sends in and half-closes
// on a fresh server over ts's store, and returns all the server wrote
// until it closed the connection.
func pipeSession(ts *testServer, in []byte) ([]byte, error) {
	srv := imapd.New(ts.cfg, ts.boxes)
	srv.SetAuthenticate(fuzzLogin)
	c := newClientConn(in)
	ln := &oneConnListener{c: c, done: make(chan struct{})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		srv.Close()
		<-served
	}()
	select {
	case <-c.closed:
		return c.output(), nil
	case <-time.After(20 * time.Second):
		return c.output(), fmt.Errorf("server did not close the connection within 20 s")
	}
}

// clientConn is the server's end of a connection whose client sent all
// of its input at once and then half-closed it: reads take the input, then
// see the end, and writes are kept. Unlike a socket it hands the server
// the input in the same pieces every time.
type clientConn struct {
	mu     sync.Mutex
	in     *bytes.Reader
	out    bytes.Buffer
	closed chan struct{}
	once   sync.Once
}

func newClientConn(in []byte) *clientConn {
	return &clientConn{in: bytes.NewReader(in), closed: make(chan struct{})}
}

func (c *clientConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	return c.in.Read(p)
}

func (c *clientConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.closed:
		return 0, net.ErrClosed
	default:
	}
	return c.out.Write(p)
}

func (c *clientConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

func (c *clientConn) output() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes())
}

var loopback = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 143}

func (c *clientConn) LocalAddr() net.Addr              { return loopback }
func (c *clientConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: loopback.IP, Port: 50143} }
func (c *clientConn) SetDeadline(time.Time) error      { return nil }
func (c *clientConn) SetReadDeadline(time.Time) error  { return nil }
func (c *clientConn) SetWriteDeadline(time.Time) error { return nil }

// oneConnListener accepts c once, then nothing until it is closed.
type oneConnListener struct {
	c    net.Conn
	once sync.Once
	done chan struct{}
	stop sync.Once
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	var c net.Conn
	l.once.Do(func() { c = l.c })
	if c != nil {
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.stop.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return loopback }

// checkResponses parses the server's side of a session (RFC 9051 §7):
// each line is untagged ("* "), a continuation request ("+") or tagged
// with a tag from the input, ends in CRLF and has no other CR or LF; a
// line ending in {n} (outside status text) is followed by n bytes of
// literal. The first line is the greeting.
func checkResponses(out, in []byte) error {
	if len(out) == 0 {
		return errors.New("no greeting")
	}
	first := true
	for len(out) > 0 {
		var line []byte
		line, out = readLine(out)
		if !bytes.HasSuffix(line, []byte("\r\n")) {
			return fmt.Errorf("response not ended by CRLF: %q", line)
		}
		text := line[:len(line)-2]
		if bytes.ContainsAny(text, "\r\n") {
			return fmt.Errorf("bare CR or LF in response %q", line)
		}
		if first {
			if !bytes.HasPrefix(text, []byte("* OK ")) && !bytes.HasPrefix(text, []byte("* BYE ")) {
				return fmt.Errorf("greeting %q", text)
			}
			first = false
		}
		kind, err := lineKind(text, in)
		if err != nil {
			return err
		}
		// Literals continue the line after their data.
		for kind == "data" {
			n, ok := literalSize(text)
			if !ok {
				break
			}
			if int64(len(out)) < n {
				return fmt.Errorf("literal of %d bytes cut off after %d", n, len(out))
			}
			out = out[n:]
			line, out = readLine(out)
			if !bytes.HasSuffix(line, []byte("\r\n")) {
				return fmt.Errorf("line after a literal not ended by CRLF: %q", line)
			}
			text = line[:len(line)-2]
		}
	}
	return nil
}

func readLine(b []byte) (line, rest []byte) {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		return b[:i+1], b[i+1:]
	}
	return b, nil
}

var statuses = []string{"OK", "NO", "BAD", "BYE", "PREAUTH"}

// lineKind classifies a response line: "status" (untagged or tagged
// status, whose text runs to the end), "cont" or "data".
func lineKind(text, in []byte) (string, error) {
	if bytes.HasPrefix(text, []byte("+")) {
		if len(text) > 1 && text[1] != ' ' {
			return "", fmt.Errorf("continuation request without SP: %q", text)
		}
		return "cont", nil
	}
	tag, rest, ok := bytes.Cut(text, []byte(" "))
	if !ok || len(tag) == 0 {
		return "", fmt.Errorf("response without tag: %q", text)
	}
	word, _, _ := bytes.Cut(rest, []byte(" "))
	isStatus := slices.Contains(statuses, string(word))
	if string(tag) == "*" {
		if isStatus {
			return "status", nil
		}
		return "data", nil
	}
	if !isStatus || string(word) == "PREAUTH" || string(word) == "BYE" {
		return "", fmt.Errorf("tagged response without OK, NO or BAD: %q", text)
	}
	if !bytes.Contains(in, tag) {
		return "", fmt.Errorf("tag %q was never sent", tag)
	}
	return "status", nil
}

// literalSize recognises "{n}" or "~{n}" at the end of a data line.
func literalSize(text []byte) (int64, bool) {
	if !bytes.HasSuffix(text, []byte("}")) {
		return 0, false
	}
	i := bytes.LastIndexByte(text, '{')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(text[i+1:len(text)-1]), 10, 64)
	return n, err == nil && n >= 0
}

// panicRecorder is a slog handler that keeps what imapserver logs about
// recovered panics.
type panicRecorder struct {
	mu   sync.Mutex
	seen []string
}

func (p *panicRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (p *panicRecorder) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if v := a.Value.String(); strings.Contains(v, "panic") {
			p.mu.Lock()
			p.seen = append(p.seen, v)
			p.mu.Unlock()
		}
		return true
	})
	return nil
}

func (p *panicRecorder) WithAttrs([]slog.Attr) slog.Handler { return p }
func (p *panicRecorder) WithGroup(string) slog.Handler      { return p }

func (p *panicRecorder) take() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := strings.Join(p.seen, "\n")
	p.seen = nil
	return s
}

// loadByteSeeds reads a directory of single-[]byte corpus files ("go test
// fuzz v1", then one []byte(...) line).
func loadByteSeeds(tb testing.TB, dir string) [][]byte {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		tb.Fatal(err)
	}
	var seeds [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) != 2 || lines[0] != "go test fuzz v1" {
			tb.Fatalf("%s: want a header and one []byte(...) line", f)
		}
		v, ok1 := strings.CutPrefix(lines[1], "[]byte(")
		v, ok2 := strings.CutSuffix(v, ")")
		s, err := strconv.Unquote(v)
		if !ok1 || !ok2 || err != nil {
			tb.Fatalf("%s: bad value line", f)
		}
		seeds = append(seeds, []byte(s))
	}
	if len(seeds) == 0 {
		tb.Fatalf("no seeds in %s", dir)
	}
	return seeds
}

// TestCheckResponses: the response checker of FuzzIMAPSession accepts a
// well-formed session and catches the faults it is there for.
func TestCheckResponses(t *testing.T) {
	t.Parallel()
	in := []byte("a1 FETCH 1 BODY[]\r\n")
	good := "* OK [CAPABILITY IMAP4rev1] ready\r\n* 1 FETCH (BODY[] {5}\r\nab\r\nc)\r\n+ idling\r\na1 OK done {3}\r\n"
	if err := checkResponses([]byte(good), in); err != nil {
		t.Errorf("good session: %v", err)
	}
	for _, bad := range []string{
		"",
		"* OK hi\r\nzz OK invented tag\r\n",
		"* OK hi\r\n* 1 FETCH (BODY[] {50}\r\nshort)\r\n",
		"* OK hi\r\na1 NO bare\rcr\r\n",
		"* OK hi\r\na1 OK no crlf",
		"a1 OK no greeting\r\n",
		"* OK hi\r\na1 MAYBE\r\n",
	} {
		if err := checkResponses([]byte(bad), in); err == nil {
			t.Errorf("checkResponses(%q) passed", bad)
		}
	}
}

// The fuzzing harness gives each input the same start: after an input
// that deletes, expunges, appends, claims \Recent and selects, restoring
// the saved state makes a reading session answer byte for byte as it did
// before.
func TestFuzzHarnessRestores(t *testing.T) {
	t.Parallel()
	ts := startServerOpts(t, imapd.Config{}, storebadger.Options{Sync: storebadger.SyncNone})
	ts.appendSamples(t)
	start := saveMailboxes(t, ts.db)
	login := "a LOGIN " + testUser + " " + testPass + "\r\n"
	read := []byte(login + "b STATUS Trash (MESSAGES UIDNEXT UIDVALIDITY)\r\nc SELECT INBOX\r\nd FETCH 1:* (UID FLAGS RFC822.SIZE)\r\ne LIST \"\" *\r\nf SEARCH SUBJECT sample\r\ng SEARCH SUBJECT sample\r\n")
	write := []byte(login + "b DELETE Trash\r\nc SELECT INBOX\r\nd STORE 1 +FLAGS (\\Deleted)\r\ne EXPUNGE\r\nf APPEND INBOX {3+}\r\nx\r\n\r\ng CREATE New/Sub\r\n")
	session := func(in []byte) string {
		t.Helper()
		out, err := pipeSession(ts, in)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkResponses(out, in); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return string(out)
	}
	before := session(read)
	if !strings.Contains(before, "* 4 EXISTS") || !strings.Contains(before, "g OK") {
		t.Fatalf("reading session:\n%s", before)
	}
	if changed := session(write); !strings.Contains(changed, "f OK") || !strings.Contains(changed, "g OK") {
		t.Fatalf("writing session:\n%s", changed)
	}
	if err := start.restore(ts.db); err != nil {
		t.Fatal(err)
	}
	if after := session(read); after != before {
		t.Errorf("after restoring, the reading session answers\n%s\nwhere it answered before\n%s", after, before)
	}
}
