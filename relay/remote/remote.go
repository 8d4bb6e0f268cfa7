// Package remote forwards messages to other mail servers over SMTP: it
// routes each recipient domain (transport map, else smarthost, else MX per
// RFC 5321 §5.1 with the implicit MX and RFC 7505 null MX), speaks ESMTP
// with opportunistic STARTTLS, SIZE, 8BITMIME, SMTPUTF8 (RFC 6531) and DSN
// (RFC 3461), sends the recipients of one destination in one transaction,
// and keeps connections open for the next message to the same place.
//
// Failures come back per recipient as a spool.Reply: the remote server's
// own (code, enhanced code and text as it sent them), or, for a failure
// that is no reply, a fixed text that says what failed and where, with the
// enhanced code of its kind (RFC 3463): 4.4.1 no answer (a refused or
// unanswered connection), 4.4.2 a connection that broke or timed out,
// 4.4.3 a DNS failure, 5.1.10 a null MX (RFC 7505), 5.1.2 a domain without
// MX or address. The Go error behind such a reply goes to the log only. A
// 5xx reply, a null MX or a domain that does not exist is permanent; the
// rest is temporary and will be retried.
package remote

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/relaymail/relay/relay/deliver"
	"github.com/relaymail/relay/spool"
)

// Config is the outbound setup.
type Config struct {
	// Hostname is our EHLO name.
	Hostname string
	// Transports route a domain to HOST:PORT, before anything else.
	Transports map[string]string
	// Relayhost, when set, takes every other domain (smarthost), with
	// AUTH when RelayUser is set.
	Relayhost, RelayUser, RelayPassword string
	// DNS is the resolver HOST:PORT; empty uses the system's.
	DNS string
	// Port is the SMTP port of MX hosts (25; tests change it).
	Port int
	// PerDestination bounds concurrent connections to one destination.
	PerDestination int
	// SlotWait is how long a delivery waits for a free connection to its
	// destination before it gives the recipients back as busy.
	SlotWait time.Duration
	// ConnectTimeout bounds a TCP connect; CommandTimeout each command.
	ConnectTimeout, CommandTimeout time.Duration
	// IdleTimeout is how long a connection waits for the next message.
	IdleTimeout time.Duration
}

// Transport implements deliver.Remote.
type Transport struct {
	cfg      Config
	spool    *spool.Spool
	log      *slog.Logger
	resolver *net.Resolver

	mu    sync.Mutex
	slots map[string]chan struct{} // per destination
	idle  map[string][]*pooled     // reusable connections per destination
	noTLS map[string]time.Time     // hosts that failed STARTTLS, until
}

type pooled struct {
	c     *smtp.Client
	host  string // HOST:PORT as routed
	peer  string // HOST[IP]:PORT, for replies and the log
	dsn   bool
	since time.Time
}

// New returns a transport reading bodies from sp.
func New(cfg Config, sp *spool.Spool, log *slog.Logger) *Transport {
	if cfg.Port == 0 {
		cfg.Port = 25
	}
	if cfg.PerDestination <= 0 {
		cfg.PerDestination = 4
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 30 * time.Second
	}
	if cfg.CommandTimeout <= 0 {
		cfg.CommandTimeout = 5 * time.Minute
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 30 * time.Second
	}
	if cfg.SlotWait <= 0 {
		cfg.SlotWait = time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Transport{cfg: cfg, spool: sp, log: log, resolver: net.DefaultResolver,
		slots: map[string]chan struct{}{}, idle: map[string][]*pooled{}, noTLS: map[string]time.Time{}}
	if cfg.DNS != "" {
		t.resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, cfg.DNS)
		}}
	}
	return t
}

// temp returns a temporary failure with the relay's own text; its
// arguments are names (hosts, domains), never Go error text.
func temp(enhanced, format string, a ...any) *spool.Reply {
	r := spool.TempReply(enhanced, fmt.Sprintf(format, a...))
	return &r
}

// perm returns a permanent failure with the relay's own text.
func perm(code int, enhanced, format string, a ...any) *spool.Reply {
	r := spool.NewReply(code, enhanced, fmt.Sprintf(format, a...))
	return &r
}

// errBusy means every connection to the destination stayed in use for
// SlotWait: nothing was tried.
var errBusy = temp("4.4.5", "destination busy")

// fromSMTP turns an error of the SMTP client at stage (MAIL, RCPT, ...)
// with peer into the recipient's reply: the server's reply as it sent it,
// or, when the server sent none (the connection broke or timed out), a
// fixed 4.4.2 that names the peer and the stage, the error itself logged.
func (t *Transport) fromSMTP(stage, peer string, err error) *spool.Reply {
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code >= 400 && se.Code < 600 {
		r := spool.NewReply(se.Code, enhancedCode(se.EnhancedCode), se.Message)
		return &r
	}
	t.log.Info("remote delivery failed", "host", peer, "stage", stage, "error", err)
	switch {
	case se != nil:
		// RFC 5321 §4.2: a reply other than 4yz or 5yz where those or
		// success were due leaves the outcome unknown; try again.
		return temp("4.5.0", "unexpected reply %d to %s from %s", se.Code, stage, peer)
	case isTimeout(err):
		return temp("4.4.2", "timeout during %s with %s", stage, peer)
	default:
		return temp("4.4.2", "connection with %s failed during %s", peer, stage)
	}
}

// enhancedCode renders an RFC 3463 code go-smtp parsed, "" for none.
func enhancedCode(c smtp.EnhancedCode) string {
	if c == smtp.NoEnhancedCode || c == smtp.EnhancedCodeNotSet {
		return ""
	}
	return fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
}

// dialReply is the reply for a connection that could not be made to hp.
func (t *Transport) dialReply(hp string, err error) *spool.Reply {
	t.log.Info("connect failed", "host", hp, "error", err)
	var opErr *net.OpError
	var addr net.Addr
	if errors.As(err, &opErr) {
		addr = opErr.Addr
	}
	peer := peerName(hp, addr)
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr):
		return temp("4.4.3", "DNS lookup for %s failed", hostOnly(hp))
	case errors.Is(err, syscall.ECONNREFUSED):
		return temp("4.4.1", "connection refused by %s", peer)
	case isTimeout(err):
		return temp("4.4.1", "no answer from %s", peer)
	default:
		return temp("4.4.1", "cannot connect to %s", peer)
	}
}

// peerName names a peer as HOST[IP]:PORT, the host as routed (hp is
// HOST:PORT) and the address it was reached at, when known.
func peerName(hp string, addr net.Addr) string {
	host, port, err := net.SplitHostPort(hp)
	ta, ok := addr.(*net.TCPAddr)
	if err != nil || !ok {
		return hp
	}
	return fmt.Sprintf("%s[%s]:%s", host, ta.IP, port)
}

// route is where a domain's mail goes: explicit hosts, or MX lookup.
type route struct {
	key   string   // destination, for pooling and concurrency
	hosts []string // HOST:PORT candidates in order
	auth  bool     // smarthost with credentials
}

func (t *Transport) route(ctx context.Context, domain string) (*route, *spool.Reply) {
	if hp, ok := t.cfg.Transports[domain]; ok {
		return &route{key: "transport:" + hp, hosts: []string{hp}}, nil
	}
	if t.cfg.Relayhost != "" {
		return &route{key: "relayhost:" + t.cfg.Relayhost, hosts: []string{t.cfg.Relayhost}, auth: t.cfg.RelayUser != ""}, nil
	}
	port := strconv.Itoa(t.cfg.Port)
	mxs, err := t.resolver.LookupMX(ctx, domain)
	var dnsErr *net.DNSError
	switch {
	case err == nil && len(mxs) == 1 && (mxs[0].Host == "." || mxs[0].Host == ""):
		// RFC 7505: the domain accepts no mail at all.
		return nil, perm(556, "5.1.10", "%s does not accept mail (null MX)", domain)
	case err == nil && len(mxs) > 0:
		r := &route{key: "mx:" + domain}
		for _, mx := range mxs {
			r.hosts = append(r.hosts, net.JoinHostPort(strings.TrimSuffix(mx.Host, "."), port))
		}
		return r, nil
	case err == nil || errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		// RFC 5321 §5.1: no MX, so the domain itself is the host, if it
		// has an address.
		addrs, aerr := t.resolver.LookupIPAddr(ctx, domain)
		if aerr != nil {
			if errors.As(aerr, &dnsErr) && dnsErr.IsNotFound {
				return nil, perm(550, "5.1.2", "%s: no MX or address records", domain)
			}
			t.log.Info("DNS lookup failed", "domain", domain, "error", aerr)
			return nil, temp("4.4.3", "DNS lookup for %s failed", domain)
		}
		if len(addrs) == 0 {
			return nil, perm(550, "5.1.2", "%s: no MX or address records", domain)
		}
		return &route{key: "mx:" + domain, hosts: []string{net.JoinHostPort(domain, port)}}, nil
	default:
		t.log.Info("DNS lookup failed", "domain", domain, "error", err)
		return nil, temp("4.4.3", "DNS lookup for %s failed", domain)
	}
}

// Deliver implements deliver.Remote: one transaction per destination.
func (t *Transport) Deliver(ctx context.Context, m *spool.Message, rcpts []int, started func(pos []int, host string)) []deliver.Outcome {
	out := make([]deliver.Outcome, len(rcpts))
	// Route each domain once, then group recipients by destination, so
	// three domains behind one smarthost are one transaction.
	routes := map[string]*route{}
	fails := map[string]*spool.Reply{}
	groups := map[string][]int{} // route key -> positions in rcpts
	var order []string
	for j, i := range rcpts {
		a := m.Rcpts[i].Address
		d := strings.ToLower(a[strings.LastIndexByte(a, '@')+1:])
		if _, seen := routes[d]; !seen {
			if _, failed := fails[d]; !failed {
				r, f := t.route(ctx, d)
				if f != nil {
					fails[d] = f
				} else {
					routes[d] = r
				}
			}
		}
		if f := fails[d]; f != nil {
			out[j] = outcome(f, "", false)
			continue
		}
		key := routes[d].key
		if _, ok := groups[key]; !ok {
			order = append(order, d)
		}
		groups[key] = append(groups[key], j)
	}
	for _, d := range order {
		r := routes[d]
		pos := groups[r.key]
		remote, remoteDSN, per, f := t.send(ctx, r, m, rcpts, pos, started)
		for k, j := range pos {
			switch {
			case f == errBusy:
				out[j] = deliver.Outcome{Busy: true}
			case f != nil:
				out[j] = outcome(f, remote, false)
			default:
				out[j] = outcome(per[k], remote, remoteDSN)
			}
		}
	}
	return out
}

func outcome(f *spool.Reply, remote string, remoteDSN bool) deliver.Outcome {
	o := deliver.Outcome{RemoteMTA: remote, RemoteDSN: remoteDSN}
	if f != nil {
		o.Reply = *f
	}
	return o
}

func (t *Transport) slot(key string) chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.slots[key]
	if !ok {
		s = make(chan struct{}, t.cfg.PerDestination)
		t.slots[key] = s
	}
	return s
}

// send runs one SMTP transaction for the recipients at positions pos. A
// non-nil failure applies to all of them; otherwise per holds each one's.
func (t *Transport) send(ctx context.Context, r *route, m *spool.Message, rcpts []int, pos []int, started func([]int, string)) (remote string, remoteDSN bool, per []*spool.Reply, all *spool.Reply) {
	s := t.slot(r.key)
	wait := time.NewTimer(t.cfg.SlotWait)
	select {
	case s <- struct{}{}:
		wait.Stop()
	case <-wait.C:
		return "", false, nil, errBusy
	case <-ctx.Done():
		wait.Stop()
		return "", false, nil, temp("4.4.5", "shutting down")
	}
	defer func() { <-s }()

	if started != nil {
		// The attempt begins here, also when the connection then fails;
		// it names the first host the route offers.
		started(pos, hostOnly(r.hosts[0]))
	}
	p, f := t.get(ctx, r)
	if f != nil {
		return "", false, nil, f
	}
	remote, remoteDSN = hostOnly(p.host), p.dsn
	c := p.c
	// A stuck server must not outlive a shutdown: cancelling ctx closes
	// the connection, which fails whatever command waits on it.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	keep := false
	defer func() {
		if keep {
			t.put(r.key, p)
		} else {
			c.Close()
		}
	}()

	if m.Params.SMTPUTF8 {
		if ok, _ := c.Extension("SMTPUTF8"); !ok {
			keep = true
			return remote, remoteDSN, nil, perm(553, "5.6.7", "%s does not support SMTPUTF8, which this message needs", remote)
		}
	}
	opts := &smtp.MailOptions{Size: m.Size, UTF8: m.Params.SMTPUTF8, Return: smtp.DSNReturn(m.Params.Ret), EnvelopeID: m.Params.EnvID}
	if err := c.Mail(m.From, opts); err != nil {
		f := t.fromSMTP("MAIL", p.peer, err)
		keep = c.Reset() == nil
		return remote, remoteDSN, nil, f
	}
	per = make([]*spool.Reply, len(pos))
	accepted := 0
	for k, j := range pos {
		rc := m.Rcpts[rcpts[j]]
		ro := &smtp.RcptOptions{}
		for _, n := range rc.Notify {
			ro.Notify = append(ro.Notify, smtp.DSNNotify(n))
		}
		if typ, a, ok := strings.Cut(rc.ORcpt, ";"); ok {
			ro.OriginalRecipientType, ro.OriginalRecipient = smtp.DSNAddressType(strings.ToUpper(typ)), a
		}
		if err := c.Rcpt(rc.Address, ro); err != nil {
			per[k] = t.fromSMTP("RCPT", p.peer, err)
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				return remote, remoteDSN, nil, per[k]
			}
			continue
		}
		accepted++
	}
	if accepted == 0 {
		keep = c.Reset() == nil
		return remote, remoteDSN, per, nil
	}
	body, err := t.spool.Body(m.ID)
	if err != nil {
		t.log.Error("read queued message", "id", m.ID, "error", err)
		lt := spool.LocalTrouble
		return remote, remoteDSN, nil, &lt
	}
	w, err := c.Data()
	if err != nil {
		f := t.fromSMTP("DATA", p.peer, err)
		keep = c.Reset() == nil
		return remote, remoteDSN, nil, f
	}
	if _, err := io.Copy(w, body); err != nil {
		w.Close()
		return remote, remoteDSN, nil, t.fromSMTP("message data", p.peer, err)
	}
	if _, err := w.CloseWithResponse(); err != nil {
		f := t.fromSMTP("end of DATA", p.peer, err)
		var se *smtp.SMTPError
		keep = errors.As(err, &se)
		for k := range per {
			if per[k] == nil {
				per[k] = f
			}
		}
		return remote, remoteDSN, per, nil
	}
	keep = ctx.Err() == nil
	return remote, remoteDSN, per, nil
}

func hostOnly(hp string) string {
	h, _, err := net.SplitHostPort(hp)
	if err != nil {
		return hp
	}
	return h
}

// get returns a connected, greeted client for the route: a pooled one that
// still answers RSET, or a new one.
func (t *Transport) get(ctx context.Context, r *route) (*pooled, *spool.Reply) {
	for {
		t.mu.Lock()
		ps := t.idle[r.key]
		var p *pooled
		if n := len(ps); n > 0 {
			p, t.idle[r.key] = ps[n-1], ps[:n-1]
		}
		t.mu.Unlock()
		if p == nil {
			break
		}
		if time.Since(p.since) < t.cfg.IdleTimeout && p.c.Reset() == nil {
			return p, nil
		}
		p.c.Close()
	}
	var last *spool.Reply
	for _, hp := range r.hosts {
		p, f := t.connect(ctx, hp, r.auth)
		if f == nil {
			return p, nil
		}
		last = f
		if f.Permanent {
			break
		}
	}
	if last == nil {
		last = temp("4.4.1", "no host to connect to")
	}
	return nil, last
}

func (t *Transport) put(key string, p *pooled) {
	p.since = time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.idle[key] = append(t.idle[key], p)
}

// Close closes pooled connections.
func (t *Transport) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, ps := range t.idle {
		for _, p := range ps {
			p.c.Quit()
		}
		delete(t.idle, k)
	}
}

// dial connects to hp and returns the connection and the peer's name,
// HOST[IP]:PORT.
func (t *Transport) dial(ctx context.Context, hp string) (net.Conn, string, *spool.Reply) {
	d := net.Dialer{Timeout: t.cfg.ConnectTimeout, Resolver: t.resolver}
	conn, err := d.DialContext(ctx, "tcp", hp)
	if err != nil {
		return nil, "", t.dialReply(hp, err)
	}
	return &deadlineConn{Conn: conn, d: t.cfg.CommandTimeout}, peerName(hp, conn.RemoteAddr()), nil
}

// deadlineConn bounds every read and write by d, under TLS and go-smtp, so
// that the greeting, a body the server stops reading and the reply to the
// final dot are all bounded (go-smtp sets no deadline on some of them).
type deadlineConn struct {
	net.Conn
	d time.Duration
}

func (c *deadlineConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(c.d))
	return c.Conn.Read(p)
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.d))
	return c.Conn.Write(p)
}

// SetDeadline and friends are go-smtp's; the per-call deadlines above
// replace them.
func (c *deadlineConn) SetDeadline(time.Time) error      { return nil }
func (c *deadlineConn) SetReadDeadline(time.Time) error  { return nil }
func (c *deadlineConn) SetWriteDeadline(time.Time) error { return nil }

// connect opens a session with opportunistic STARTTLS: when the server does
// not offer it, the session goes on in plain text; when the handshake fails,
// it reconnects in plain text and remembers that for an hour. A smarthost that needs AUTH gets it only over
// TLS (or on loopback).
func (t *Transport) connect(ctx context.Context, hp string, auth bool) (*pooled, *spool.Reply) {
	host := hostOnly(hp)
	t.mu.Lock()
	plainOnly := time.Now().Before(t.noTLS[hp])
	t.mu.Unlock()
	var c *smtp.Client
	var peer string
	isTLS := false
	if !plainOnly {
		conn, name, f := t.dial(ctx, hp)
		if f != nil {
			return nil, f
		}
		cfg := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12,
			// Opportunistic TLS: an MX rarely has a certificate for its
			// name, and refusing it would only fall back to plain text.
			InsecureSkipVerify: true}
		peer = name
		sc, tlsOK, err := openTLS(ctx, conn, t.cfg.Hostname, cfg)
		switch {
		case errors.Is(err, errTLSBroken):
			t.log.Info("STARTTLS failed, using plain text for an hour", "host", hp, "error", err)
			t.mu.Lock()
			t.noTLS[hp] = time.Now().Add(time.Hour)
			t.mu.Unlock()
		case err != nil:
			conn.Close()
			return nil, t.fromSMTP("greeting", peer, err)
		default:
			c, isTLS = smtp.NewClient(sc), tlsOK
			c.CommandTimeout, c.SubmissionTimeout = t.cfg.CommandTimeout, t.cfg.CommandTimeout
			if err := c.Hello(t.cfg.Hostname); err != nil {
				c.Close()
				return nil, t.fromSMTP("EHLO", peer, err)
			}
		}
	}
	if c == nil {
		conn, name, f := t.dial(ctx, hp)
		if f != nil {
			return nil, f
		}
		peer = name
		c = smtp.NewClient(conn)
		c.CommandTimeout, c.SubmissionTimeout = t.cfg.CommandTimeout, t.cfg.CommandTimeout
		if err := c.Hello(t.cfg.Hostname); err != nil {
			c.Close()
			return nil, t.fromSMTP("EHLO", peer, err)
		}
	}
	if auth {
		if !isTLS && !isLoopback(host) {
			c.Close()
			return nil, temp("4.7.0", "%s offers no STARTTLS; not sending the relayhost password in plain text", peer)
		}
		if err := c.Auth(sasl.NewPlainClient("", t.cfg.RelayUser, t.cfg.RelayPassword)); err != nil {
			c.Close()
			return nil, t.fromSMTP("AUTH", peer, err)
		}
	}
	dsn, _ := c.Extension("DSN")
	return &pooled{c: c, host: hp, peer: peer, dsn: dsn}, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
