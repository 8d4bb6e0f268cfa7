package smtpd_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relaymail/relay/internal/ratelimit"
	"github.com/relaymail/relay/internal/throttle"
)

// RFC 5321 §4.5.3.2 lets a server drop a client that stays silent too long;
// these tests use timeouts of a few hundred milliseconds and allow seconds
// for the disconnect, so they are not timing-sensitive.

// TestIdleClientDisconnected: a client that says nothing after the greeting,
// or nothing after EHLO, gets 421 4.4.2 and the connection closes.
func TestIdleClientDisconnected(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.CommandTimeout = 300 * time.Millisecond
	s := startServer(t, cfg)
	for _, afterEHLO := range []bool{false, true} {
		var rc *rawConn
		if afterEHLO {
			rc = s.rawHello(t)
		} else {
			rc = s.rawDial(t)
		}
		start := time.Now()
		lines := rc.wantClosed(5 * time.Second)
		if len(lines) == 0 || !strings.HasPrefix(lines[len(lines)-1], "421 4.4.2") {
			t.Errorf("afterEHLO=%v: idle client got %q before the close, want 421 4.4.2", afterEHLO, lines)
		}
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Errorf("afterEHLO=%v: closed after %v, before the 300ms timeout", afterEHLO, d)
		}
	}
}

// TestSlowCommandsKeepConnection: the command timeout is per command, so a
// client that answers within it may take longer than it in total.
func TestSlowCommandsKeepConnection(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.CommandTimeout = 2 * time.Second
	s := startServer(t, cfg)
	rc := s.rawHello(t)
	for range 3 {
		time.Sleep(time.Second) // well inside the timeout, longer than it in sum
		rc.expect("NOOP", "250 ")
	}
}

// trickleData starts a transaction on s, sends DATA and a few body bytes,
// then stops sending.
func trickleData(t *testing.T, s *testServer) *rawConn {
	t.Helper()
	rc := s.rawHello(t)
	rc.expect("MAIL FROM:<a@example.net>", "250 ")
	rc.expect("RCPT TO:<b@localhost>", "250 ")
	rc.expect("DATA", "354 ")
	rc.write("S")
	time.Sleep(100 * time.Millisecond)
	rc.write("u")
	return rc
}

// TestDataIdleTimeout: a client that stops sending in the middle of DATA
// gets 451 4.4.2 (temporary: the message may be sent again), nothing is
// queued, and go-smtp #196 is avoided by hanging up rather than reading the
// rest of the body as commands.
func TestDataIdleTimeout(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.CommandTimeout = 10 * time.Second
	cfg.DataIdleTimeout = 300 * time.Millisecond
	s := startServer(t, cfg)
	rc := trickleData(t, s)
	lines, err := rc.readReply(5 * time.Second)
	if err != nil {
		t.Fatalf("no reply to the stalled DATA: %v", err)
	}
	if got := lines[len(lines)-1]; !strings.HasPrefix(got, "451 4.4.2") {
		t.Fatalf("stalled DATA: got %q, want 451 4.4.2", got)
	}
	s.wantQueued(t, 0)
}

// TestDataIdleTimeoutCloses: after the 451 4.4.2 the connection closes
// (within a few seconds, far below the 10s command timeout).
func TestDataIdleTimeoutCloses(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.CommandTimeout = 10 * time.Second
	cfg.DataIdleTimeout = 300 * time.Millisecond
	s := startServer(t, cfg)
	rc := trickleData(t, s)
	lines := rc.wantClosed(5 * time.Second)
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "451 4.4.2") {
		t.Errorf("got %q before the close, want 451 4.4.2", lines)
	}
	s.wantQueued(t, 0)
}

// TestDataTimeoutTotal: DataTimeout bounds the whole transfer even when the
// client keeps sending a little more before each idle timeout.
func TestDataTimeoutTotal(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.CommandTimeout = 10 * time.Second
	cfg.DataIdleTimeout = 2 * time.Second
	cfg.DataTimeout = 600 * time.Millisecond
	s := startServer(t, cfg)
	rc := s.rawHello(t)
	rc.expect("MAIL FROM:<a@example.net>", "250 ")
	rc.expect("RCPT TO:<b@localhost>", "250 ")
	rc.expect("DATA", "354 ")
	start := time.Now()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, err := rc.c.Write([]byte("x")); err != nil {
				return
			}
		}
	}()
	lines, err := rc.readReply(5 * time.Second)
	close(stop)
	<-done
	if err != nil {
		t.Fatalf("no reply while trickling past DataTimeout: %v", err)
	}
	if got := lines[len(lines)-1]; !strings.HasPrefix(got, "451 4.4.2") {
		t.Fatalf("got %q, want 451 4.4.2", got)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("reply after %v: DataTimeout 600ms not enforced", d)
	}
	s.wantQueued(t, 0)
}

// TestBDATIdleTimeout: a client that stops in the middle of a BDAT chunk is
// treated like one that stops in DATA: a temporary 4xx reply, and the
// connection closes so that the rest of the chunk is never read as
// commands. Under STARTTLS too, and without an error in the log.
func TestBDATIdleTimeout(t *testing.T) {
	t.Parallel()
	for _, withTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", withTLS), func(t *testing.T) {
			t.Parallel()
			cfg := testConfig()
			if withTLS {
				cfg, _ = newAuthFixture(t).config(false)
			}
			cfg.CommandTimeout = 10 * time.Second
			cfg.DataIdleTimeout = 300 * time.Millisecond
			var errs panicRecorder
			s := startServerLog(t, cfg, slog.New(&errorRecorder{&errs}))
			rc := s.rawHello(t)
			if withTLS {
				rc = rc.startTLS()
			}
			rcpt := "b@localhost"
			if withTLS {
				rcpt = subUser // the fixture's accounts are the local users
			}
			rc.expect("MAIL FROM:<a@example.net>", "250 ")
			rc.expect("RCPT TO:<"+rcpt+">", "250 ")
			rc.write("BDAT 100 LAST\r\nSu")
			lines, err := rc.readReply(5 * time.Second)
			if err != nil {
				t.Fatalf("no reply to the stalled BDAT: %v", err)
			}
			s.wantQueued(t, 0)
			if got := lines[len(lines)-1]; !strings.HasPrefix(got, "451 4.4.2") {
				t.Fatalf("stalled BDAT: got %q, want 451 4.4.2", got)
			}
			if !rc.closed(5 * time.Second) {
				t.Errorf("connection still open after the timeout reply")
			}
			s.drain(t)
			if e := errs.take(); e != "" {
				t.Errorf("errors logged for a client timeout:\n%s", e)
			}
		})
	}
}

// errorRecorder keeps every error-level record, whatever it says.
type errorRecorder struct{ p *panicRecorder }

func (e *errorRecorder) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelError }

func (e *errorRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	e.p.mu.Lock()
	e.p.seen = append(e.p.seen, b.String())
	e.p.mu.Unlock()
	return nil
}

func (e *errorRecorder) WithAttrs([]slog.Attr) slog.Handler { return e }
func (e *errorRecorder) WithGroup(string) slog.Handler      { return e }

// startTLS upgrades rc with STARTTLS and says EHLO again.
func (rc *rawConn) startTLS() *rawConn {
	rc.t.Helper()
	if got := rc.cmd("STARTTLS"); !strings.HasPrefix(got, "220 ") {
		rc.t.Fatalf("STARTTLS: %q", got)
	}
	tc := tls.Client(rc.c, &tls.Config{InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	if err := tc.Handshake(); err != nil {
		rc.t.Fatalf("TLS handshake: %v", err)
	}
	tc.SetDeadline(time.Time{})
	tr := &rawConn{t: rc.t, c: tc, r: bufio.NewReader(tc)}
	tr.expect("EHLO client.test", "250 ")
	return tr
}

// TestBDATTimeoutSmuggling: the rest of a chunk that arrives after the
// chunk timed out is never run as commands: the connection is gone.
func TestBDATTimeoutSmuggling(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.CommandTimeout = 10 * time.Second
	cfg.DataIdleTimeout = 300 * time.Millisecond
	s := startServer(t, cfg)
	rc := s.rawHello(t)
	rc.expect("MAIL FROM:<a@example.net>", "250 ")
	rc.expect("RCPT TO:<b@localhost>", "250 ")
	rest := "\r\nNOOP\r\nMAIL FROM:<x@example.net>\r\n"
	rc.write("BDAT " + strconv.Itoa(2+len(rest)) + " LAST\r\nSu")
	if _, err := rc.readReply(5 * time.Second); err != nil {
		t.Fatalf("no reply to the stalled BDAT: %v", err)
	}
	rc.c.Write([]byte(rest))
	for {
		lines, err := rc.readReply(time.Second)
		if err != nil {
			break // closed, as it must be
		}
		for _, l := range lines {
			if strings.HasPrefix(l, "250") {
				t.Fatalf("the rest of a timed-out BDAT chunk was run as commands: %q", lines)
			}
		}
		t.Errorf("reply after the timed-out chunk: %q; the connection should be closed", lines)
	}
	s.wantQueued(t, 0)
}

// TestStalledCommandLine: a command line that stops before its CRLF is not
// a command. When the command timeout fires the client gets the idle
// session's 421 4.4.2 and the close, whatever the unfinished line says;
// nothing of it runs (go-smtp's bufio.Reader.ReadLine would otherwise hand
// the partial line on as a whole one, and a client could hold a connection
// for the session limit with one such line per command timeout). Over
// STARTTLS too, where the reply goes through TLS.
func TestStalledCommandLine(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t)
	tests := []struct {
		name string
		// before are full commands and their replies; partial is sent
		// without CRLF. auth runs them on the submission port.
		before  [][2]string
		partial string
		auth    bool
	}{
		{"MAIL", nil, "MAIL FROM:<a@x.test>", false},
		{"RCPT", [][2]string{{"MAIL FROM:<a@x.test>", "250 "}}, "RCPT TO:<" + subUser + ">", false},
		{"DATA", [][2]string{{"MAIL FROM:<a@x.test>", "250 "}, {"RCPT TO:<" + subUser + ">", "250 "}}, "DATA", false},
		{"NOOP", nil, "NOOP", false},
		{"RSET", nil, "RSET", false},
		{"EHLO", nil, "EHLO again.test", false},
		{"AUTH PLAIN", nil, "AUTH PLAIN " + plainIR("", subUser, "wrong"), true},
		{"AUTH LOGIN response", [][2]string{{"AUTH LOGIN " + saslB64(subUser), "334 "}}, saslB64("wrong"), true},
	}
	for _, withTLS := range []bool{false, true} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/tls=%v", tt.name, withTLS), func(t *testing.T) {
				t.Parallel()
				cfg, _ := f.config(tt.auth)
				cfg.CommandTimeout = 2 * time.Second
				// One message a minute more than the dialog sends: a
				// MAIL that ran would use the last one up.
				mails := 1
				for _, st := range tt.before {
					if strings.HasPrefix(st[0], "MAIL ") {
						mails++
					}
				}
				cfg.IPRate = ratelimit.New(mails, 0)
				var errs panicRecorder
				s := startServerLog(t, cfg, slog.New(&errorRecorder{&errs}))
				rc := s.rawHello(t)
				if withTLS {
					rc = rc.startTLS()
				}
				rc.dialog(tt.before)
				rc.write(tt.partial)
				lines := rc.wantClosed(10 * time.Second)
				if len(lines) != 1 || !strings.HasPrefix(lines[0], "421 4.4.2 ") {
					t.Errorf("unfinished %q at the command timeout: got %q before the close, want one 421 4.4.2", tt.partial, lines)
				}
				s.wantQueued(t, 0)
				if n := cfg.Throttle.Failures(throttle.IPKey(netip.MustParseAddr("127.0.0.1"))); n != 0 {
					t.Errorf("the unfinished line ran: %d AUTH failure(s) counted", n)
				}
				// The next session is served (its MAIL within the rate
				// when none ran before), and the first one logged no
				// error on its way out.
				rc = s.rawHello(t)
				if !tt.auth {
					rc.expect("MAIL FROM:<a@x.test>", "250 ")
				}
				if e := errs.take(); e != "" {
					t.Errorf("errors logged for a client timeout:\n%s", e)
				}
			})
		}
	}
}

// TestTimeoutRepliesOverTLS: when the server ends a session by itself (the
// command timeout, the session timeout), a TLS client reads the 421 4.4.2
// inside TLS, never plain text thrown into the TLS stream; before EHLO on
// implicit TLS it is go-smtp's own reply.
func TestTimeoutRepliesOverTLS(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t)
	tests := []struct {
		name       string
		implicit   bool
		ehlo       bool
		session    bool // the session timeout fires, not the command timeout
		wantPrefix string
	}{
		{"STARTTLS idle", false, true, false, "421 4.4.2 Idle timeout"},
		{"STARTTLS session too long", false, true, true, "421 4.4.2 session too long"},
		{"implicit idle before EHLO", true, false, false, "421 4.4.2 Idle timeout"},
		{"implicit idle after EHLO", true, true, false, "421 4.4.2 Idle timeout"},
		{"implicit session too long", true, true, true, "421 4.4.2 session too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, _ := f.config(false)
			cfg.ImplicitTLS = tt.implicit
			cfg.CommandTimeout, cfg.SessionTimeout = 2*time.Second, time.Hour
			if tt.session {
				cfg.CommandTimeout, cfg.SessionTimeout = time.Hour, 2*time.Second
			}
			s := startServer(t, cfg)
			var rc *rawConn
			if tt.implicit {
				rc = s.rawDialTLS(t)
				if tt.ehlo {
					rc.expect("EHLO client.test", "250 ")
				}
			} else {
				rc = s.rawHello(t).startTLS()
			}
			lines := rc.wantClosed(10 * time.Second)
			if len(lines) != 1 || !strings.HasPrefix(lines[0], tt.wantPrefix) {
				t.Errorf("got %q before the close, want %q", lines, tt.wantPrefix)
			}
		})
	}
}

// rawDialTLS connects to s with TLS from the first byte and reads the 220
// greeting.
func (s *testServer) rawDialTLS(t *testing.T) *rawConn {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", s.addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("dial TLS: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawConn{t: t, c: c, r: bufio.NewReader(c)}
	if got := rc.reply(); !strings.HasPrefix(got, "220 ") {
		t.Fatalf("greeting %q", got)
	}
	return rc
}
