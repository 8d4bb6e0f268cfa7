package smtpd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/relaymail/relay/internal/addr"
	"github.com/relaymail/relay/internal/connlimit"
	"github.com/relaymail/relay/internal/diskspace"
	"github.com/relaymail/relay/internal/store"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

// Replies. Each is returned bare, never wrapped (see the package doc).
var (
	errRelayDenied = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "relay access denied"}
	errBadAddress  = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "malformed address"}
	errBadSender   = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "malformed sender address"}
	// RFC 6531 §3.4: a non-ASCII address without SMTPUTF8.
	errNeedUTF8 = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 6, 7}, Message: "non-ASCII address needs SMTPUTF8"}
	// RFC 5321 §2.3.8: lines end in CRLF only. Accepting a bare LF or CR
	// lets a client smuggle a second message past a server that reads the
	// end of data differently (SMTP smuggling).
	errBareNewline = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "message contains a bare LF or CR; lines must end with CRLF"}
	// With bare-newline = normalize: a bare LF next to a line of a single
	// dot, where another server would end the data.
	errSmuggling = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "message contains a bare LF where it could end the data; lines must end with CRLF"}
	// RFC 5322 §2.2 and §3.5: a message has no NUL octets.
	errNULReply        = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "message contains a NUL octet, which is not allowed in mail"}
	errHeader8bitReply = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "8-bit data in the message header needs SMTPUTF8 or BODY=8BITMIME"}
	errLineTooLong     = &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 6}, Message: "line too long, closing connection"}
	errTimeout         = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "timeout reading message data, closing connection"}
	errLocal           = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "temporary local problem, try again later"}
	errNoMail          = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "MAIL first"}
	errNoUser          = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	errUserLookup      = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "temporary local problem looking up the recipient"}
	// RFC 6409 §4.3 and RFC 4954 §4: submission needs AUTH, and AUTH needs
	// TLS except from trusted networks.
	errAuthRequired = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "authentication required"}
	errNeedTLS      = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "must issue STARTTLS first"}
	errAuthFailed   = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "authentication credentials invalid"}
	errNoMech       = &smtp.SMTPError{Code: 504, EnhancedCode: smtp.EnhancedCode{5, 5, 4}, Message: "unrecognized authentication mechanism"}
	errNotYours     = &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "sender address not owned by the authenticated user"}
	errShutdown     = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "service shutting down, try again later"}
	// errIdleTimeout refuses what go-smtp runs after the session ended at
	// a command timeout (trackedConn.commandTimeout).
	errIdleTimeout = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Idle timeout, bye bye"}
	// RFC 5321 §4.2.5 lets a server end a session with 421; Postfix does
	// so after smtpd_hard_error_limit errors.
	errTooManyErrors = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "too many errors, closing connection"}
	errRateIP        = &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "too many messages from your address, try again later"}
	errRateUser      = &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "too many messages from your account, try again later"}
)

// session is one SMTP transaction state machine on one connection.
type session struct {
	srv  *Server
	conn *smtp.Conn
	addr netip.Addr
	ip   string
	user string // authenticated account, "" before AUTH
	errs int    // refused commands so far

	hasFrom bool
	from    string
	params  spool.MailParams
	rcpts   []spool.Recipient

	// mu guards the envelope and closeAfterReply: under BDAT, go-smtp
	// runs Data in its own goroutine while RSET may call Reset.
	mu              sync.Mutex
	closeAfterReply bool
}

func (s *session) Reset() {
	closing := s.srv.endTxn(s.conn.Conn())
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closeAfterReply || closing {
		// go-smtp resets after writing the DATA reply; a timed-out client
		// may still be sending body bytes that must not be read as
		// commands (go-smtp #196). The net.Conn is closed directly:
		// go-smtp calls Reset with its connection lock held, which
		// smtp.Conn.Close would take again.
		s.conn.Conn().Close()
	}
	s.clear()
}

func (s *session) clear() {
	s.hasFrom = false
	s.from = ""
	s.params = spool.MailParams{}
	s.rcpts = nil
}

func (s *session) Logout() error { return nil }

// counted passes a command's result on, counting refusals: once a session
// has collected MaxErrors, the reply is a 421 and the connection closes
// after it.
func (s *session) counted(err error) error {
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code < 400 || se.Code == 421 {
		return err
	}
	if s.errs++; s.errs < s.srv.cfg.MaxErrors {
		return err
	}
	s.srv.log.Info("rejected", "reason", "too many errors", "client", s.ip, "errors", s.errs)
	s.srv.cfg.Metrics.Rejected("too many errors")
	closeAfterReply(s.conn.Conn())
	return errTooManyErrors
}

// gone reports whether the server has ended the session by itself (a
// command timeout): go-smtp may still run the unfinished line it was
// reading, and nothing of it may happen.
func (s *session) gone() bool {
	t := trackedOf(s.conn.Conn())
	return t != nil && t.ended.Load()
}

// Mail implements smtp.Session.
func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if s.gone() {
		return errIdleTimeout
	}
	return s.counted(s.mail(from, opts))
}

// Rcpt implements smtp.Session.
func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if s.gone() {
		return errIdleTimeout
	}
	return s.counted(s.rcpt(to, opts))
}

// Data implements smtp.Session.
func (s *session) Data(r io.Reader) error {
	if s.gone() {
		return errIdleTimeout
	}
	return s.counted(s.data(r))
}

// mail handles MAIL FROM. The null reverse path <> is allowed on the relay
// port (bounces); on the submission port the sender must be the
// authenticated user. Message rates are checked here, per transaction.
func (s *session) mail(from string, opts *smtp.MailOptions) error {
	if s.srv.cfg.Submission {
		if s.user == "" {
			return errAuthRequired
		}
		if from == "" || mailbox.Resolve(from) != s.user {
			s.srv.log.Info("rejected", "reason", "sender not owned", "client", s.ip, "user", s.user, "from", from)
			s.srv.cfg.Metrics.Rejected("sender not owned")
			return errNotYours
		}
	}
	if err := s.srv.cfg.Space.Check(); err != nil {
		return s.noSpace(err)
	}
	if !s.srv.cfg.IPRate.Allow(connlimit.Key(s.addr).String()) {
		s.srv.log.Info("rejected", "reason", "message rate per address", "client", s.ip)
		s.srv.cfg.Metrics.Rejected("rate per address")
		return errRateIP
	}
	if s.user != "" && !s.srv.cfg.UserRate.Allow(s.user) {
		s.srv.log.Info("rejected", "reason", "message rate per account", "client", s.ip, "user", s.user)
		s.srv.cfg.Metrics.Rejected("rate per account")
		return errRateUser
	}
	if from != "" {
		a, err := addr.Parse(from, opts.UTF8)
		if errors.Is(err, addr.ErrUTF8) {
			return errNeedUTF8
		}
		if err != nil {
			return errBadSender
		}
		from = a.String()
	}
	if !s.srv.beginTxn(s.conn.Conn()) {
		closeAfterReply(s.conn.Conn())
		return errShutdown
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clear()
	s.hasFrom = true
	s.from = from
	s.params = spool.MailParams{
		Size:     opts.Size,
		Body:     string(opts.Body),
		SMTPUTF8: opts.UTF8,
		Ret:      string(opts.Return),
		EnvID:    opts.EnvelopeID,
	}
	if opts.Auth != nil {
		s.params.Auth = *opts.Auth
	}
	return nil
}

// rcpt handles RCPT TO: only local domains are accepted on the relay port.
func (s *session) rcpt(to string, opts *smtp.RcptOptions) error {
	s.mu.Lock()
	hasFrom := s.hasFrom
	s.mu.Unlock()
	if !hasFrom {
		return errNoMail
	}
	if strings.EqualFold(to, "postmaster") && len(s.srv.cfg.Domains) > 0 {
		// RFC 5321 §4.1.1.3: <Postmaster> without a domain is the
		// postmaster of this host, which is the first local domain's.
		to = "postmaster@" + s.srv.cfg.Domains[0]
	}
	a, err := addr.Parse(to, s.params.SMTPUTF8)
	if errors.Is(err, addr.ErrUTF8) {
		return errNeedUTF8
	}
	if err != nil {
		return errBadAddress
	}
	if s.srv.isLocal(a.Domain) {
		if err := s.checkLocalUser(a); err != nil {
			return err
		}
	} else if s.user == "" {
		s.srv.log.Info("rejected", "reason", "relay denied", "client", s.ip, "from", s.from, "rcpt", a.String())
		s.srv.cfg.Metrics.Rejected("relay denied")
		return errRelayDenied
	}
	r := spool.Recipient{Address: a.String()}
	for _, n := range opts.Notify {
		r.Notify = append(r.Notify, string(n))
	}
	if opts.OriginalRecipient != "" {
		r.ORcpt = string(opts.OriginalRecipientType) + ";" + opts.OriginalRecipient
	}
	s.mu.Lock()
	s.rcpts = append(s.rcpts, r)
	s.mu.Unlock()
	return nil
}

func (s *session) checkLocalUser(a addr.Address) error {
	acc := s.srv.cfg.Accounts
	if acc == nil {
		return nil
	}
	ok, err := acc.UserExists(mailbox.Resolve(a.String()))
	if err != nil {
		s.srv.log.Error("user lookup failed", "rcpt", a.String(), "error", err)
		return errUserLookup
	}
	if !ok {
		s.srv.log.Info("rejected", "reason", "no such user", "client", s.ip, "from", s.from, "rcpt", a.String())
		s.srv.cfg.Metrics.Rejected("no such user")
		return errNoUser
	}
	return nil
}

// data reads the message (DATA or BDAT) into the spool. The Received: header
// goes first, so its queue ID is chosen before the body is read.
func (s *session) data(r io.Reader) error {
	s.mu.Lock()
	if !s.hasFrom || len(s.rcpts) == 0 {
		s.mu.Unlock()
		return errNoMail
	}
	sp := s.srv.spool
	m := &spool.Message{
		ID:       sp.NewID(),
		Arrived:  s.srv.now(),
		ClientIP: s.ip,
		Helo:     s.conn.Hostname(),
		From:     s.from,
		Params:   s.params,
		Rcpts:    slices.Clone(s.rcpts),
	}
	s.mu.Unlock()
	dr := &deadlineReader{
		r:    r,
		conn: s.conn.Conn(),
		idle: s.srv.cfg.DataIdleTimeout,
		end:  time.Now().Add(s.srv.cfg.DataTimeout),
	}
	body := s.srv.cfg.Space.CheckAtEnd(io.MultiReader(strings.NewReader(s.received(m)), s.message(dr, chunkedData(r), m)))
	// go-smtp sets a fresh deadline before it reads the next command, so
	// the data deadline needs no reset here; after a timeout it must stay
	// expired so that go-smtp's drain of the rest returns at once.
	if err := sp.Enqueue(m, body); err != nil {
		return s.dataError(m, err)
	}
	// The spool's mail log has the "accepted" line.
	s.srv.cfg.Metrics.Accepted()
	return queued(m.ID)
}

// queued is the reply to an accepted message, naming its queue ID as
// Postfix does. go-smtp writes an *smtp.SMTPError from Data as it is, so a
// 250 one is how the reply gets its text; counted passes it on uncounted.
func queued(id string) error {
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued as " + id}
}

// dataError maps a failed enqueue to its reply and logs the cause.
func (s *session) dataError(m *spool.Message, err error) error {
	var reply *smtp.SMTPError
	var ne net.Error
	var reason string
	switch {
	case errors.Is(err, smtp.ErrDataTooLarge):
		reply, reason = smtp.ErrDataTooLarge, "too large"
	case errors.Is(err, errBareLine):
		reply, reason = errBareNewline, "bare newline"
	case errors.Is(err, errDotLine):
		reply, reason = errSmuggling, "bare newline"
	case errors.Is(err, errNUL):
		reply, reason = errNULReply, "NUL octet"
	case errors.Is(err, errHeader8bit):
		reply, reason = errHeader8bitReply, "8-bit header"
	case errors.Is(err, errTimeout), errors.As(err, &ne) && ne.Timeout():
		// errTimeout is trackedConn.Read's for a read past the data
		// deadline; the plain timeout comes from an untracked connection.
		reply, reason = errTimeout, "timeout"
		s.mu.Lock()
		s.closeAfterReply = true
		s.mu.Unlock()
	case errors.Is(err, smtp.ErrTooLongLine):
		// RFC 5321 §4.5.3.1.6: the same message would fail again, so the
		// reply is permanent; the rest of the line is unread, so the
		// connection goes.
		reply, reason = errLineTooLong, "line too long"
		s.mu.Lock()
		s.closeAfterReply = true
		s.mu.Unlock()
	case errors.Is(err, diskspace.ErrLow), errors.Is(err, store.ErrNoSpace):
		// Below min-free-space here, or the store's own disk full (a
		// PostgreSQL server elsewhere): the same reply either way.
		reply, reason = errNoStorage, "insufficient storage"
	case errors.Is(err, smtp.ErrDataReset), errors.Is(err, io.ErrUnexpectedEOF):
		// The client went away or reset; nobody reads the reply.
		s.srv.log.Info("aborted", "id", m.ID, "client", s.ip, "error", err)
		return smtp.ErrDataReset
	default:
		reply, reason = errLocal, "local error"
	}
	s.srv.cfg.Metrics.Rejected(reason)
	s.srv.log.Warn("rejected", "id", m.ID, "reason", reply.Message, "client", s.ip, "from", m.From, "error", err)
	return reply
}

// received builds the trace header of RFC 5321 §4.4, with the protocol
// keyword of RFC 3848 and RFC 6531.
func (s *session) received(m *spool.Message) string {
	proto := "ESMTP"
	if m.Params.SMTPUTF8 {
		proto = "UTF8SMTP"
	}
	if _, ok := s.conn.TLSConnectionState(); ok {
		proto += "S"
	}
	if s.user != "" {
		proto += "A"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Received: from %s ([%s])\r\n\tby %s (relay) with %s id %s", sanitize(m.Helo), s.ip, s.srv.cfg.Hostname, proto, m.ID)
	if len(m.Rcpts) == 1 {
		fmt.Fprintf(&b, "\r\n\tfor <%s>", m.Rcpts[0].Address)
	}
	fmt.Fprintf(&b, ";\r\n\t%s\r\n", m.Arrived.Format(time.RFC1123Z))
	return b.String()
}

// sanitize keeps a client-chosen HELO from breaking the header.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x21 || r == 0x7f || r == '(' || r == ')' {
			return -1
		}
		return r
	}, s)
}

var errHeader8bit = errors.New("8-bit octet in the header without SMTPUTF8 or BODY=8BITMIME")

// header7bit fails with errHeader8bit at the first octet above 0x7f in the
// header section. RFC 6152 allows 8-bit data only after BODY=8BITMIME, and
// RFC 6532 allows UTF-8 header fields only with SMTPUTF8; without either, the
// header is 7-bit ASCII (RFC 5322 §2.2), and 8-bit text there is mis-read
// downstream. The body is passed as it is, as Postfix does by default.
type header7bit struct {
	r       io.Reader
	lineLen int
	body    bool
}

func (h *header7bit) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	for i := 0; i < n && !h.body; i++ {
		switch b := p[i]; {
		case b >= 0x80:
			return 0, errHeader8bit
		case b == '\n':
			// A line of just CRLF ends the header section.
			h.body = h.lineLen <= 1
			h.lineLen = 0
		default:
			h.lineLen++
		}
	}
	return n, err
}

// deadlineReader pushes the connection's read deadline forward as data
// arrives, up to a hard end, so an idle or very slow client is dropped while a
// large message on a good link is not (a fixed deadline from the DATA command
// would cut both).
type deadlineReader struct {
	r    io.Reader
	conn net.Conn
	idle time.Duration
	end  time.Time
}

// maxRead keeps each underlying read small so the idle deadline is renewed
// often: go-smtp's DATA reader fills the whole buffer before returning.
const maxRead = 32 << 10

func (d *deadlineReader) Read(p []byte) (int, error) {
	dl := time.Now().Add(d.idle)
	if dl.After(d.end) {
		dl = d.end
	}
	setDataDeadline(d.conn, dl)
	if len(p) > maxRead {
		p = p[:maxRead]
	}
	return d.r.Read(p)
}
