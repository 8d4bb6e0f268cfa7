// Package smtpd is the relay's SMTP ingress: a go-smtp backend that applies
// the relay policy and writes accepted messages into the spool.
//
// Supported extensions: PIPELINING (RFC 2920), 8BITMIME (RFC 6152), SMTPUTF8
// (RFC 6531), SIZE (RFC 1870), ENHANCEDSTATUSCODES (RFC 2034, 3463), CHUNKING
// (RFC 3030), DSN (RFC 3461).
//
// A message is answered 250 only after spool.Enqueue returned, which means
// it is committed and synced. Every refusal is a bare *smtp.SMTPError, because
// go-smtp turns anything else (a wrapped one included) into a 451.
package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/relaymail/relay/internal/connlimit"
	"github.com/relaymail/relay/internal/diskspace"
	"github.com/relaymail/relay/internal/metrics"
	"github.com/relaymail/relay/internal/ratelimit"
	"github.com/relaymail/relay/internal/throttle"
	"github.com/relaymail/relay/spool"
)

// Config is the ingress policy.
type Config struct {
	// Hostname names this relay in the greeting and in Received: headers.
	Hostname string
	// Domains are the local domains: the only ones the relay port accepts
	// mail for.
	Domains []string
	// MaxMessageBytes caps a message (SIZE and the DATA/BDAT stream).
	MaxMessageBytes int64
	// MaxRecipients caps RCPT TO per transaction (452 4.5.3 beyond).
	MaxRecipients int
	// CommandTimeout bounds the wait for each command line (idle clients).
	CommandTimeout time.Duration
	// DataIdleTimeout bounds the wait for more message data; DataTimeout
	// bounds the whole DATA or BDAT transfer (slow clients).
	DataIdleTimeout time.Duration
	DataTimeout     time.Duration
	// WriteTimeout bounds each reply write.
	WriteTimeout time.Duration
	// TLS enables STARTTLS when non-nil, or TLS from the first byte with
	// ImplicitTLS (RFC 8314 submissions).
	TLS         *tls.Config
	ImplicitTLS bool

	// Submission makes this a submission port (RFC 6409): AUTH before
	// MAIL, MAIL FROM only from the authenticated user's addresses, and
	// recipients in any domain.
	Submission bool
	// Accounts checks local recipients (550 5.1.1 for unknown ones) and
	// passwords. Nil accepts every local recipient and offers no AUTH.
	Accounts Accounts
	// PlainAuthNets are the client networks that may authenticate without
	// TLS; default loopback only.
	PlainAuthNets []netip.Prefix
	// Throttle slows down repeated AUTH failures; nil means a default one.
	Throttle *throttle.Throttle
	// Metrics counts accepted and rejected messages and AUTH failures;
	// nil counts nothing.
	Metrics *metrics.Registry

	// Limits, Postfix-like; each may be shared by several listeners.
	// Conns caps connections in total and per client address (nil: no
	// cap).
	Conns *connlimit.Limiter
	// IPRate and UserRate cap messages (MAIL commands) per minute per
	// client address and per authenticated account (nil: no cap).
	IPRate, UserRate *ratelimit.Keyed
	// MaxErrors is how many refused commands a session may collect before
	// it is ended with 421 (a dictionary attack on RCPT, say).
	MaxErrors int
	// SessionTimeout bounds a whole session, so that a client that keeps
	// it alive with a NOOP now and then is still dropped.
	SessionTimeout time.Duration
	// MaxLineLength caps a command line and a line of message data.
	MaxLineLength int
	// Space refuses new mail while the data directory's disk is below
	// min-free-space (452 4.3.1 at MAIL and at the end of the data); nil
	// never refuses.
	Space *diskspace.Guard
	// BareNewline says what becomes of a bare LF in message data; the
	// zero value normalizes it.
	BareNewline BareNewline
}

// Accounts is what ingress needs of the account store.
type Accounts interface {
	// UserExists reports whether an account exists for a resolved address.
	UserExists(addr string) (bool, error)
	// Authenticate checks a password and returns the account address.
	Authenticate(user, password string) (string, error)
}

// Defaults for the zero fields of Config, close to Postfix's.
const (
	DefaultMaxMessageBytes = 50 << 20
	DefaultMaxRecipients   = 1000
	DefaultCommandTimeout  = 5 * time.Minute
	DefaultDataIdleTimeout = 5 * time.Minute
	DefaultDataTimeout     = 30 * time.Minute
	DefaultWriteTimeout    = 5 * time.Minute
	DefaultMaxErrors       = 20
	DefaultSessionTimeout  = time.Hour
	DefaultMaxLineLength   = 2000
)

func (c *Config) setDefaults() {
	if c.Hostname == "" {
		c.Hostname = "localhost"
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if c.MaxRecipients == 0 {
		c.MaxRecipients = DefaultMaxRecipients
	}
	if c.CommandTimeout == 0 {
		c.CommandTimeout = DefaultCommandTimeout
	}
	if c.DataIdleTimeout == 0 {
		c.DataIdleTimeout = DefaultDataIdleTimeout
	}
	if c.DataTimeout == 0 {
		c.DataTimeout = DefaultDataTimeout
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.MaxErrors == 0 {
		c.MaxErrors = DefaultMaxErrors
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = DefaultSessionTimeout
	}
	if c.MaxLineLength == 0 {
		c.MaxLineLength = DefaultMaxLineLength
	}
	if c.PlainAuthNets == nil {
		c.PlainAuthNets = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	}
	if c.Throttle == nil {
		c.Throttle = throttle.New(time.Second, 15*time.Second)
	}
	for i, d := range c.Domains {
		c.Domains[i] = strings.ToLower(strings.TrimSuffix(d, "."))
	}
}

// Server is one SMTP listener's worth of ingress.
type Server struct {
	cfg   Config
	spool *spool.Spool
	log   *slog.Logger
	smtp  *smtp.Server
	now   func() time.Time

	mu      sync.Mutex
	conns   map[*trackedConn]struct{}
	lns     []net.Listener
	closing bool // guarded by mu: Shutdown has begun
}

// New returns an ingress server that queues into sp.
func New(cfg Config, sp *spool.Spool, log *slog.Logger) *Server {
	cfg.setDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, spool: sp, log: log, now: sp.Now, conns: map[*trackedConn]struct{}{}}
	srv := smtp.NewServer(s)
	srv.Domain = cfg.Hostname
	srv.MaxMessageBytes = cfg.MaxMessageBytes
	srv.MaxRecipients = cfg.MaxRecipients
	srv.ReadTimeout = cfg.CommandTimeout
	srv.WriteTimeout = cfg.WriteTimeout
	srv.MaxLineLength = cfg.MaxLineLength
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = true
	if !cfg.ImplicitTLS && cfg.TLS != nil {
		srv.TLSConfig = markTLS(cfg.TLS)
	}
	// AUTH is offered per connection by session.AuthMechanisms, which
	// applies PlainAuthNets; go-smtp's own switch would refuse AUTH on
	// every plain-text connection.
	srv.AllowInsecureAuth = true
	srv.ErrorLog = slogErrorLog{log}
	s.smtp = srv
	return s
}

// Serve accepts connections on l until Shutdown or Close.
func (s *Server) Serve(l net.Listener) error {
	if s.cfg.Conns != nil {
		l = connlimit.Listen(l, s.cfg.Conns, s.refuseConn)
	}
	tl := &trackingListener{Listener: l, srv: s}
	s.mu.Lock()
	s.lns = append(s.lns, tl)
	s.mu.Unlock()
	var ln net.Listener = tl
	if s.cfg.ImplicitTLS {
		// Tracking sits under TLS, so go-smtp still sees a *tls.Conn.
		tl.implicitTLS = true
		ln = tls.NewListener(ln, s.cfg.TLS)
	}
	err := s.smtp.Serve(ln)
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if errors.Is(err, smtp.ErrServerClosed) || closing {
		// Shutdown closed the listener before go-smtp knew.
		return nil
	}
	return err
}

// Shutdown stops accepting, ends every session that has no transaction open
// at once with a 421 (RFC 5321 §3.8), lets those in a transaction (MAIL
// accepted) finish their message and hear its reply, and waits for them until
// ctx is done; then it drops the rest.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	// Listeners first, so that nobody connects after the 421s below.
	for _, l := range s.lns {
		l.Close()
	}
	idle := make([]*trackedConn, 0, len(s.conns))
	for c := range s.conns {
		if !c.inTxn.Load() {
			idle = append(idle, c)
		}
	}
	s.mu.Unlock()
	for _, c := range idle {
		c.bye(shutdownReply)
	}
	err := s.smtp.Shutdown(ctx)
	if err != nil {
		// go-smtp's Close does nothing after Shutdown, so the sessions
		// still open are dropped here.
		s.mu.Lock()
		open := make([]*trackedConn, 0, len(s.conns))
		for c := range s.conns {
			open = append(open, c)
		}
		s.mu.Unlock()
		for _, c := range open {
			c.Close()
		}
	}
	return err
}

// refuseConn answers a connection over a connection limit (RFC 5321
// §3.1: 421 instead of the greeting).
func (s *Server) refuseConn(c net.Conn, err error) {
	s.log.Info("rejected", "reason", err.Error(), "client", c.RemoteAddr().String())
	s.cfg.Metrics.Rejected(err.Error())
	if s.cfg.ImplicitTLS {
		return // no TLS, no words: just the close
	}
	io.WriteString(c, "421 4.7.0 "+s.cfg.Hostname+" "+err.Error()+", try again later\r\n")
}

// trackingListener records open connections so Shutdown can drop them.
// Shutdown closes it before go-smtp does, so closing is idempotent.
type trackingListener struct {
	net.Listener
	srv         *Server
	implicitTLS bool
	closeOnce   sync.Once
	closeErr    error
}

func (l *trackingListener) Close() error {
	l.closeOnce.Do(func() { l.closeErr = l.Listener.Close() })
	return l.closeErr
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, srv: l.srv}
	tc.tlsStarted.Store(l.implicitTLS)
	l.srv.mu.Lock()
	l.srv.conns[tc] = struct{}{}
	l.srv.mu.Unlock()
	tc.timer = time.AfterFunc(l.srv.cfg.SessionTimeout, func() { tc.bye(sessionTimeoutReply) })
	return tc, nil
}

type trackedConn struct {
	net.Conn
	srv  *Server
	once sync.Once
	// inTxn is set from an accepted MAIL to the end of the transaction:
	// Shutdown lets such a session finish its message.
	inTxn atomic.Bool
	// closeAfterWrite ends the connection once the reply being written
	// has gone out (a session that collected too many errors).
	closeAfterWrite atomic.Bool
	timer           *time.Timer // SessionTimeout
	// dataDeadline is set while the read deadline is the message data's
	// (setDataDeadline) rather than go-smtp's command deadline.
	dataDeadline atomic.Bool
	// ended is set once the server has ended the session by itself: a
	// command that go-smtp still runs after that is refused.
	ended atomic.Bool
	// tlsStarted is set once a TLS handshake has begun on the connection,
	// and tlsConn once a session runs over the finished handshake (at the
	// EHLO after it): the server's own replies go through it, never as
	// plain text into the TLS stream. In between there is nothing to write
	// them to.
	tlsStarted atomic.Bool
	tlsConn    atomic.Pointer[tls.Conn]
}

// markTLS returns cfg for STARTTLS with a hook that marks the tracked
// connection under the handshake.
func markTLS(cfg *tls.Config) *tls.Config {
	cfg = cfg.Clone()
	next := cfg.GetConfigForClient
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if tc, ok := hello.Conn.(*trackedConn); ok {
			tc.tlsStarted.Store(true)
		}
		if next != nil {
			return next(hello)
		}
		return nil, nil
	}
	return cfg
}

// replyConn is where the server's own replies go: the plain connection, or
// TLS over it once the handshake is done; nil while a handshake is under
// way or unfinished.
func (c *trackedConn) replyConn() net.Conn {
	if t := c.tlsConn.Load(); t != nil {
		return t
	}
	if c.tlsStarted.Load() {
		return nil
	}
	return c.Conn
}

// setDataDeadline sets c's read deadline for message data. A read that
// runs past it fails with errTimeout, an *smtp.SMTPError, and the
// connection closes after the reply: go-smtp reads BDAT chunks itself and
// answers a plain timeout error with a permanent 554 that names the socket
// addresses, then reads the rest of the chunk as commands.
func setDataDeadline(c net.Conn, t time.Time) {
	tc := trackedOf(c)
	if tc == nil {
		c.SetReadDeadline(t)
		return
	}
	tc.dataDeadline.Store(true)
	tc.Conn.SetReadDeadline(t)
}

// SetReadDeadline is go-smtp's (or TLS's on its behalf): a command deadline.
func (c *trackedConn) SetReadDeadline(t time.Time) error {
	c.dataDeadline.Store(false)
	return c.Conn.SetReadDeadline(t)
}

func (c *trackedConn) SetDeadline(t time.Time) error {
	c.dataDeadline.Store(false)
	return c.Conn.SetDeadline(t)
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return n, err
	}
	if c.dataDeadline.Load() {
		c.closeAfterWrite.Store(true)
		return n, errTimeout
	}
	c.commandTimeout()
	return n, err
}

// commandTimeout ends a session whose command deadline has passed. go-smtp
// reads command lines with bufio.Reader.ReadLine, which returns the bytes it
// holds as a whole line when the read under it fails: an unfinished line
// (MAIL FROM:<a@x.test> without its CRLF) would run, and a client could keep
// a connection for the session limit with one such line per command
// timeout. So the session ends here, before go-smtp sees the line, with the
// idle session's reply; whatever go-smtp then runs is refused (session.gone)
// and its reply has no connection left to go to. Between the start of TLS
// and the EHLO after it the relay holds nothing to write TLS through, so
// there go-smtp's own reply goes (its idle reply, or its answer to the
// unfinished line, which the session refuses) and the connection closes
// after it.
func (c *trackedConn) commandTimeout() {
	c.ended.Store(true)
	if c.replyConn() == nil {
		c.closeAfterWrite.Store(true)
		return
	}
	c.bye(idleReply)
}

// Replies written under go-smtp, when the server ends a session by itself.
// idleReply has go-smtp's own words for an idle client, so that a client
// hears the same whichever of the two ends the session.
const (
	shutdownReply       = "421 4.3.2 service shutting down, try again later\r\n"
	sessionTimeoutReply = "421 4.4.2 session too long, closing connection\r\n"
	idleReply           = "421 4.4.2 Idle timeout, bye bye\r\n"
)

// bye ends a session with reply. It is written under go-smtp, which is
// blocked reading the client's next command, through TLS when the session
// has it (and not at all while a handshake is unfinished).
func (c *trackedConn) bye(reply string) {
	c.ended.Store(true)
	if w := c.replyConn(); w != nil {
		c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		io.WriteString(w, reply)
	}
	c.Close()
}

func (c *trackedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if c.closeAfterWrite.Load() {
		c.Close()
	}
	return n, err
}

// trackedOf finds the tracked connection under a session's connection,
// which STARTTLS or implicit TLS wraps.
func trackedOf(c net.Conn) *trackedConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	t, _ := c.(*trackedConn)
	return t
}

// closeAfterReply ends a session's connection once its next reply is
// written.
func closeAfterReply(c net.Conn) {
	if t := trackedOf(c); t != nil {
		t.closeAfterWrite.Store(true)
	}
}

// beginTxn marks a session's connection as being in a transaction; it
// reports false when Shutdown has begun, and the transaction is then refused.
func (s *Server) beginTxn(c net.Conn) bool {
	t := trackedOf(c)
	if t == nil {
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	t.inTxn.Store(true)
	return true
}

// endTxn ends the mark; it reports whether Shutdown has begun, in which case
// the session is to end now.
func (s *Server) endTxn(c net.Conn) (closing bool) {
	t := trackedOf(c)
	if t == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t.inTxn.Store(false)
	return s.closing
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		if c.timer != nil {
			c.timer.Stop()
		}
		c.srv.mu.Lock()
		delete(c.srv.conns, c)
		c.srv.mu.Unlock()
	})
	return c.Conn.Close()
}

// NewSession implements smtp.Backend; go-smtp calls it at the first
// HELO/EHLO.
func (s *Server) NewSession(c *smtp.Conn) (smtp.Session, error) {
	if tc := trackedOf(c.Conn()); tc != nil {
		if tc.ended.Load() {
			return nil, errIdleTimeout
		}
		if t, ok := c.Conn().(*tls.Conn); ok {
			tc.tlsConn.Store(t)
		}
	}
	sess := &session{srv: s, conn: c}
	if ap, err := netip.ParseAddrPort(c.Conn().RemoteAddr().String()); err == nil {
		sess.addr = ap.Addr().Unmap()
		sess.ip = sess.addr.String()
	}
	return sess, nil
}

func (s *Server) isLocal(domain string) bool {
	return slices.Contains(s.cfg.Domains, domain)
}

// slogErrorLog adapts go-smtp's internal error log (panics, accept errors).
type slogErrorLog struct{ l *slog.Logger }

func (e slogErrorLog) Printf(format string, v ...any) {
	e.log(strings.TrimSpace(fmt.Sprintf(format, v...)))
}

func (e slogErrorLog) Println(v ...any) {
	e.log(strings.TrimSpace(fmt.Sprintln(v...)))
}

func (e slogErrorLog) log(detail string) {
	first, _, _ := strings.Cut(detail, "\n")
	switch {
	case strings.Contains(detail, "nil pointer dereference") && strings.Contains(detail, "handleBdat"):
		// go-smtp (v0.25, v0.26) starts the BDAT reader in a goroutine
		// that asks for the session only when it runs; when the client
		// has hung up by then, the session is gone and the goroutine
		// panics (go-smtp recovers it). Nothing is lost, but any client
		// can cause it, so it gets one quiet line, not an error with a
		// stack.
		e.l.Debug("client hung up during BDAT", "detail", first)
	case strings.Contains(detail, errTimeout.Message):
		// Under TLS the data timeout's error stays on the connection,
		// and go-smtp reports it again once the session has ended.
		e.l.Debug("session ended after a data timeout", "detail", first)
	default:
		e.l.Error("smtp server", "detail", detail)
	}
}
