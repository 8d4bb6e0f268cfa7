package imapd_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"

	"github.com/relaymail/relay/internal/throttle"
	"github.com/relaymail/relay/internal/tlsconf"
	"github.com/relaymail/relay/mailbox/imapd"
)

// capsOf returns the atoms of a "* CAPABILITY ..." response.
func capsOf(t *testing.T, resps []string) []string {
	t.Helper()
	for _, r := range resps {
		if rest, ok := strings.CutPrefix(r, "* CAPABILITY "); ok {
			return strings.Fields(rest)
		}
	}
	t.Fatalf("no CAPABILITY response in %q", resps)
	return nil
}

func TestCapabilityBeforeAndAfterLogin(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	rc := dialRaw(t, ts.addr)
	if !strings.HasPrefix(rc.Hi, "* OK") {
		t.Fatalf("greeting %q, want * OK", rc.Hi)
	}

	before := capsOf(t, rc.ok("CAPABILITY"))
	for _, want := range []string{"IMAP4rev2", "IMAP4rev1", "AUTH=PLAIN"} {
		if !slices.Contains(before, want) {
			t.Errorf("CAPABILITY before login %q lacks %s", before, want)
		}
	}
	// RFC 3501 §6.2.3: LOGINDISABLED only where LOGIN is refused; loopback
	// may log in without TLS.
	if slices.Contains(before, "LOGINDISABLED") {
		t.Errorf("CAPABILITY on loopback %q advertises LOGINDISABLED", before)
	}

	rc.ok("LOGIN " + testUser + " " + testPass)
	after := capsOf(t, rc.ok("CAPABILITY"))
	for _, want := range []string{
		"IMAP4rev2", "IMAP4rev1", "IDLE", "MOVE", "UIDPLUS", "SPECIAL-USE", "ESEARCH",
		"LIST-STATUS", "STATUS=SIZE", "BINARY", "NAMESPACE", "UNSELECT", "ENABLE",
		"SEARCHRES", "LIST-EXTENDED", "CHILDREN",
		"APPENDLIMIT=52428800", // the 50 MiB default
	} {
		if !slices.Contains(after, want) {
			t.Errorf("CAPABILITY after login %q lacks %s", after, want)
		}
	}
	if slices.Contains(after, "AUTH=PLAIN") || slices.Contains(after, "LOGINDISABLED") {
		t.Errorf("CAPABILITY after login %q still offers authentication", after)
	}
}

func TestAppendLimitCapability(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{AppendLimit: 1000})
	rc := rawLogin(t, ts.addr)
	if caps := capsOf(t, rc.ok("CAPABILITY")); !slices.Contains(caps, "APPENDLIMIT=1000") {
		t.Errorf("CAPABILITY %q lacks APPENDLIMIT=1000", caps)
	}
}

// selfSigned makes a certificate with internal/tlsconf in a temp dir and
// returns the server config and a client config that trusts it.
func selfSigned(t testing.TB) (server, client *tls.Config) {
	t.Helper()
	dir := t.TempDir()
	certs, err := tlsconf.Load("", "", dir, "localhost")
	if err != nil {
		t.Fatalf("tlsconf.Load: %v", err)
	}
	pem, err := os.ReadFile(filepath.Join(dir, "tls", "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("cert.pem does not parse")
	}
	return certs.Config(), &tls.Config{RootCAs: pool, ServerName: "localhost"}
}

// dialFrom connects to addr from the local address ip (any 127/8 address
// is loopback on Linux).
func dialFrom(t *testing.T, ip, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: ioWait}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Skipf("cannot dial from %s: %v", ip, err)
	}
	return c
}

func untrustedServer(t *testing.T) (*testServer, *tls.Config) {
	t.Helper()
	srvTLS, cliTLS := selfSigned(t)
	ts := startServer(t, imapd.Config{
		TLS:           srvTLS,
		PlainAuthNets: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
	})
	return ts, cliTLS
}

// RFC 3501 §6.2.3 and §11.1, RFC 9051 §6.2.3: a client outside the trusted
// networks sees LOGINDISABLED and STARTTLS, and LOGIN and AUTHENTICATE fail
// with PRIVACYREQUIRED until STARTTLS.
func TestLoginDisabledWithoutTLS(t *testing.T) {
	t.Parallel()
	ts, _ := untrustedServer(t)
	rc := newRaw(t, dialFrom(t, "127.0.0.2", ts.addr))
	caps := capsOf(t, rc.ok("CAPABILITY"))
	for _, want := range []string{"LOGINDISABLED", "STARTTLS"} {
		if !slices.Contains(caps, want) {
			t.Errorf("CAPABILITY from 127.0.0.2 %q lacks %s", caps, want)
		}
	}
	if slices.Contains(caps, "AUTH=PLAIN") {
		t.Errorf("CAPABILITY from 127.0.0.2 %q offers AUTH=PLAIN in the clear", caps)
	}
	if _, st := rc.run("LOGIN " + testUser + " " + testPass); !strings.HasPrefix(st, "NO [PRIVACYREQUIRED]") {
		t.Errorf("LOGIN in the clear: %q, want NO [PRIVACYREQUIRED]", st)
	}
	// AUTHENTICATE PLAIN with an initial response (SASL-IR).
	if _, st := rc.run("AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABwdw=="); !strings.HasPrefix(st, "NO") {
		t.Errorf("AUTHENTICATE PLAIN in the clear: %q, want NO", st)
	}
	if _, st := rc.run("SELECT INBOX"); !strings.HasPrefix(st, "BAD") && !strings.HasPrefix(st, "NO") {
		t.Errorf("SELECT before login: %q, want BAD or NO", st)
	}

	// The trusted source on the same server may log in in the clear.
	trusted := newRaw(t, dialFrom(t, "127.0.0.1", ts.addr))
	if caps := capsOf(t, trusted.ok("CAPABILITY")); slices.Contains(caps, "LOGINDISABLED") {
		t.Errorf("CAPABILITY from 127.0.0.1 %q advertises LOGINDISABLED", caps)
	}
	trusted.ok("LOGIN " + testUser + " " + testPass)
}

func TestStartTLSThenLogin(t *testing.T) {
	t.Parallel()
	ts, cliTLS := untrustedServer(t)
	c, err := imapclient.NewStartTLS(dialFrom(t, "127.0.0.2", ts.addr), &imapclient.Options{TLSConfig: cliTLS})
	if err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	defer c.Close()
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	if caps.Has(imap.CapLoginDisabled) || caps.Has(imap.CapStartTLS) {
		t.Errorf("CAPABILITY after STARTTLS %v: want neither LOGINDISABLED nor STARTTLS", caps)
	}
	if !caps.Has(imap.AuthCap(sasl.Plain)) {
		t.Errorf("CAPABILITY after STARTTLS %v lacks AUTH=PLAIN", caps)
	}
	if err := c.Login(testUser, testPass).Wait(); err != nil {
		t.Fatalf("LOGIN after STARTTLS: %v", err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
}

// Implicit TLS (the --imaps listener) is trusted from anywhere.
func TestImplicitTLSLogin(t *testing.T) {
	t.Parallel()
	srvTLS, cliTLS := selfSigned(t)
	ts := startServer(t, imapd.Config{TLS: srvTLS, PlainAuthNets: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	// A second listener on the same server, with TLS.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tln := tls.NewListener(ln, srvTLS)
	done := make(chan struct{})
	go func() { ts.srv.Serve(tln); close(done) }()
	t.Cleanup(func() { tln.Close(); <-done })

	c, err := imapclient.DialTLS(ln.Addr().String(), &imapclient.Options{TLSConfig: cliTLS})
	if err != nil {
		t.Fatalf("DialTLS: %v", err)
	}
	defer c.Close()
	if err := c.Authenticate(sasl.NewPlainClient("", testUser, testPass)); err != nil {
		t.Fatalf("AUTHENTICATE PLAIN over TLS: %v", err)
	}
}

func TestLoginPlainAndAuthenticate(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	c := ts.dial(t, nil)
	// Local parts match regardless of case.
	if err := c.Login(strings.ToUpper(testUser), testPass).Wait(); err != nil {
		t.Fatalf("LOGIN with upper-case user: %v", err)
	}
	c2 := ts.dial(t, nil)
	if err := c2.Authenticate(sasl.NewPlainClient("", testUser, testPass)); err != nil {
		t.Fatalf("AUTHENTICATE PLAIN: %v", err)
	}
	c3 := ts.dial(t, nil)
	if err := c3.Authenticate(sasl.NewPlainClient("", testUser, "wrong")); imapCode(err) != imap.ResponseCodeAuthenticationFailed {
		t.Errorf("AUTHENTICATE PLAIN with a bad password: %v, want NO [AUTHENTICATIONFAILED]", err)
	}
}

// RFC 5530 §3: AUTHENTICATIONFAILED for bad credentials, the same answer
// whether the user or the password was wrong.
func TestLoginBadPassword(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	rc := dialRaw(t, ts.addr)
	_, badPw := rc.run("LOGIN " + testUser + " wrong")
	_, badUser := rc.run("LOGIN nobody@example.test " + testPass)
	for _, st := range []string{badPw, badUser} {
		if !strings.HasPrefix(st, "NO [AUTHENTICATIONFAILED]") {
			t.Errorf("bad login: %q, want NO [AUTHENTICATIONFAILED]", st)
		}
	}
	if strings.TrimPrefix(badPw, "NO") != strings.TrimPrefix(badUser, "NO") {
		t.Errorf("bad password %q and unknown user %q answer differently", badPw, badUser)
	}
	// Still not authenticated, and the session goes on.
	if _, st := rc.run("SELECT INBOX"); strings.HasPrefix(st, "OK") {
		t.Errorf("SELECT after failed logins: %q", st)
	}
	rc.ok("LOGIN " + testUser + " " + testPass)

	c := ts.dial(t, nil)
	if err := c.Login(testUser, "wrong").Wait(); imapCode(err) != imap.ResponseCodeAuthenticationFailed {
		t.Errorf("imapclient LOGIN: %v, want AUTHENTICATIONFAILED", err)
	}
}

// Failed logins are throttled: from the second failure on, each answer is
// delayed, doubling.
func TestLoginThrottle(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var delays []time.Duration
	th := throttle.New(100*time.Millisecond, 2*time.Second)
	th.Sleep = func(_ context.Context, d time.Duration) {
		mu.Lock()
		delays = append(delays, d)
		mu.Unlock()
	}
	ts := startServer(t, imapd.Config{Throttle: th})
	rc := dialRaw(t, ts.addr)
	for range 4 {
		if _, st := rc.run("LOGIN " + testUser + " wrong"); !strings.HasPrefix(st, "NO [AUTHENTICATIONFAILED]") {
			t.Fatalf("bad login: %q", st)
		}
	}
	mu.Lock()
	got := slices.Clone(delays)
	mu.Unlock()
	want := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond}
	if !slices.Equal(got, want) {
		t.Errorf("throttle delays %v, want %v", got, want)
	}
	if n := th.Failures("user:" + testUser); n != 4 {
		t.Errorf("failures for the user: %d, want 4", n)
	}

	// A success forgets the account's failures.
	rc.ok("LOGIN " + testUser + " " + testPass)
	if n := th.Failures("user:" + testUser); n != 0 {
		t.Errorf("failures for the user after success: %d, want 0", n)
	}
}

// A transient Accept error (EMFILE, ECONNABORTED) must not end Serve: the
// IMAP listener would be gone until the relay restarts.
func TestServeSurvivesTemporaryAcceptError(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: ln, fails: 1, failed: make(chan struct{})}
	srv := imapd.New(imapd.Config{}, ts.boxes)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(fl) }()
	t.Cleanup(func() { srv.Close(); <-done })

	<-fl.failed
	// Serve has had its temporary error; if it returned on it, nobody
	// accepts the connection below and it gets no greeting.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	rc := newRaw(t, c)
	if !strings.HasPrefix(rc.Hi, "* OK") {
		t.Fatalf("greeting after a temporary accept error: %q", rc.Hi)
	}
	rc.ok("LOGIN " + testUser + " " + testPass)
	select {
	case err := <-done:
		t.Fatalf("Serve returned %v after one temporary Accept error", err)
	default:
	}
}

type tempErr struct{}

func (tempErr) Error() string   { return "accept: too many open files" }
func (tempErr) Timeout() bool   { return false }
func (tempErr) Temporary() bool { return true }

var _ net.Error = tempErr{}

// flakyListener fails its first fails Accepts with a temporary error and
// closes failed after the last of them.
type flakyListener struct {
	net.Listener
	mu     sync.Mutex
	fails  int
	failed chan struct{}
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.fails > 0 {
		l.fails--
		if l.fails == 0 {
			close(l.failed)
		}
		l.mu.Unlock()
		return nil, tempErr{}
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

// Serve's doc says it accepts "until Close"; after Close it must return,
// as net/http's and imapserver's Serve do, without the caller having to
// close the listener too, and the sessions it started are closed.
func TestCloseWhileServing(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv := imapd.New(imapd.Config{}, ts.boxes)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	rc := rawLogin(t, ln.Addr().String()) // Serve is running
	if err := srv.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after Close: %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve still running 30 s after Close")
	}
	rc.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if b, err := io.ReadAll(rc.r); err != nil {
		t.Errorf("session after Close: %v (read %q), want it closed", err, b)
	}
	if err := srv.Serve(ln); !errors.Is(err, imapd.ErrServerClosed) {
		t.Errorf("Serve after Close: %v, want ErrServerClosed", err)
	}
}

// Close racing with Serve's start: Close waits for Serve, which returns,
// and the race detector sees no unsynchronised use of imapserver's state.
func TestCloseRacingServe(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := imapd.New(imapd.Config{}, ts.boxes)
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ln) }()
		srv.Close()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, imapd.ErrServerClosed) {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Serve still running 30 s after Close")
		}
		ln.Close()
	}
}
