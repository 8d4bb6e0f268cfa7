package smtpd_test

// Submission (RFC 6409) and AUTH (RFC 4954) against a real account store.
// bcrypt makes every password check cost (most of a second under -race), so
// one account store with one user serves every subtest, and each subtest
// checks as few passwords as it can.

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaymail/relay/internal/testkit"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/relaymail/relay/internal/throttle"
	"github.com/relaymail/relay/internal/tlsconf"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/relay/smtpd"
	"github.com/relaymail/relay/spool"
)

const (
	subUser = "alice@localhost"
	subPass = "correct horse"
)

// saslB64 is the base64 of a SASL message, as it goes on the wire.
func saslB64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// plainIR is the AUTH PLAIN initial response (RFC 4616 §2).
func plainIR(authz, user, pass string) string { return saslB64(authz + "\x00" + user + "\x00" + pass) }

// sleeps records the delays a throttle asks for instead of waiting them out.
type sleeps struct {
	mu sync.Mutex
	d  []time.Duration
}

func (s *sleeps) get() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.d)
}

// recordingThrottle is the relay's throttle (1s base, 15s cap) with a Sleep
// that returns at once and records the delay.
func recordingThrottle() (*throttle.Throttle, *sleeps) {
	rec := &sleeps{}
	th := throttle.New(time.Second, 15*time.Second)
	th.Sleep = func(_ context.Context, d time.Duration) {
		rec.mu.Lock()
		rec.d = append(rec.d, d)
		rec.mu.Unlock()
	}
	return th, rec
}

// authFixture is what every submission subtest shares: an account store
// holding alice@localhost, and a TLS configuration with a self-signed certificate.
type authFixture struct {
	boxes *mailbox.Store
	tls   *tls.Config
}

func newAuthFixture(t *testing.T) *authFixture {
	t.Helper()
	engine, _ := testkit.Badger(t, nil)
	boxes := mailbox.New(engine, nil)
	if err := boxes.AddUser(subUser, subPass); err != nil {
		t.Fatalf("AddUser: %v", err)
	}
	certs, err := tlsconf.Load("", "", t.TempDir(), "localhost")
	if err != nil {
		t.Fatalf("tlsconf.Load: %v", err)
	}
	return &authFixture{boxes: boxes, tls: certs.Config()}
}

// config is a submission port on the fixture's accounts with STARTTLS and
// a throttle of its own whose delays are recorded.
func (f *authFixture) config(submission bool) (smtpd.Config, *sleeps) {
	cfg := testConfig()
	cfg.Submission = submission
	cfg.Accounts = f.boxes
	cfg.TLS = f.tls
	var rec *sleeps
	cfg.Throttle, rec = recordingThrottle()
	return cfg, rec
}

// ehlo sends EHLO on rc and returns the reply's lines without their codes.
func (rc *rawConn) ehlo() []string {
	rc.t.Helper()
	rc.write("EHLO client.test\r\n")
	lines, err := rc.readReply(5 * time.Second)
	if err != nil {
		rc.t.Fatalf("EHLO: %v (after %q)", err, lines)
	}
	var exts []string
	for _, l := range lines {
		if !strings.HasPrefix(l, "250") {
			rc.t.Fatalf("EHLO reply line %q", l)
		}
		exts = append(exts, l[4:])
	}
	return exts
}

// authLine returns the AUTH line of an EHLO reply, or "".
func authLine(exts []string) string {
	for _, e := range exts {
		if e == "AUTH" || strings.HasPrefix(e, "AUTH ") {
			return e
		}
	}
	return ""
}

// dialog sends each step's line and checks the reply's last line starts
// with the step's prefix.
func (rc *rawConn) dialog(steps [][2]string) {
	rc.t.Helper()
	for _, st := range steps {
		rc.expect(st[0], st[1])
	}
}

func TestSubmission(t *testing.T) {
	t.Parallel()
	f := newAuthFixture(t)

	// RFC 4954 §4 and RFC 4616: every mechanism and both ways of sending
	// the first response; go-smtp's client always sends one, so the
	// dialogues go over a raw connection.
	t.Run("AUTH good", func(t *testing.T) {
		t.Parallel()
		cfg, rec := f.config(true)
		s := startServer(t, cfg)
		tests := []struct {
			name  string
			steps [][2]string
		}{
			{"PLAIN with initial response", [][2]string{
				{"AUTH PLAIN " + plainIR("", subUser, subPass), "235 2.0.0"},
			}},
			{"LOGIN with initial response", [][2]string{
				{"AUTH LOGIN " + saslB64(subUser), "334 " + saslB64("Password:")},
				{saslB64(subPass), "235 2.0.0"},
			}},
			{"LOGIN without initial response", [][2]string{
				{"AUTH LOGIN", "334 " + saslB64("Username:")},
				{saslB64(subUser), "334 " + saslB64("Password:")},
				{saslB64(subPass), "235 2.0.0"},
			}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				rc := s.rawDial(t)
				// Loopback is trusted: AUTH is offered without TLS.
				if got := authLine(rc.ehlo()); got != "AUTH PLAIN LOGIN" {
					t.Errorf("EHLO on loopback advertises %q, want AUTH PLAIN LOGIN", got)
				}
				rc.dialog(tt.steps)
				rc.expect("AUTH PLAIN "+plainIR("", subUser, subPass), "503 5.5.1")
				rc.expect("MAIL FROM:<"+subUser+">", "250 ")
			})
		}
		t.Cleanup(func() {
			if d := rec.get(); len(d) != 0 {
				t.Errorf("successful logins were delayed: %v", d)
			}
		})
	})

	// A bad password, an unknown user and a borrowed authorization
	// identity all get the same 535 5.7.8 (the reply must not tell which
	// part was wrong), and from the second failure on each reply comes
	// later than the one before.
	t.Run("AUTH bad", func(t *testing.T) {
		t.Parallel()
		cfg, rec := f.config(true)
		s := startServer(t, cfg)
		tests := []struct {
			name  string
			steps [][2]string
		}{
			{"PLAIN bad password", [][2]string{{"AUTH PLAIN " + plainIR("", subUser, "wrong"), "535 5.7.8"}}},
			{"PLAIN unknown user", [][2]string{{"AUTH PLAIN " + plainIR("", "nobody@localhost", subPass), "535 5.7.8"}}},
			{"PLAIN another authorization identity", [][2]string{{"AUTH PLAIN " + plainIR("postmaster@localhost", subUser, subPass), "535 5.7.8"}}},
			{"LOGIN bad password", [][2]string{
				{"AUTH LOGIN " + saslB64(subUser), "334 "},
				{saslB64("wrong"), "535 5.7.8"},
			}},
		}
		var replies []string
		for _, tt := range tests {
			rc := s.rawHello(t)
			steps := tt.steps[:len(tt.steps)-1]
			rc.dialog(steps)
			last := tt.steps[len(tt.steps)-1]
			got := rc.cmd(last[0])
			if !strings.HasPrefix(got, last[1]) {
				t.Errorf("%s: got %q, want %q...", tt.name, got, last[1])
			}
			replies = append(replies, got)
			// The session is still unauthenticated and usable.
			wantRaw(t, rc, "MAIL FROM:<"+subUser+">", "530 5.7.0 authentication required")
		}
		for i, r := range replies {
			if r != replies[0] {
				t.Errorf("%s answered %q, %s answered %q: the replies differ", tests[i].name, r, tests[0].name, replies[0])
			}
		}
		want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}
		if got := rec.get(); !slices.Equal(got, want) {
			t.Errorf("throttle delays after %d failures from one client = %v, want %v", len(tests), got, want)
		}
		// Throttled, not locked out: the right password still works.
		rc := s.rawHello(t)
		rc.expect("AUTH PLAIN "+plainIR("", subUser, subPass), "235 ")
	})

	// RFC 6409 §4.3 and §6.1: no MAIL before AUTH; MAIL FROM only with
	// the user's own address; any recipient domain once authenticated, but
	// local recipients must exist.
	t.Run("sender and recipients", func(t *testing.T) {
		t.Parallel()
		cfg, _ := f.config(true)
		s := startServer(t, cfg)
		c := s.hello(t)
		wantSMTP(t, "MAIL before AUTH", c.Mail(subUser, nil), 530, smtp.EnhancedCode{5, 7, 0}, "authentication required")
		if err := c.Auth(sasl.NewPlainClient("", subUser, subPass)); err != nil {
			t.Fatalf("AUTH PLAIN: %v", err)
		}
		for _, from := range []string{"bob@localhost", "alice@relay.test", "alice@example.org", "malice@localhost", ""} {
			wantSMTP(t, "MAIL FROM:<"+from+">", c.Mail(from, nil), 553, smtp.EnhancedCode{5, 7, 1}, "")
		}
		for _, from := range []string{subUser, "ALICE@LocalHost", "alice+lists@localhost"} {
			if err := c.Mail(from, nil); err != nil {
				t.Errorf("MAIL FROM:<%s> as %s: %v", from, subUser, err)
			}
			if err := c.Reset(); err != nil {
				t.Fatalf("RSET: %v", err)
			}
		}
		if err := c.Mail("alice+lists@localhost", nil); err != nil {
			t.Fatalf("MAIL: %v", err)
		}
		for _, rcpt := range []string{"nobody@localhost", "nobody+tag@relay.test"} {
			wantSMTP(t, "RCPT TO:<"+rcpt+">", c.Rcpt(rcpt, nil), 550, smtp.EnhancedCode{5, 1, 1}, "no such user")
		}
		rcpts := []string{"carol@example.org", "alice+copy@localhost"}
		for _, rcpt := range rcpts {
			if err := c.Rcpt(rcpt, nil); err != nil {
				t.Fatalf("RCPT TO:<%s> after AUTH: %v", rcpt, err)
			}
		}
		if err := sendData(c, plainBody); err != nil {
			t.Fatalf("DATA: %v", err)
		}
		m := s.wantQueued(t, 1)[0]
		if m.From != "alice+lists@localhost" || rcptAddrs(m) != strings.Join(rcpts, ",") {
			t.Errorf("queued envelope %q -> %s, want alice+lists@localhost -> %s", m.From, rcptAddrs(m), strings.Join(rcpts, ","))
		}
		for _, r := range m.Rcpts {
			if r.State != spool.Pending {
				t.Errorf("recipient %s is %s, want pending", r.Address, r.State)
			}
		}
		// RFC 3848: ESMTPA, authenticated on plain-text loopback.
		if hdr := s.wantBody(t, m, stamped(m, plainBody)); !strings.Contains(hdr, " with ESMTPA id ") {
			t.Errorf("Received: header does not say ESMTPA:\n%s", hdr)
		}
	})

	// RFC 4954 §4: no AUTH over plain text from outside PlainAuthNets,
	// neither offered nor accepted, until STARTTLS. The client connects
	// from 127.0.0.2, which the server does not trust.
	t.Run("AUTH needs STARTTLS", func(t *testing.T) {
		t.Parallel()
		cfg, rec := f.config(true)
		cfg.PlainAuthNets = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		s := startServer(t, cfg)

		rc := &rawConn{t: t, c: dialFrom(t, "127.0.0.2", s.addr)}
		rc.r = bufio.NewReader(rc.c)
		if got := rc.reply(); !strings.HasPrefix(got, "220 ") {
			t.Fatalf("greeting %q", got)
		}
		exts := rc.ehlo()
		if got := authLine(exts); got != "" {
			t.Errorf("EHLO over plain text from 127.0.0.2 advertises %q", got)
		}
		if !slices.Contains(exts, "STARTTLS") {
			t.Errorf("EHLO does not advertise STARTTLS: %q", exts)
		}
		wantRaw(t, rc, "AUTH PLAIN "+plainIR("", subUser, subPass), "530 5.7.0 must issue STARTTLS first")
		wantRaw(t, rc, "AUTH LOGIN", "530 5.7.0 must issue STARTTLS first")
		wantRaw(t, rc, "MAIL FROM:<"+subUser+">", "530 5.7.0 authentication required")
		if d := rec.get(); len(d) != 0 {
			t.Errorf("refused AUTH without TLS counted as failed logins: delays %v", d)
		}

		c, err := smtp.NewClientStartTLS(dialFrom(t, "127.0.0.2", s.addr), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("STARTTLS: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		c.CommandTimeout = 10 * time.Second
		if ok, mechs := c.Extension("AUTH"); !ok || mechs != "PLAIN LOGIN" {
			t.Errorf("EHLO after STARTTLS: AUTH %v %q, want PLAIN LOGIN", ok, mechs)
		}
		if err := c.Auth(sasl.NewPlainClient("", subUser, subPass)); err != nil {
			t.Fatalf("AUTH PLAIN after STARTTLS: %v", err)
		}
		if err := send(c, subUser, nil, []string{"dave@example.org"}, plainBody); err != nil {
			t.Fatalf("send after STARTTLS and AUTH: %v", err)
		}
		m := s.wantQueued(t, 1)[0]
		if m.ClientIP != "127.0.0.2" {
			t.Errorf("ClientIP = %q, want 127.0.0.2", m.ClientIP)
		}
		// RFC 3848: ESMTPSA, with TLS and AUTH.
		if hdr := s.wantBody(t, m, stamped(m, plainBody)); !strings.Contains(hdr, " with ESMTPSA id ") || !strings.Contains(hdr, "([127.0.0.2])") {
			t.Errorf("Received: header does not say ESMTPSA from 127.0.0.2:\n%s", hdr)
		}
	})

	// The relay port (not submission) checks local users against the
	// accounts too, but offers no AUTH, not even over TLS, and relays
	// nothing.
	t.Run("relay port", func(t *testing.T) {
		t.Parallel()
		cfg, rec := f.config(false)
		s := startServer(t, cfg)
		rc := s.rawDial(t)
		if got := authLine(rc.ehlo()); got != "" {
			t.Errorf("relay port advertises %q", got)
		}
		rc.expect("AUTH PLAIN "+plainIR("", subUser, subPass), "502 5.7.0")

		c2, err := smtp.NewClientStartTLS(dialFrom(t, "127.0.0.1", s.addr), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("STARTTLS: %v", err)
		}
		t.Cleanup(func() { c2.Close() })
		c2.CommandTimeout = 10 * time.Second
		if ok, mechs := c2.Extension("AUTH"); ok {
			t.Errorf("relay port advertises AUTH %s after STARTTLS", mechs)
		}
		if err := c2.Mail("someone@example.net", nil); err != nil {
			t.Fatalf("MAIL: %v", err)
		}
		wantSMTP(t, "RCPT unknown local user", c2.Rcpt("nobody@localhost", nil), 550, smtp.EnhancedCode{5, 1, 1}, "no such user")
		wantSMTP(t, "RCPT remote", c2.Rcpt("carol@example.org", nil), 554, smtp.EnhancedCode{5, 7, 1}, "relay access denied")
		for _, rcpt := range []string{subUser, "alice+tag@localhost", "Alice@LOCALHOST"} {
			if err := c2.Rcpt(rcpt, nil); err != nil {
				t.Errorf("RCPT TO:<%s> on the relay port: %v", rcpt, err)
			}
		}
		if d := rec.get(); len(d) != 0 {
			t.Errorf("throttle delays on the relay port: %v", d)
		}
	})
}

// dialFrom connects to addr from the local address ip.
func dialFrom(t *testing.T, ip, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Skipf("cannot connect from %s (the kernel does not route all of 127/8 to loopback?): %v", ip, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// wantRaw sends line and fails unless the reply's last line is want.
func wantRaw(t *testing.T, rc *rawConn, line, want string) {
	t.Helper()
	if got := rc.cmd(line); got != want {
		t.Errorf("%s: got %q, want %q", line, got, want)
	}
}

// wantSMTP is wantCode that also checks the reply text when msg is set, and
// does not stop the test.
func wantSMTP(t *testing.T, what string, err error, code int, enh smtp.EnhancedCode, msg string) {
	t.Helper()
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		t.Errorf("%s: got %v, want %d %v %s", what, err, code, enh, msg)
		return
	}
	if se.Code != code || se.EnhancedCode != enh || (msg != "" && se.Message != msg) {
		t.Errorf("%s: got %d %v %q, want %d %v %q", what, se.Code, se.EnhancedCode, se.Message, code, enh, msg)
	}
}

// sendData sends body with DATA on a transaction whose MAIL and RCPT are
// done.
func sendData(c *smtp.Client, body string) error {
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return err
	}
	return w.Close()
}

func rcptAddrs(m *spool.Message) string {
	var a []string
	for _, r := range m.Rcpts {
		a = append(a, r.Address)
	}
	return strings.Join(a, ",")
}
