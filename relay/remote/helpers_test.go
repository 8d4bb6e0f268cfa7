package remote_test

// Fakes that fail on purpose: a scripted SMTP server (go-smtp) that answers
// per recipient and per attempt, drops the connection mid-DATA or hangs,
// and a DNS server on loopback (miekg/dns) that serves MX, A, null MX and
// SERVFAIL. Both record what they were asked.

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaymail/relay/internal/testkit"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/miekg/dns"

	"github.com/relaymail/relay/internal/tlsconf"
	"github.com/relaymail/relay/relay/deliver"
	"github.com/relaymail/relay/relay/remote"
	"github.com/relaymail/relay/spool"
)

// Scripted replies. A reply is "250", "450 4.2.0 text", "550 5.1.1 text",
// or, for DATA only, one of the actions below.
const (
	// dropAfterBody closes the connection after reading the whole body,
	// before the reply to the final dot.
	dropAfterBody = "drop"
	// dropEarly closes the connection after reading the first bytes.
	dropEarly = "drop-early"
	// hang blocks until the test ends without reading the body or
	// answering.
	hang = "hang"
)

// script says how the server answers. Attempt n (from 1) of a recipient or
// of DATA gets element n-1 of its list; past the end the last element
// repeats; an empty list means 250.
type script struct {
	rcpt map[string][]string // by lower-cased address
	data []string
	mail []string
	// hangRcpt makes every RCPT block until the test ends.
	hangRcpt bool
}

// option is a capability of the scripted server.
type option func(*scripted)

func withDSN(s *scripted)  { s.srv.EnableDSN = true }
func withUTF8(s *scripted) { s.srv.EnableSMTPUTF8 = true }

// withTLS offers STARTTLS with a self-signed certificate.
func withTLS(s *scripted) { s.tls = true }

// withOldTLS offers STARTTLS but only TLS 1.0, which the transport
// refuses, so the handshake fails.
func withOldTLS(s *scripted) { s.tls, s.oldTLS = true, true }

// withAuth requires nothing but accepts AUTH PLAIN and records it.
func withAuth(s *scripted) { s.auth = true }

// at listens on host instead of 127.0.0.1 (port 0 picks one).
func at(hostport string) option { return func(s *scripted) { s.listen = hostport } }

// rcptRec is one RCPT TO as received.
type rcptRec struct {
	Addr   string
	Notify []smtp.DSNNotify
	ORcpt  string // "TYPE;address" as go-smtp decoded it, or ""
	Reply  string
}

// txn is one transaction as received: MAIL, its RCPTs, and the body when
// DATA came.
type txn struct {
	Conn   int // connection number, from 1
	TLS    bool
	Auth   string // AUTH PLAIN username on the connection
	From   string
	Opts   smtp.MailOptions
	Rcpts  []rcptRec
	Data   bool   // DATA was sent
	Body   string // what was read of it
	Result string // scripted DATA action or reply
}

// accepted returns the recipients answered 250.
func (x txn) accepted() []string {
	var out []string
	for _, r := range x.Rcpts {
		if r.Reply == "250" {
			out = append(out, r.Addr)
		}
	}
	return out
}

// scripted is a go-smtp server on loopback run from a script.
type scripted struct {
	t      *testing.T
	srv    *smtp.Server
	ln     net.Listener
	addr   string
	listen string
	tls    bool
	oldTLS bool
	auth   bool

	release chan struct{} // closed when the test ends: hangs return

	mu        sync.Mutex
	sc        script
	conns     int
	txns      []*txn
	rcptTries map[string]int
	dataTries int
	mailTries int
	hellos    []string
	hung      int // RCPTs held by hangRcpt so far
}

// helloNames returns the EHLO names, one per EHLO.
func (s *scripted) helloNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.hellos...)
}

func newScripted(t *testing.T, sc script, opts ...option) *scripted {
	t.Helper()
	s := &scripted{t: t, sc: sc, listen: "127.0.0.1:0", release: make(chan struct{}), rcptTries: map[string]int{}}
	s.srv = smtp.NewServer(s)
	s.srv.Domain = "mx.scripted.test"
	s.srv.AllowInsecureAuth = true
	s.srv.MaxMessageBytes = 64 << 20
	s.srv.ReadTimeout = 30 * time.Second
	s.srv.ErrorLog = discardLog{}
	for _, o := range opts {
		o(s)
	}
	if s.tls {
		certs, err := tlsconf.Load("", "", t.TempDir(), "localhost")
		if err != nil {
			t.Fatalf("self-signed certificate: %v", err)
		}
		s.srv.TLSConfig = certs.Config()
		if s.oldTLS {
			s.srv.TLSConfig = s.srv.TLSConfig.Clone()
			s.srv.TLSConfig.MinVersion, s.srv.TLSConfig.MaxVersion = tls.VersionTLS10, tls.VersionTLS10
		}
	}
	ln, err := net.Listen("tcp", s.listen)
	if err != nil {
		t.Fatalf("listen %s: %v", s.listen, err)
	}
	s.ln = &countingListener{Listener: ln, s: s}
	s.addr = ln.Addr().String()
	go s.srv.Serve(s.ln)
	t.Cleanup(func() {
		close(s.release)
		s.srv.Close()
	})
	return s
}

type discardLog struct{}

func (discardLog) Printf(string, ...any) {}
func (discardLog) Println(...any)        {}

type countingListener struct {
	net.Listener
	s *scripted
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.s.mu.Lock()
		l.s.conns++
		l.s.mu.Unlock()
	}
	return c, err
}

// port is the listening port.
func (s *scripted) port() int {
	_, p, _ := net.SplitHostPort(s.addr)
	n, _ := strconv.Atoi(p)
	return n
}

// connections is how many TCP connections the server accepted.
func (s *scripted) connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

// hanging is how many RCPT commands hangRcpt holds or has held.
func (s *scripted) hanging() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hung
}

// transactions returns copies of the transactions so far.
func (s *scripted) transactions() []txn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]txn, len(s.txns))
	for i, x := range s.txns {
		out[i] = *x
		out[i].Rcpts = append([]rcptRec(nil), x.Rcpts...)
	}
	return out
}

// delivered returns the transactions whose DATA was answered 250.
func (s *scripted) delivered() []txn {
	var out []txn
	for _, x := range s.transactions() {
		if x.Data && x.Result == "250" {
			out = append(out, x)
		}
	}
	return out
}

// NewSession implements smtp.Backend.
func (s *scripted) NewSession(c *smtp.Conn) (smtp.Session, error) {
	s.mu.Lock()
	n := s.conns
	s.hellos = append(s.hellos, c.Hostname())
	s.mu.Unlock()
	return &session{s: s, c: c, conn: n}, nil
}

// pick returns reply n (from 1) of list.
func pick(list []string, n int) string {
	if len(list) == 0 {
		return "250"
	}
	return list[min(n, len(list))-1]
}

// replyErr turns "450 4.2.0 text" into the error go-smtp sends; "250" is nil.
func replyErr(reply string) error {
	f := strings.Fields(reply)
	code, _ := strconv.Atoi(f[0])
	if code < 400 {
		return nil
	}
	e := &smtp.SMTPError{Code: code, EnhancedCode: smtp.NoEnhancedCode, Message: "scripted"}
	if len(f) > 1 {
		var a, b, c int
		if _, err := fmt.Sscanf(f[1], "%d.%d.%d", &a, &b, &c); err == nil {
			e.EnhancedCode = smtp.EnhancedCode{a, b, c}
			f = f[1:]
		}
	}
	if len(f) > 1 {
		e.Message = strings.Join(f[1:], " ")
	}
	return e
}

type session struct {
	s    *scripted
	c    *smtp.Conn
	conn int
	user string
	cur  *txn
}

func (ss *session) Reset()        { ss.cur = nil }
func (ss *session) Logout() error { return nil }

func (ss *session) AuthMechanisms() []string {
	if !ss.s.auth {
		return nil
	}
	return []string{sasl.Plain}
}

func (ss *session) Auth(mech string) (sasl.Server, error) {
	if !ss.s.auth || mech != sasl.Plain {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if pass != "secret" {
			return smtp.ErrAuthFailed
		}
		ss.user = user
		return nil
	}), nil
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	s := ss.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mailTries++
	_, isTLS := ss.c.TLSConnectionState()
	x := &txn{Conn: ss.conn, TLS: isTLS, Auth: ss.user, From: from}
	if opts != nil {
		x.Opts = *opts
	}
	s.txns = append(s.txns, x)
	if err := replyErr(pick(s.sc.mail, s.mailTries)); err != nil {
		x.Result = pick(s.sc.mail, s.mailTries)
		return err
	}
	ss.cur = x
	return nil
}

func (ss *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	s := ss.s
	s.mu.Lock()
	hangs := s.sc.hangRcpt
	if hangs {
		s.hung++
	}
	s.mu.Unlock()
	if hangs {
		<-s.release
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "test over"}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key := strings.ToLower(to)
	s.rcptTries[key]++
	reply := pick(s.sc.rcpt[key], s.rcptTries[key])
	r := rcptRec{Addr: to, Reply: strings.Fields(reply)[0]}
	if opts != nil {
		r.Notify = opts.Notify
		if opts.OriginalRecipient != "" {
			r.ORcpt = string(opts.OriginalRecipientType) + ";" + opts.OriginalRecipient
		}
	}
	ss.cur.Rcpts = append(ss.cur.Rcpts, r)
	return replyErr(reply)
}

func (ss *session) Data(r io.Reader) error {
	s := ss.s
	s.mu.Lock()
	s.dataTries++
	action := pick(s.sc.data, s.dataTries)
	x := ss.cur
	x.Data, x.Result = true, action
	s.mu.Unlock()

	var body bytes.Buffer
	switch action {
	case hang:
		<-s.release
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "test over"}
	case dropEarly:
		io.CopyN(&body, r, 16)
		ss.c.Conn().Close()
	default:
		if _, err := io.Copy(&body, r); err != nil {
			return err
		}
		if action == dropAfterBody {
			ss.c.Conn().Close()
		}
	}
	s.mu.Lock()
	x.Body = body.String()
	s.mu.Unlock()
	if action == dropAfterBody || action == dropEarly {
		return errors.New("dropped")
	}
	return replyErr(action)
}

// silent is a TCP server that accepts connections and never says a word.
func silent(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// closedAddr returns a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// queue is a real spool on Badger in a temporary directory.
type queue struct {
	sp *spool.Spool
}

func newQueue(t *testing.T) *queue {
	t.Helper()
	engine, _ := testkit.Badger(t, nil)
	return &queue{sp: spool.New(engine, nil)}
}

// add queues body from alice@a.test to rcpts (after edit has set params)
// and returns the message as stored.
func (q *queue) add(t *testing.T, body string, edit func(*spool.Message), rcpts ...string) *spool.Message {
	t.Helper()
	m := &spool.Message{ID: q.sp.NewID(), From: "alice@a.test"}
	for _, r := range rcpts {
		m.Rcpts = append(m.Rcpts, spool.Recipient{Address: r})
	}
	if edit != nil {
		edit(m)
	}
	if err := q.sp.Enqueue(m, strings.NewReader(body)); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	got, err := q.sp.Get(m.ID)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// all returns the indexes of every recipient of m.
func all(m *spool.Message) []int {
	idx := make([]int, len(m.Rcpts))
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// newTransport returns a transport with short timeouts, closed at the end
// of the test. The resolver is a closed port unless cfg names one, so that
// no test asks the machine's DNS.
func newTransport(t *testing.T, q *queue, cfg remote.Config) *remote.Transport {
	t.Helper()
	if cfg.Hostname == "" {
		cfg.Hostname = "relay.a.test"
	}
	if cfg.DNS == "" {
		cfg.DNS = "127.0.0.1:1"
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 2 * time.Second
	}
	if cfg.CommandTimeout == 0 {
		cfg.CommandTimeout = 5 * time.Second
	}
	tr := remote.New(cfg, q.sp, nil)
	t.Cleanup(tr.Close)
	return tr
}

// deliverWithin runs Deliver and fails the test unless it returns within d.
// On a timeout it returns nil and ok false; the call goes on in the
// background until the test's servers close.
func deliverWithin(t *testing.T, tr *remote.Transport, m *spool.Message, rcpts []int, d time.Duration) (out []deliver.Outcome, took time.Duration, ok bool) {
	t.Helper()
	done := make(chan []deliver.Outcome, 1)
	start := time.Now()
	go func() { done <- tr.Deliver(context.Background(), m, rcpts, nil) }()
	select {
	case out := <-done:
		return out, time.Since(start), true
	case <-time.After(d):
		return nil, d, false
	}
}

// deliverNow runs Deliver with a 20 s bound and fails the test on a timeout.
func deliverNow(t *testing.T, tr *remote.Transport, m *spool.Message, rcpts ...int) []deliver.Outcome {
	t.Helper()
	if rcpts == nil {
		rcpts = all(m)
	}
	out, _, ok := deliverWithin(t, tr, m, rcpts, 20*time.Second)
	if !ok {
		t.Fatalf("Deliver did not return within 20 s")
	}
	if len(out) != len(rcpts) {
		t.Fatalf("Deliver returned %d outcomes for %d recipients", len(out), len(rcpts))
	}
	return out
}

// describe renders an outcome for failure messages.
func describe(o deliver.Outcome) string {
	if o.Reply.IsZero() {
		return fmt.Sprintf("delivered (remote %q, dsn %v)", o.RemoteMTA, o.RemoteDSN)
	}
	kind := "temporary"
	if o.Reply.Permanent {
		kind = "permanent"
	}
	return fmt.Sprintf("%s %q (remote %q)", kind, o.Reply, o.RemoteMTA)
}

// checkOK fails unless o is a success.
func checkOK(t *testing.T, what string, o deliver.Outcome) {
	t.Helper()
	if !o.Reply.IsZero() {
		t.Errorf("%s: %s, want delivered", what, describe(o))
	}
}

// checkFail fails unless o is a failure of the given kind whose text holds
// want.
func checkFail(t *testing.T, what string, o deliver.Outcome, permanent bool, want string) {
	t.Helper()
	if o.Reply.IsZero() || o.Reply.Permanent != permanent || !strings.Contains(o.Reply.String(), want) {
		kind := "temporary"
		if permanent {
			kind = "permanent"
		}
		t.Errorf("%s: %s, want a %s failure with %q", what, describe(o), kind, want)
	}
}

// zone is what the loopback DNS server knows: records by owner name (with
// the trailing dot), and names that fail.
type zone struct {
	mu       sync.Mutex
	rrs      map[string][]dns.RR
	servfail map[string]bool
	queries  []string // "TYPE name"
}

// dnsServer serves z over UDP on loopback and returns its address.
func dnsServer(t *testing.T, z *zone) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: z, NotifyStartedFunc: func() { close(started) }}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return pc.LocalAddr().String()
}

// rr parses records in zone-file syntax.
func (z *zone) add(t *testing.T, lines ...string) {
	t.Helper()
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.rrs == nil {
		z.rrs = map[string][]dns.RR{}
	}
	for _, l := range lines {
		r, err := dns.NewRR(l)
		if err != nil {
			t.Fatalf("record %q: %v", l, err)
		}
		name := strings.ToLower(r.Header().Name)
		z.rrs[name] = append(z.rrs[name], r)
	}
}

func (z *zone) fail(name string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.servfail == nil {
		z.servfail = map[string]bool{}
	}
	z.servfail[strings.ToLower(dns.Fqdn(name))] = true
}

// asked returns the queries so far.
func (z *zone) asked() []string {
	z.mu.Lock()
	defer z.mu.Unlock()
	return append([]string(nil), z.queries...)
}

// ServeDNS implements dns.Handler: the records of the asked type, NOERROR
// with no answer for a known name without them, NXDOMAIN for an unknown
// name, SERVFAIL for a failing one.
func (z *zone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	z.mu.Lock()
	for _, q := range req.Question {
		name := strings.ToLower(q.Name)
		z.queries = append(z.queries, dns.TypeToString[q.Qtype]+" "+name)
		switch {
		case z.servfail[name]:
			m.Rcode = dns.RcodeServerFailure
		case z.rrs[name] == nil:
			m.Rcode = dns.RcodeNameError
		default:
			for _, r := range z.rrs[name] {
				if r.Header().Rrtype == q.Qtype {
					m.Answer = append(m.Answer, r)
				}
			}
		}
	}
	z.mu.Unlock()
	w.WriteMsg(m)
}
