package smtpd_test

// Abuse limits on the SMTP side. Each test names the protection it guards;
// with the protection removed, the test fails.

import (
	"bufio"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/relaymail/relay/internal/connlimit"
	"github.com/relaymail/relay/internal/ratelimit"
)

// greeting dials s and returns the first reply and the connection.
func (s *testServer) greeting(t *testing.T) (string, *rawConn) {
	t.Helper()
	c, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawConn{t: t, c: c, r: bufio.NewReader(c)}
	lines, err := rc.readReply(5 * time.Second)
	if err != nil && len(lines) == 0 {
		return "", rc
	}
	return lines[len(lines)-1], rc
}

// TestConnectionLimitPerIP guards max-connections-per-ip: past the limit a
// client hears 421 4.7.0 instead of the greeting and is dropped; once one of
// its sessions ends, it may connect again.
func TestConnectionLimitPerIP(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.Conns = connlimit.New(0, 2)
	s := startServer(t, cfg)
	var open []*rawConn
	for range 2 {
		g, rc := s.greeting(t)
		if !strings.HasPrefix(g, "220 ") {
			t.Fatalf("connection within the limit greeted with %q", g)
		}
		open = append(open, rc)
	}
	g, rc := s.greeting(t)
	if !strings.HasPrefix(g, "421 4.7.0 ") || !strings.Contains(g, "too many connections from your address") {
		t.Errorf("third connection from one address: %q, want 421 4.7.0", g)
	}
	if !rc.closed(2 * time.Second) {
		t.Error("refused connection left open")
	}
	open[0].expect("QUIT", "221 ")
	if !waitUntil(5*time.Second, func() bool {
		g, rc := s.greeting(t)
		rc.c.Close()
		return strings.HasPrefix(g, "220 ")
	}) {
		t.Error("no new connection accepted after one of the two ended")
	}
}

// TestConnectionLimitTotal guards max-connections.
func TestConnectionLimitTotal(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.Conns = connlimit.New(3, 0)
	s := startServer(t, cfg)
	for range 3 {
		if g, _ := s.greeting(t); !strings.HasPrefix(g, "220 ") {
			t.Fatalf("connection within the limit greeted with %q", g)
		}
	}
	if g, _ := s.greeting(t); !strings.HasPrefix(g, "421 4.7.0 ") || !strings.Contains(g, "too many connections,") {
		t.Errorf("fourth connection: %q, want 421 4.7.0 too many connections", g)
	}
}

// TestMessageRatePerIP guards ip-message-rate: MAIL past the rate hears
// 450 4.7.1, on any connection from that address.
func TestMessageRatePerIP(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.IPRate = ratelimit.New(2, 2)
	s := startServer(t, cfg)
	for i := range 2 {
		c := s.hello(t)
		if err := send(c, "a@example.net", nil, []string{"b@localhost"}, "Subject: x\r\n\r\nx\r\n"); err != nil {
			t.Fatalf("message %d within the rate: %v", i, err)
		}
	}
	c := s.hello(t)
	wantCode(t, "MAIL past the rate", c.Mail("a@example.net", nil), 450, smtp.EnhancedCode{4, 7, 1})
	s.wantQueued(t, 2)
}

// TestMessageRatePerUser guards user-message-rate on the submission port:
// the account's rate holds whichever address it comes from, and another
// account is not affected.
func TestMessageRatePerUser(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t)
	if err := f.boxes.AddUser("carol@localhost", subPass); err != nil {
		t.Fatal(err)
	}
	cfg, _ := f.config(true)
	cfg.UserRate = ratelimit.New(1, 1)
	s := startServer(t, cfg)
	login := func(user string) *rawConn {
		rc := s.rawHello(t)
		rc.expect("AUTH PLAIN "+plainIR("", user, subPass), "235 ")
		return rc
	}
	rc := login(subUser)
	rc.expect("MAIL FROM:<"+subUser+">", "250 ")
	rc.expect("RSET", "250 ")
	rc.expect("MAIL FROM:<"+subUser+">", "450 4.7.1")
	rc = login("carol@localhost")
	rc.expect("MAIL FROM:<carol@localhost>", "250 ")
}

// TestTooManyErrors guards max-errors: a client harvesting addresses with
// RCPT is cut off with 421 4.7.0 once it has collected the limit.
func TestTooManyErrors(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.MaxErrors = 3
	s := startServer(t, cfg)
	rc := s.rawHello(t)
	rc.expect("MAIL FROM:<a@example.net>", "250 ")
	rc.expect("RCPT TO:<x@remote.example>", "554 5.7.1")
	rc.expect("RCPT TO:<y@remote.example>", "554 5.7.1")
	rc.expect("RCPT TO:<z@remote.example>", "421 4.7.0")
	if !rc.closed(2 * time.Second) {
		t.Error("session still open after its 421")
	}
	// Errors are per session: a new one starts from zero.
	rc = s.rawHello(t)
	rc.expect("MAIL FROM:<a@example.net>", "250 ")
	rc.expect("RCPT TO:<x@remote.example>", "554 5.7.1")
	rc.expect("RCPT TO:<b@localhost>", "250 ")
}

// TestSessionTimeout guards session-timeout: a client that keeps its
// session alive with NOOPs, each well within the command timeout, is still
// dropped when the session has lasted too long.
func TestSessionTimeout(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.SessionTimeout = 500 * time.Millisecond
	s := startServer(t, cfg)
	rc := s.rawHello(t)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		rc.write("NOOP\r\n")
		lines, err := rc.readReply(2 * time.Second)
		if err != nil {
			if len(lines) == 0 || !strings.HasPrefix(lines[len(lines)-1], "421 4.4.2") {
				t.Errorf("session ended with %q, want 421 4.4.2", lines)
			}
			return
		}
		if strings.HasPrefix(lines[len(lines)-1], "421 4.4.2") {
			if !rc.closed(2 * time.Second) {
				t.Error("session still open after its 421")
			}
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("a session of NOOPs lasted 5s with a 500ms session timeout")
}

// TestLineLengthLimit guards max-line-length for commands: an over-long line
// is refused and the connection closed, since the rest of the line is
// unread.
func TestLineLengthLimit(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.MaxLineLength = 600
	s := startServer(t, cfg)
	rc := s.rawHello(t)
	rc.expect("NOOP "+strings.Repeat("x", 500), "250 ")
	rc.write("MAIL FROM:<" + strings.Repeat("a", 700) + "@example.net>\r\n")
	lines := rc.wantClosed(5 * time.Second)
	if len(lines) == 0 || !strings.HasPrefix(lines[len(lines)-1], "500 ") {
		t.Errorf("over-long command got %q before the close, want 500", lines)
	}
}

// TestStartTLSDiscardsPipelinedPlainText guards against command injection
// before STARTTLS (CVE-2011-0411 class): a command sent in plain text behind
// STARTTLS, in the same packet, must not run inside the TLS session.
func TestStartTLSDiscardsPipelinedPlainText(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t)
	cfg, _ := f.config(false)
	s := startServer(t, cfg)
	rc := s.rawHello(t)
	rc.write("STARTTLS\r\nMAIL FROM:<injected@example.net>\r\n")
	if got := rc.reply(); !strings.HasPrefix(got, "220 ") {
		t.Fatalf("STARTTLS: %q", got)
	}
	tc := tls.Client(rc.c, &tls.Config{InsecureSkipVerify: true})
	tc.SetDeadline(time.Now().Add(20 * time.Second))
	// The server drops what was pipelined behind STARTTLS, so the
	// handshake itself must work: a handshake broken by the injected bytes
	// would hide whether they ran.
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake after the injected plain text: %v", err)
	}
	tr := &rawConn{t: t, c: tc, r: bufio.NewReader(tc)}
	tr.expect("EHLO client.test", "250 ")
	// Had the injected MAIL run, RCPT would be accepted.
	if got := tr.cmd("RCPT TO:<b@localhost>"); !strings.HasPrefix(got, "50") {
		t.Errorf("RCPT after STARTTLS: %q; want a refusal for want of MAIL, since the injected MAIL must not run", got)
	}
}

// waitUntil polls cond every 50ms until it holds or d has passed.
func waitUntil(d time.Duration, cond func() bool) bool {
	end := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAuthLockout guards the temporary refusal after repeated AUTH
// failures: once an address has failed Limit times, even the right password
// hears 454 4.7.0, for a name that exists and one that does not alike,
// until the lockout has passed.
func TestAuthLockout(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t)
	cfg, _ := f.config(true)
	now := time.Now()
	var mu sync.Mutex
	cfg.Throttle.Limit, cfg.Throttle.Lockout = 3, time.Minute
	cfg.Throttle.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	s := startServer(t, cfg)
	rc := s.rawHello(t)
	for range 3 {
		rc.expect("AUTH PLAIN "+plainIR("", subUser, "wrong"), "535 5.7.8")
	}
	rc = s.rawHello(t)
	rc.expect("AUTH PLAIN "+plainIR("", subUser, subPass), "454 4.7.0")
	rc.expect("AUTH PLAIN "+plainIR("", "nobody@localhost", "x"), "454 4.7.0")
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	rc = s.rawHello(t)
	rc.expect("AUTH PLAIN "+plainIR("", subUser, subPass), "235 ")
}

// TestAuthLockoutPerAccount: failures against one account from several
// addresses add up, so guessing from many addresses still locks the account,
// while each address alone stays under the limit.
func TestAuthLockoutPerAccount(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t)
	cfg, _ := f.config(true)
	cfg.Throttle.Limit, cfg.Throttle.Lockout = 3, time.Minute
	s := startServer(t, cfg)
	login := func(ip, pass string) error {
		c, err := smtp.NewClientStartTLS(dialFrom(t, ip, s.addr), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("STARTTLS from %s: %v", ip, err)
		}
		defer c.Close()
		c.CommandTimeout = 10 * time.Second
		return c.Auth(sasl.NewPlainClient("", subUser, pass))
	}
	for _, ip := range []string{"127.0.0.2", "127.0.0.2", "127.0.0.3"} {
		wantCode(t, "wrong password from "+ip, login(ip, "wrong"), 535, smtp.EnhancedCode{5, 7, 8})
	}
	// A fresh address with the right password: the account is locked.
	wantCode(t, "right password after 3 failures on the account", login("127.0.0.4", subPass), 454, smtp.EnhancedCode{4, 7, 0})
}
