package imapd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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

	storebadger "github.com/relaymail/relay/internal/store/badger"

	"golang.org/x/crypto/bcrypt"

	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/mailbox/imapd"
)

// fuzzSeedDir holds the FuzzIMAPSession seeds at the module root, in the
// "go test fuzz v1" format. go test reads testdata/fuzz only next to the
// package, so they are added with f.Add; a crasher that go test -fuzz
// writes to mailbox/imapd/testdata/fuzz/FuzzIMAPSession belongs there.
const fuzzSeedDir = "../../testdata/fuzz/FuzzIMAPSession"

// FuzzIMAPSession feeds the input as the raw client side of one loopback
// connection to a server on a real Badger in a temp dir, whose INBOX holds
// the sample messages, and reads everything until the server hangs up.
// The server must not panic (imapserver recovers and logs it), must answer
// only with well-formed responses (RFC 9051 §7: untagged, continuation or
// tagged with a tag the client sent, CRLF after every line, literals as
// announced), and must close the connection soon after the client has
// finished. Each input starts from the same mailbox state.
func FuzzIMAPSession(f *testing.F) {
	for _, seed := range loadByteSeeds(f, fuzzSeedDir) {
		f.Add(seed)
	}
	f.Add([]byte("a LOGIN " + testUser + " " + testPass + "\r\nb SELECT INBOX\r\nc FETCH 1:* (BODYSTRUCTURE)\r\n"))
	rec := &panicRecorder{}
	srvTLS, _ := selfSigned(f)
	// No fsync: the inputs run by the thousand and survive no crash.
	ts := startServerOpts(f, imapd.Config{TLS: srvTLS, AppendLimit: 64 << 10, Log: slog.New(rec)}, storebadger.Options{Sync: storebadger.SyncNone})
	cheapPassword(f, ts)
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 64<<10 {
			t.Skip("input too large")
		}
		if err := resetMailboxes(ts); err != nil {
			t.Fatalf("reset: %v", err)
		}
		out, err := imapSession(ts.addr, in)
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

// cheapPassword gives testUser a bcrypt hash of the lowest cost, so that
// a LOGIN costs the fuzzer microseconds rather than the default cost's
// 50 ms. It replaces the account's hash in the store and checks that the
// login works.
func cheapPassword(tb testing.TB, ts *testServer) {
	tb.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte(testPass), bcrypt.MinCost)
	if err != nil {
		tb.Fatal(err)
	}
	err = ts.store.SetPasswordHash(context.Background(), testUser, hash)
	if err != nil {
		tb.Fatalf("cheap password: %v", err)
	}
	if _, err := ts.boxes.Authenticate(testUser, testPass); err != nil {
		tb.Fatalf("login after the cheap password: %v", err)
	}
}

// resetMailboxes puts back the default mailboxes, empty, and the samples
// in INBOX.
func resetMailboxes(ts *testServer) error {
	mbs, err := ts.boxes.Mailboxes(testUser)
	if err != nil {
		return err
	}
	slices.SortFunc(mbs, func(a, b *mailbox.Mailbox) int { return len(b.Name) - len(a.Name) })
	for _, mb := range mbs {
		if mb.Name != "INBOX" {
			if err := ts.boxes.DeleteMailbox(testUser, mb.Name); err != nil {
				return err
			}
		}
	}
	for _, d := range mailbox.DefaultMailboxes {
		if d.Name == "INBOX" {
			continue
		}
		if _, err := ts.boxes.CreateMailbox(testUser, d.Name, d.SpecialUse); err != nil {
			return err
		}
	}
	inbox, err := ts.boxes.GetMailbox(testUser, "INBOX")
	if err != nil {
		return err
	}
	uids, err := ts.boxes.UIDs(inbox.ID)
	if err != nil {
		return err
	}
	if len(uids) > 0 {
		if _, err := ts.boxes.SetFlags(testUser, "INBOX", uids, mailbox.FlagsAdd, []string{`\Deleted`}, nil); err != nil {
			return err
		}
		if _, err := ts.boxes.Expunge(testUser, "INBOX", nil, nil); err != nil {
			return err
		}
	}
	for i, body := range fuzzSamples() {
		if _, _, err := ts.boxes.Append(testUser, "INBOX", bytes.NewReader(body), sampleDates[i], nil); err != nil {
			return err
		}
	}
	return nil
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

// imapSession sends in on a fresh connection, half-closes it and returns
// all the server wrote until it closed the connection.
func imapSession(addr string, in []byte) ([]byte, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	go func() {
		// The server may hang up first: ignore write errors. Responses
		// are read meanwhile, so neither side blocks.
		c.Write(in)
		c.(*net.TCPConn).CloseWrite()
	}()
	out, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return out, fmt.Errorf("server did not close the connection within 20 s")
	}
	// A reset (the server closed with input unread) ends it too.
	return out, nil
}

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
