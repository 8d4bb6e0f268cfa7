package imapd_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/relaymail/relay/internal/connlimit"
	"github.com/relaymail/relay/mailbox/imapd"
)

// tlsServer is a server with STARTTLS whose loopback clients may log in
// in the clear, and the client side's TLS configuration.
func tlsServer(t *testing.T) (*testServer, *tls.Config) {
	t.Helper()
	srvTLS, cliTLS := selfSigned(t)
	return startServer(t, imapd.Config{TLS: srvTLS}), cliTLS
}

// readUntilTag reads responses up to the tagged one of tag and returns all
// of them; it fails the test on a read error.
func readUntilTag(t *testing.T, rc *rawConn, tag string) []string {
	t.Helper()
	var out []string
	for {
		r := rc.readResp()
		out = append(out, r)
		if strings.HasPrefix(r, tag+" ") {
			return out
		}
	}
}

// expectBye reads until the server closes the connection and returns what
// it sent; it fails unless an untagged BYE came last.
func expectBye(t *testing.T, c net.Conn, r *bufio.Reader) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(ioWait))
	b, err := io.ReadAll(r)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("connection still open %v later; got %q", ioWait, b)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\r\n"), "\r\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "* BYE") {
		t.Fatalf("last response before close %q, want * BYE (all: %q)", last, b)
	}
	return string(b)
}

// TestStartTLSDiscardsPipelinedPlainText guards against CVE-2011-0411
// style injection: a command sent in plain text in the same packet as
// STARTTLS (by a man in the middle) must never run inside the TLS session.
// Here the injected LOGIN is valid; if it ran, the client would be logged
// in over TLS without having sent a password there. Without the guard's
// discard, imapserver feeds the plain text into the TLS handshake, which
// then fails.
func TestStartTLSDiscardsPipelinedPlainText(t *testing.T) {
	t.Parallel()
	ts, cliTLS := tlsServer(t)
	rc := dialRaw(t, ts.addr)
	rc.c.Write([]byte("a STARTTLS\r\nb LOGIN " + testUser + " " + testPass + "\r\n"))
	if resp := rc.readResp(); !strings.HasPrefix(resp, "a OK") {
		t.Fatalf("STARTTLS: %q", resp)
	}
	if rc.r.Buffered() > 0 {
		t.Fatalf("plain text after the STARTTLS reply: %d bytes", rc.r.Buffered())
	}
	tc := tls.Client(rc.c, cliTLS)
	tc.SetDeadline(time.Now().Add(ioWait))
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake after a pipelined command: %v", err)
	}
	sec := &rawConn{t: t, c: tc, r: bufio.NewReader(tc)}
	sec.send("c CAPABILITY")
	resps := readUntilTag(t, sec, "c")
	for _, r := range resps {
		if strings.HasPrefix(r, "b ") {
			t.Errorf("the injected command was answered inside TLS: %q", r)
		}
		if strings.HasPrefix(r, "* OK") {
			t.Errorf("a second greeting after STARTTLS: %q", r)
		}
	}
	// RFC 9051 §6.2.1: no STARTTLS or LOGINDISABLED once TLS is up.
	if caps := capsOf(t, resps); strings.Contains(strings.Join(caps, " "), "STARTTLS") {
		t.Errorf("CAPABILITY after STARTTLS %q still offers STARTTLS", caps)
	}
	sec.n = 100
	if _, st := sec.run("SELECT INBOX"); strings.HasPrefix(st, "OK") {
		t.Fatalf("SELECT works after STARTTLS without a login inside TLS: the injected LOGIN ran")
	}
	sec.ok("LOGIN " + testUser + " " + testPass)
	sec.ok("SELECT INBOX")
}

// TestStartTLSSplitAcrossPackets: a STARTTLS line arriving in pieces is
// still done by the guard (and not by imapserver, after which the guard
// would see only cipher text and none of its limits would hold): after the
// handshake, bad commands still end the session.
func TestStartTLSSplitAcrossPackets(t *testing.T) {
	t.Parallel()
	srvTLS, cliTLS := selfSigned(t)
	ts := startServer(t, imapd.Config{})
	addr, read := ts.serveCounting(t, imapd.Config{TLS: srvTLS})
	rc := dialRaw(t, addr)
	greeted := read.Load()
	rc.c.Write([]byte("a STAR"))
	// The server has the first piece before the rest is sent.
	if !waitFor(ioWait, func() bool { return read.Load() == greeted+6 }) {
		t.Fatalf("the server read %d bytes of the first piece, want 6", read.Load()-greeted)
	}
	rc.c.Write([]byte("TTLS\r\n"))
	if resp := rc.readResp(); !strings.HasPrefix(resp, "a OK") {
		t.Fatalf("STARTTLS: %q", resp)
	}
	tc := tls.Client(rc.c, cliTLS)
	tc.SetDeadline(time.Now().Add(ioWait))
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	sec := &rawConn{t: t, c: tc, r: bufio.NewReader(tc)}
	sec.ok("LOGIN " + testUser + " " + testPass)
	for i := range 10 {
		sec.send(fmt.Sprintf("x%d FROBNICATE", i))
	}
	expectBye(t, tc, sec.r)
}

// TestBadCommandsEndSession guards the errors-per-session limit: ten
// tagged BAD replies in a row end the session with BYE, before and after
// login; a good command in between starts the count over.
func TestBadCommandsEndSession(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})

	rc := rawLogin(t, ts.addr)
	for i := range 9 {
		if _, st := rc.run(fmt.Sprintf("FROBNICATE %d", i)); !strings.HasPrefix(st, "BAD") {
			t.Fatalf("unknown command: %q, want BAD", st)
		}
	}
	rc.ok("NOOP")
	for range 9 {
		rc.run("FETCH")
	}
	rc.ok("NOOP") // still open: nine in a row only
	for i := range 10 {
		rc.send(fmt.Sprintf("y%d FETCH", i))
	}
	out := expectBye(t, rc.c, rc.r)
	if n := strings.Count(out, " BAD "); n != 10 {
		t.Errorf("%d BAD replies before BYE, want 10:\n%s", n, out)
	}

	// Before login: syntax errors (unknown commands already get BYE from
	// imapserver).
	pre := dialRaw(t, ts.addr)
	for i := range 10 {
		pre.send(fmt.Sprintf("z%d LOGIN", i))
	}
	expectBye(t, pre.c, pre.r)
}

// TestCommandTooLong guards the command size bound: a line longer than
// imapserver parses ends the session with BYE [LIMIT], instead of its rest
// running as further commands.
func TestCommandTooLong(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	rc := rawLogin(t, ts.addr)
	// The tail of the line would delete Trash if it ran as a command.
	line := "a SEARCH TEXT " + strings.Repeat("x", 50<<10) + "\r\nb DELETE Trash"
	go rc.c.Write([]byte(line + "\r\n"))
	out := expectBye(t, rc.c, rc.r)
	if !strings.Contains(out, "[LIMIT]") {
		t.Errorf("BYE without [LIMIT]: %q", out)
	}
	other := rawLogin(t, ts.addr)
	if _, st := other.run("STATUS Trash (MESSAGES)"); !strings.HasPrefix(st, "OK") {
		t.Errorf("Trash is gone: %q", st)
	}
}

// TestLiteralFloodBeforeLogin guards the bound on a command's small
// literals: imapserver parses a SEARCH before checking the state and
// counts no literal bytes, so one command sent before login could make it
// hold megabytes; the guard ends the session past 64 KiB.
func TestLiteralFloodBeforeLogin(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	rc := dialRaw(t, ts.addr)
	chunk := strings.Repeat("q", 4000)
	go func() {
		fmt.Fprint(rc.c, "a SEARCH")
		for range 100 {
			if _, err := fmt.Fprintf(rc.c, " TEXT {%d+}\r\n%s", len(chunk), chunk); err != nil {
				return
			}
		}
		fmt.Fprint(rc.c, "\r\n")
	}()
	out := expectBye(t, rc.c, rc.r)
	if !strings.Contains(out, "[LIMIT]") {
		t.Errorf("BYE without [LIMIT]: %q", out)
	}
}

// TestLargeLiteralBeforeLogin: before login no command takes a string
// over 4096 bytes, and imapserver sat 30 s on a synchronizing literal it
// did not ask for; the guard refuses one at once with BYE and a tagged
// BAD [TOOBIG] and closes, whether or not the literal is synchronizing.
// Literals within the bound still work.
func TestLargeLiteralBeforeLogin(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	for _, cmd := range []string{
		"a LOGIN {1000000000}",
		"a LOGIN " + testUser + " {4097}",
		"a LOGIN {99999999999999999999999}",
		"a LOGIN {5000+}",
		"a SEARCH TEXT {4097}",
	} {
		c := dialPlain(t, ts.addr)
		r := bufio.NewReader(c)
		if g, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(g, "* OK") {
			t.Fatalf("greeting: %q %v", g, err)
		}
		fmt.Fprintf(c, "%s\r\n", cmd)
		// Long enough that imapserver's 30 s would show as a timeout.
		c.SetReadDeadline(time.Now().Add(60 * time.Second))
		got, err := io.ReadAll(r)
		want := "* BYE [LIMIT] literal too large before login\r\na BAD [TOOBIG] literal too large before login\r\n"
		if string(got) != want || err != nil {
			t.Errorf("%s: %q %v, want %q and close", cmd, got, err, want)
		}
	}
	rc := dialRaw(t, ts.addr)
	rc.send(fmt.Sprintf("a LOGIN {%d}", len(testUser)))
	if resp := rc.readResp(); !strings.HasPrefix(resp, "+") {
		t.Fatalf("LOGIN {%d}: %q, want a continuation", len(testUser), resp)
	}
	rc.send(testUser + " " + testPass)
	if _, st := rc.wait("a"); !strings.HasPrefix(st, "OK") {
		t.Errorf("LOGIN with a literal user name: %q", st)
	}
}

// TestBareCR: outside a literal a CR comes only before LF (RFC 9051 §9).
// imapserver ended a line at a lone CR after a failed command and ran the
// rest as a new command, which the guard never saw begin: here a reply
// tagged "+00", which reads as a continuation request. A lone CR ends the
// session; inside a literal it is data.
func TestBareCR(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	for _, in := range []string{
		"a LOGIN " + testUser + " " + testPass + "\r\nx0 FROBNICATE\r+00 NOOP\r\n",
		"a NOOP\rb NOOP\r\n",
		"a LOGIN " + testUser + "\r" + testPass + "\r\n",
		"a NOOP\r\r\n",
	} {
		c := dialPlain(t, ts.addr)
		r := bufio.NewReader(c)
		c.Write([]byte(in))
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		got, err := io.ReadAll(r)
		if err != nil || !strings.HasSuffix(string(got), "* BYE [CLIENTBUG] CR without LF outside a literal\r\n") {
			t.Errorf("%q: %q %v, want BYE [CLIENTBUG] and close", in, got, err)
		}
		if strings.Contains(string(got), "\r\n+00") || strings.Contains(string(got), "b OK") {
			t.Errorf("%q: what follows the lone CR ran as a command: %q", in, got)
		}
	}
	rc := rawLogin(t, ts.addr)
	body := "Subject: cr\r\n\r\nx\ry\r"
	if _, st := rc.appendLit("INBOX", "", []byte(body)); !strings.HasPrefix(st, "OK") {
		t.Fatalf("APPEND of a message with lone CRs: %q", st)
	}
	rc.ok("SELECT INBOX")
	if u := rc.ok("FETCH 1 (BODY.PEEK[])"); len(u) != 1 || !strings.HasSuffix(u[0], body+")") {
		t.Errorf("FETCH of the message with lone CRs: %q", u)
	}
}

// TestRefusedNonSyncLiteralSkipped: the bytes of a non-synchronizing
// literal that imapserver refuses unread (over 4096 bytes without
// LITERAL+, RFC 7888 §4) are skipped, never run as commands.
func TestRefusedNonSyncLiteralSkipped(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	rc := rawLogin(t, ts.addr)
	payload := "b DELETE Trash\r\n" + strings.Repeat("z", 5000)
	u, st := rc.appendLit("INBOX", "", []byte(payload))
	if !strings.HasPrefix(st, "BAD") {
		t.Errorf("APPEND {%d+}: %q %q, want BAD", len(payload), u, st)
	}
	for _, r := range u {
		if strings.HasPrefix(r, "b ") {
			t.Errorf("literal data ran as a command: %q", r)
		}
	}
	rc.ok("NOOP")
	if _, st := rc.run("STATUS Trash (MESSAGES)"); !strings.HasPrefix(st, "OK") {
		t.Errorf("Trash is gone: %q", st)
	}
}

// TestAppendLimitBeforeLiteral: RFC 7889 §4 and RFC 9051 §6.3.12: an
// APPEND over APPENDLIMIT with a synchronizing literal is refused with NO
// [TOOBIG] instead of a continuation request, so the client never sends
// the message; a non-synchronizing one within LITERAL-'s 4096 bytes is
// refused too and its bytes skipped.
func TestAppendLimitBeforeLiteral(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{AppendLimit: 1000})
	rc := rawLogin(t, ts.addr)
	rc.send("a APPEND INBOX {1001}")
	if resp := rc.readResp(); !strings.HasPrefix(resp, "a NO [TOOBIG]") {
		t.Fatalf("APPEND {1001} over APPENDLIMIT=1000: %q, want a NO [TOOBIG] and no continuation", resp)
	}
	rc.send("b APPEND INBOX {1000}")
	if resp := rc.readResp(); !strings.HasPrefix(resp, "+") {
		t.Fatalf("APPEND {1000} at APPENDLIMIT=1000: %q, want a continuation", resp)
	}
	body := "Subject: x\r\n\r\n" + strings.Repeat("y", 1000-len("Subject: x\r\n\r\n"))
	rc.c.Write([]byte(body + "\r\n"))
	if _, st := rc.wait("b"); !strings.HasPrefix(st, "OK") {
		t.Fatalf("APPEND at the limit: %q", st)
	}
	_, st := rc.appendLit("INBOX", "", []byte("c DELETE Trash\r\n"+strings.Repeat("w", 2000)))
	if !strings.HasPrefix(st, "NO [TOOBIG]") {
		t.Errorf("APPEND {2016+}: %q, want NO [TOOBIG]", st)
	}
	if n := respNum(rc.ok("STATUS Trash (MESSAGES)"), `MESSAGES (\d+)`); n != 0 {
		t.Errorf("Trash MESSAGES %d", n)
	}
}

// TestTagWithPlus: RFC 9051 §9 tags have no "+"; a reply tagged "+"
// would read as a continuation request, so such a command ends the
// session.
func TestTagWithPlus(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	rc := dialRaw(t, ts.addr)
	rc.send("+ NOOP")
	expectBye(t, rc.c, rc.r)
}

// TestPipelinedCommands: the guard hands on one line at a time without
// losing or reordering pipelined commands and literals.
func TestPipelinedCommands(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	rc := rawLogin(t, ts.addr)
	var b strings.Builder
	for i := range 50 {
		fmt.Fprintf(&b, "p%d NOOP\r\n", i)
		fmt.Fprintf(&b, "q%d STATUS {5+}\r\nINBOX (MESSAGES)\r\n", i)
	}
	msg := "Subject: p\r\n\r\nx\r\n"
	fmt.Fprintf(&b, "r APPEND INBOX {%d+}\r\n%s\r\nz NOOP\r\n", len(msg), msg)
	rc.c.Write([]byte(b.String()))
	for i := range 50 {
		if _, st := rc.wait(fmt.Sprintf("p%d", i)); !strings.HasPrefix(st, "OK") {
			t.Fatalf("p%d: %q", i, st)
		}
		if _, st := rc.wait(fmt.Sprintf("q%d", i)); !strings.HasPrefix(st, "OK") {
			t.Fatalf("q%d: %q", i, st)
		}
	}
	if _, st := rc.wait("r"); !strings.HasPrefix(st, "OK") {
		t.Fatalf("APPEND: %q", st)
	}
	if _, st := rc.wait("z"); !strings.HasPrefix(st, "OK") {
		t.Fatalf("NOOP after APPEND: %q", st)
	}
}

// TestMailboxNameControls: names with control characters (CR and LF
// encoded in modified UTF-7, RFC 3501 §5.1.3) are refused, and no reply
// text carries a CR or LF that would split it into forged responses.
func TestMailboxNameControls(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	rc := rawLogin(t, ts.addr)
	name := `"x&AA0ACg-* BYE forged"` // x CR LF * BYE forged
	u, st := rc.run("CREATE " + name)
	if !strings.HasPrefix(st, "NO [CANNOT]") || len(u) != 0 {
		t.Errorf("CREATE with CRLF in the name: %q %q, want NO [CANNOT] alone", u, st)
	}
	u, st = rc.run("RENAME Junk " + name)
	if !strings.HasPrefix(st, "NO [CANNOT]") || len(u) != 0 {
		t.Errorf("RENAME to a name with CRLF: %q %q, want NO [CANNOT] alone", u, st)
	}
	u, st = rc.run("SELECT " + name)
	if !strings.HasPrefix(st, "NO") || len(u) != 0 {
		t.Errorf("SELECT of a name with CRLF: %q %q, want one NO line", u, st)
	}
	rc.ok("NOOP")
}

// TestRestOfLineAfterFailedLiteral: imapserver answers a command whose
// literal argument does not decode (invalid modified UTF-7) without
// reading the rest of its line; the guard skips that rest instead of
// letting it be taken for a command (which made imapserver hang up).
func TestRestOfLineAfterFailedLiteral(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	rc := rawLogin(t, ts.addr)
	name := "x\r\ny"
	rc.send(fmt.Sprintf("a CREATE {%d+}", len(name)))
	rc.c.Write([]byte(name + "\r\n"))
	if _, st := rc.wait("a"); !strings.HasPrefix(st, "NO") && !strings.HasPrefix(st, "BAD") {
		t.Errorf("CREATE of a name that is not modified UTF-7: %q", st)
	}
	rc.ok("NOOP")
}

// TestStartTLSRefusesOldVersions: STARTTLS uses the configuration from
// internal/tlsconf, whose floor is TLS 1.2 (RFC 8996 deprecates 1.0 and
// 1.1, RFC 9051 §11.1 asks for 1.2 at least): a TLS 1.1 client fails
// the handshake.
func TestStartTLSRefusesOldVersions(t *testing.T) {
	t.Parallel()
	ts, cliTLS := tlsServer(t)
	rc := dialRaw(t, ts.addr)
	if _, st := rc.run("STARTTLS"); !strings.HasPrefix(st, "OK") {
		t.Fatalf("STARTTLS: %q", st)
	}
	old := cliTLS.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	tc := tls.Client(rc.c, old)
	tc.SetDeadline(time.Now().Add(ioWait))
	if err := tc.Handshake(); err == nil {
		t.Fatalf("TLS %x handshake succeeded", tc.ConnectionState().Version)
	}
}

// Past the connection limits a client is greeted with BYE [UNAVAILABLE]
// (RFC 9051 §7.1.5, RFC 5530) and the connection closes; one limiter
// counts the plain and the TLS listener together, and a slot is free
// again as soon as a session ends.
func TestConnectionLimit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name         string
		total, perIP int
		want         string
	}{
		{"total", 3, 0, "* BYE [UNAVAILABLE] too many connections, try again later"},
		{"per address", 0, 3, "* BYE [UNAVAILABLE] too many connections from your address, try again later"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srvTLS, cliTLS := selfSigned(t)
			conns := connlimit.New(tc.total, tc.perIP)
			ts := startServer(t, imapd.Config{Conns: conns})
			// The IMAPS listener, sharing the limiter.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			// No trusted network: only a connection seen as TLS,
			// under connlimit's wrapper, may log in.
			tlsSrv := imapd.New(imapd.Config{Conns: conns, PlainAuthNets: []netip.Prefix{}}, ts.boxes)
			served := make(chan error, 1)
			go func() { served <- tlsSrv.Serve(tls.NewListener(ln, srvTLS)) }()
			t.Cleanup(func() { tlsSrv.Close(); <-served })
			dialTLS := func() net.Conn {
				c, err := tls.Dial("tcp", ln.Addr().String(), cliTLS)
				if err != nil {
					t.Fatalf("IMAPS dial: %v", err)
				}
				t.Cleanup(func() { c.Close() })
				return c
			}

			first := rawLogin(t, ts.addr)
			dialRaw(t, ts.addr)
			if rc := newRaw(t, dialTLS()); !strings.HasPrefix(rc.Hi, "* OK") || strings.Contains(rc.Hi, "LOGINDISABLED") {
				t.Fatalf("third connection (IMAPS): %q, want OK with login allowed", rc.Hi)
			}
			for name, c := range map[string]net.Conn{"IMAP": dialPlain(t, ts.addr), "IMAPS": dialTLS()} {
				got := expectBye(t, c, bufio.NewReader(c))
				if got != tc.want+"\r\n" {
					t.Errorf("%s connection past the limit: %q, want %q", name, got, tc.want)
				}
			}
			// LOGOUT: the server closes the connection, and with it
			// gives back its slot, before the client sees the end.
			first.ok("LOGOUT")
			first.c.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.ReadAll(first.r); err != nil {
				t.Fatalf("after LOGOUT: %v", err)
			}
			if rc := newRaw(t, dialTLS()); !strings.HasPrefix(rc.Hi, "* OK") {
				t.Errorf("after a session ended, a new one is greeted %q", rc.Hi)
			}
		})
	}
}

// dialPlain connects to addr without reading anything.
func dialPlain(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
