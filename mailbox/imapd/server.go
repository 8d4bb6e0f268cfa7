// Package imapd is the IMAP front end of the mailbox store, on go-imap v2's
// imapserver: IMAP4rev1 (RFC 3501) and IMAP4rev2 (RFC 9051) with IDLE
// (RFC 2177), UIDPLUS (RFC 4315), MOVE (RFC 6851), SPECIAL-USE and
// CREATE-SPECIAL-USE (RFC 6154), ESEARCH (RFC 4731), SEARCHRES (RFC 5182),
// LIST-EXTENDED and LIST-STATUS (RFC 5258, 5819), STATUS=SIZE (RFC 8438),
// NAMESPACE (RFC 2342), BINARY (RFC 3516), LITERAL+ (RFC 7888), APPENDLIMIT
// (RFC 7889), UNSELECT, ENABLE and ID (RFC 2971).
//
// Each selected session keeps its own sequence-number map (the UIDs it has
// announced) and learns of other sessions' changes through the store's
// events, which are published only after their commit. New messages are
// found by UID (above the highest one the session knows), expunges and flag
// changes by the UIDs the events name; so a session's view never depends on
// the order in which concurrent writers published.
package imapd

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/relaymail/relay/internal/connlimit"
	"github.com/relaymail/relay/internal/diskspace"
	"github.com/relaymail/relay/internal/metrics"
	"github.com/relaymail/relay/internal/throttle"
	"github.com/relaymail/relay/mailbox"
)

// Config is the IMAP front end's setup.
type Config struct {
	// TLS enables STARTTLS when non-nil.
	TLS *tls.Config
	// PlainAuthNets are the client networks that may log in without TLS;
	// elsewhere LOGINDISABLED is advertised until STARTTLS. Default loopback.
	PlainAuthNets []netip.Prefix
	// Throttle slows down repeated login failures and, past its Limit,
	// refuses logins for a while (shared with SMTP); nil does neither.
	Throttle *throttle.Throttle
	// AppendLimit is the largest message APPEND accepts.
	AppendLimit uint32
	// Log receives one line per login and failure.
	Log *slog.Logger
	// Metrics counts failed logins; nil counts nothing.
	Metrics *metrics.Registry
	// Space refuses APPEND while the data directory's disk is below
	// min-free-space; nil never refuses.
	Space *diskspace.Guard
	// FieldCacheBytes bounds the memory of the cache of header fields
	// that SEARCH has been asked for (default 16 MiB; negative: no cache).
	FieldCacheBytes int64
	// Conns caps connections in total and per client address (IPv6 per
	// /64); nil: no cap. One limiter may be shared by several listeners.
	Conns *connlimit.Limiter
	// Version is the version the ID command answers with; default the
	// module version in the binary's build information.
	Version string
}

// Server serves IMAP on listeners.
type Server struct {
	cfg   Config
	boxes *mailbox.Store
	// Three imapserver instances: the library decides per server whether
	// plain-text login is allowed, the relay per client network; and it
	// knows a connection is TLS only by its type, which the guard in
	// front of every connection hides. So plain connections from trusted
	// and from other networks go to trusted and untrusted (both offering
	// STARTTLS, which the guard performs), TLS connections to secure
	// (login allowed, no STARTTLS).
	trusted, untrusted, secure *imapserver.Server
	fields                     *fieldCache
	// authenticate checks a login: the store's Authenticate, whose
	// bcrypt the fuzzer replaces (export_test.go).
	authenticate func(user, password string) (string, error)

	mu      sync.Mutex
	lns     map[net.Listener]struct{}
	closed  bool
	serving sync.WaitGroup // Serve calls under way
}

// ErrServerClosed is what Serve returns when called after Close.
var ErrServerClosed = errors.New("imapd: server closed")

// New returns an IMAP server on boxes.
func New(cfg Config, boxes *mailbox.Store) *Server {
	if cfg.PlainAuthNets == nil {
		cfg.PlainAuthNets = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.AppendLimit == 0 {
		cfg.AppendLimit = 50 << 20
	}
	if cfg.FieldCacheBytes == 0 {
		cfg.FieldCacheBytes = defaultFieldCacheBytes
	}
	if cfg.Version == "" {
		cfg.Version = moduleVersion()
	}
	s := &Server{cfg: cfg, boxes: boxes, fields: newFieldCache(cfg.FieldCacheBytes), lns: map[net.Listener]struct{}{},
		authenticate: boxes.Authenticate}
	// IMAP4rev2 brings NAMESPACE, UIDPLUS, ESEARCH, SEARCHRES,
	// LIST-EXTENDED, LIST-STATUS, MOVE, STATUS=SIZE and CHILDREN to
	// IMAP4rev1 clients too.
	caps := imap.CapSet{
		imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {},
		imap.CapSpecialUse: {}, imap.CapCreateSpecialUse: {},
		// No LITERAL+: imapserver answers an over-limit non-synchronizing
		// APPEND without reading the literal, and would run its bytes as
		// commands. LITERAL- caps those at 4 KiB, far under APPENDLIMIT.
		imap.CapBinary: {},
	}
	mk := func(tlsCfg *tls.Config, insecure bool) *imapserver.Server {
		return imapserver.New(&imapserver.Options{
			NewSession:   s.newSession,
			Caps:         caps,
			TLSConfig:    tlsCfg,
			InsecureAuth: insecure,
			Logger:       logAdapter{cfg.Log},
		})
	}
	s.trusted, s.untrusted, s.secure = mk(cfg.TLS, true), mk(cfg.TLS, false), mk(nil, true)
	return s
}

func (s *Server) newSession(c *imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
	sess := &session{srv: s, conn: c}
	if g, ok := c.NetConn().(*guardConn); ok {
		sess.guard = g
	}
	if ap, err := netip.ParseAddrPort(c.NetConn().RemoteAddr().String()); err == nil {
		sess.addr = ap.Addr().Unmap()
		sess.ip = sess.addr.String()
	}
	return sess, nil, nil
}

func (s *Server) trustedAddr(a net.Addr) bool {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return false
	}
	for _, p := range s.cfg.PlainAuthNets {
		if p.Contains(ap.Addr().Unmap()) {
			return true
		}
	}
	return false
}

// Serve accepts connections on ln until Close or until ln is closed,
// handing each to the server instance its client network calls for. It
// returns nil when it was stopped that way.
func (s *Server) Serve(ln net.Listener) error {
	// Registered under the lock that Close takes, so that Close either
	// sees ln and closes it, or this Serve sees closed and never starts.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.lns[ln] = struct{}{}
	s.serving.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.lns, ln)
		s.mu.Unlock()
		s.serving.Done()
	}()
	if s.cfg.Conns != nil {
		ln = connlimit.Listen(ln, s.cfg.Conns, s.refuseConn)
	}
	tr, un, sec := newChanListener(ln), newChanListener(ln), newChanListener(ln)
	var wg sync.WaitGroup
	wg.Go(func() { s.trusted.Serve(tr) })
	wg.Go(func() { s.untrusted.Serve(un) })
	wg.Go(func() { s.secure.Serve(sec) })
	var err error
	var delay time.Duration
	for {
		c, aerr := ln.Accept()
		if aerr != nil {
			var ne net.Error
			if errors.As(aerr, &ne) && ne.Timeout() || isTemporary(aerr) {
				// Out of file descriptors and the like: wait and go on,
				// as net/http does, rather than take the relay down.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.cfg.Log.Warn("imap accept", "error", aerr, "retry_in", delay)
				time.Sleep(delay)
				continue
			}
			if !errors.Is(aerr, net.ErrClosed) {
				err = aerr
			}
			break
		}
		delay = 0
		isTLS := tlsUnder(c)
		g := newGuard(c, s, isTLS)
		g.secureLn = sec
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			g.ip = ap.Addr().Unmap().String()
		}
		to := un
		switch {
		case isTLS:
			to = sec
		case s.trustedAddr(c.RemoteAddr()):
			to = tr
		}
		if !to.offer(g) {
			c.Close()
		}
	}
	tr.Close()
	un.Close()
	sec.Close()
	wg.Wait()
	return err
}

// Close stops every Serve, waits for them to return and closes every
// connection; imapserver has no graceful shutdown. imapserver's own Close
// must not run while its Serve may still be starting (it waits on a
// WaitGroup that Serve adds to without a lock), so it comes only after
// every Serve here, and with it every imapserver Serve, has returned.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.lns {
		ln.Close()
	}
	s.mu.Unlock()
	s.serving.Wait()
	return errors.Join(s.trusted.Close(), s.untrusted.Close(), s.secure.Close())
}

// refuseConn answers a connection over a connection limit with the
// greeting BYE (RFC 9051 §7.1.5) and the RFC 5530 code for "try later";
// connlimit closes it after. On IMAPS the write performs the handshake
// first, within the deadline connlimit gives the refusal.
func (s *Server) refuseConn(c net.Conn, err error) {
	s.cfg.Log.Info("imap connection refused", "client", c.RemoteAddr().String(), "reason", err.Error())
	io.WriteString(c, "* BYE [UNAVAILABLE] "+err.Error()+", try again later\r\n")
}

// tlsUnder reports whether c, or a connection a wrapper such as
// connlimit's holds, is TLS.
func tlsUnder(c net.Conn) bool {
	for {
		if _, ok := c.(*tls.Conn); ok {
			return true
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return false
		}
		c = u.NetConn()
	}
}

// isTemporary reports accept errors worth retrying (EMFILE, ENFILE,
// ECONNABORTED...), which the net package still marks Temporary.
func isTemporary(err error) bool {
	t, ok := err.(interface{ Temporary() bool })
	return ok && t.Temporary()
}

// chanListener feeds connections accepted elsewhere to an imapserver.
type chanListener struct {
	addr net.Addr
	ch   chan net.Conn
	once sync.Once
	done chan struct{}
}

func newChanListener(l net.Listener) *chanListener {
	return &chanListener{addr: l.Addr(), ch: make(chan net.Conn), done: make(chan struct{})}
}

// offer hands c to the imapserver accepting on l; false once l is closed.
func (l *chanListener) offer(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }

type logAdapter struct{ l *slog.Logger }

func (a logAdapter) Printf(format string, args ...any) {
	a.l.Warn("imap server", "detail", fmt.Sprintf(format, args...))
}
