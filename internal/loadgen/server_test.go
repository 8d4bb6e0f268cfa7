package loadgen

// Test servers on 127.0.0.1:0: a go-smtp server whose backend counts what
// it receives, and go-imap's in-memory IMAP server.

import (
	"bytes"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// sink is a go-smtp backend that counts messages and recipients, refuses
// recipients whose local part is in reject, and requires AUTH when
// needAuth is set. deliver, if set, is called with each message's
// recipients and body.
type sink struct {
	reject   map[string]bool
	needAuth bool
	deliver  func(rcpts []string, body []byte)

	mu       sync.Mutex
	messages int
	rcpts    int
	users    map[string]bool // authenticated users seen
}

func (s *sink) NewSession(c *smtp.Conn) (smtp.Session, error) { return &sinkSession{sink: s}, nil }

type sinkSession struct {
	sink  *sink
	user  string
	rcpts []string
}

func (ss *sinkSession) Reset()        { ss.rcpts = nil }
func (ss *sinkSession) Logout() error { return nil }

func (ss *sinkSession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (ss *sinkSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		if pass != "secret" {
			return smtp.ErrAuthFailed
		}
		ss.user = user
		ss.sink.mu.Lock()
		ss.sink.users[user] = true
		ss.sink.mu.Unlock()
		return nil
	}), nil
}

func (ss *sinkSession) Mail(from string, opts *smtp.MailOptions) error {
	if ss.sink.needAuth && ss.user == "" {
		return smtp.ErrAuthRequired
	}
	return nil
}

func (ss *sinkSession) Rcpt(to string, opts *smtp.RcptOptions) error {
	local, _, _ := strings.Cut(to, "@")
	if ss.sink.reject[local] {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	body, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	ss.sink.mu.Lock()
	ss.sink.messages++
	ss.sink.rcpts += len(ss.rcpts)
	ss.sink.mu.Unlock()
	if ss.sink.deliver != nil {
		ss.sink.deliver(ss.rcpts, body)
	}
	return nil
}

func (s *sink) counts() (messages, rcpts int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.messages, s.rcpts
}

// recordingListener remembers whether some single read from a client held
// both a RCPT and a DATA command: the mark of a pipelined transaction.
type recordingListener struct {
	net.Listener
	mu        sync.Mutex
	pipelined bool
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &recordingConn{Conn: c, l: l}, nil
}

func (l *recordingListener) sawPipelining() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pipelined
}

type recordingConn struct {
	net.Conn
	l *recordingListener
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if b := p[:n]; bytes.Contains(b, []byte("RCPT TO:")) && bytes.Contains(b, []byte("DATA\r\n")) {
		c.l.mu.Lock()
		c.l.pipelined = true
		c.l.mu.Unlock()
	}
	return n, err
}

// startSMTP serves s on 127.0.0.1:0 and returns its address and listener.
func startSMTP(t *testing.T, s *sink) (string, *recordingListener) {
	t.Helper()
	if s.users == nil {
		s.users = map[string]bool{}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rl := &recordingListener{Listener: ln}
	srv := smtp.NewServer(s)
	srv.Domain = "sink.test"
	srv.AllowInsecureAuth = true
	srv.MaxRecipients = 100
	go srv.Serve(rl)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), rl
}

// memIMAP is go-imap's in-memory server with users that each have an
// INBOX.
type memIMAP struct {
	addr  string
	users map[string]*imapmemserver.User
}

func startIMAP(t *testing.T, logins []string, pass string) *memIMAP {
	t.Helper()
	mem := imapmemserver.New()
	m := &memIMAP{users: map[string]*imapmemserver.User{}}
	for _, l := range logins {
		u := imapmemserver.NewUser(l, pass)
		if err := u.Create("INBOX", nil); err != nil {
			t.Fatal(err)
		}
		mem.AddUser(u)
		m.users[l] = u
	}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		InsecureAuth: true,
		Logger:       discardLogger{},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	m.addr = ln.Addr().String()
	return m
}

// deliver appends body to the INBOX of each recipient.
func (m *memIMAP) deliver(t *testing.T, rcpts []string, body []byte) {
	for _, r := range rcpts {
		u := m.users[r]
		if u == nil {
			t.Errorf("delivery to unknown user %s", r)
			continue
		}
		if _, err := u.Append("INBOX", literal{bytes.NewReader(body)}, &imap.AppendOptions{}); err != nil {
			t.Errorf("append for %s: %v", r, err)
		}
	}
}

// literal is an imap.LiteralReader over a bytes.Reader.
type literal struct{ *bytes.Reader }

func (l literal) Size() int64 { return l.Reader.Size() }

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}

// inboxCount returns the number of messages in login's INBOX.
func (m *memIMAP) inboxCount(t *testing.T, login string) uint32 {
	t.Helper()
	st, err := m.users[login].Status("INBOX", &imap.StatusOptions{NumMessages: true})
	if err != nil {
		t.Fatal(err)
	}
	return *st.NumMessages
}
