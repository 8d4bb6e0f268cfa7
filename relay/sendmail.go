package relay

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/relaymail/relay/internal/addr"
	"github.com/relaymail/relay/internal/admin"
	"github.com/relaymail/relay/internal/diskspace"
	"github.com/relaymail/relay/internal/store"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/relay/inject"
	"github.com/relaymail/relay/spool"
)

// SendmailRequest is the envelope of a message that `relay sendmail` hands
// to the running server; the message itself is the upload's body.
type SendmailRequest struct {
	// From is the envelope sender (-f); "<>" is the null sender, empty
	// means Login at the first local domain.
	From string `json:"from,omitempty"`
	// FullName (-F) names the sender in a From: field made for it.
	FullName string   `json:"full_name,omitempty"`
	Rcpts    []string `json:"rcpts,omitempty"`
	// Extract (-t) adds the recipients of To, Cc and Bcc.
	Extract bool `json:"extract,omitempty"`
	// Login is the submitting user's login name.
	Login string `json:"login,omitempty"`
	// Notify (-N), Ret (-R) and EnvID (-V) are the DSN requests of
	// RFC 3461, as sendmail takes them.
	Notify []string `json:"notify,omitempty"`
	Ret    string   `json:"ret,omitempty"`
	EnvID  string   `json:"envid,omitempty"`
}

// SendmailReply says what was queued.
type SendmailReply struct {
	ID    string   `json:"id"`
	Rcpts []string `json:"rcpts"`
}

// errTooBig ends a sendmail upload past max-message-size.
var errTooBig = errors.New("message is larger than max-message-size")

// capped fails with errTooBig once more than n bytes were read.
type capped struct {
	r io.Reader
	n int64
}

func (c *capped) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.n -= int64(n); c.n < 0 {
		return 0, errTooBig
	}
	return n, err
}

// sendmail queues a locally submitted message. Local programs are trusted
// like Postfix's sendmail users: any sender, any recipient domain; only
// unknown local users and bad addresses are refused, before anything is
// queued.
func (s *Server) sendmail(_ context.Context, raw json.RawMessage, body io.Reader) (any, error) {
	var req SendmailRequest
	if err := json.Unmarshal(raw, &req); err != nil {
		return nil, admin.UserError(fmt.Errorf("bad request: %w", err))
	}
	if err := s.disk.Check(); err != nil {
		io.Copy(io.Discard, body)
		return nil, noSpace(err)
	}
	from, fromUTF8, err := s.sendmailSender(req)
	if err != nil {
		return nil, err
	}
	id := s.spool.NewID()
	now := s.spool.Now()
	msg := bufio.NewReader(inject.CRLF(&capped{r: body, n: s.cfg.MaxMessageSize}))
	header, extracted, err := inject.Prepare(msg, inject.Options{
		From: from, FullName: req.FullName, Extract: req.Extract,
		Hostname: s.cfg.Hostname, MessageID: id, Now: now,
	})
	if err != nil {
		return nil, admin.UserError(err)
	}
	m := &spool.Message{ID: id, Arrived: now, From: from}
	if m.Params.Ret, m.Params.EnvID, err = dsnParams(req); err != nil {
		io.Copy(io.Discard, body)
		return nil, err
	}
	if m.Rcpts, m.Params.SMTPUTF8, err = s.sendmailRcpts(append(req.Rcpts, extracted...), req.Notify); err != nil {
		// The message is not queued, but the rest of the input must be
		// read for the client to see this reply.
		io.Copy(io.Discard, body)
		return nil, err
	}
	m.Params.SMTPUTF8 = m.Params.SMTPUTF8 || fromUTF8
	login := strings.Map(func(r rune) rune {
		if r <= ' ' || r == ';' || r == '(' || r == ')' || r > '~' {
			return -1
		}
		return r
	}, req.Login)
	received := fmt.Sprintf("Received: by %s (relay sendmail, from user %s)\r\n\tid %s; %s\r\n",
		s.cfg.Hostname, login, id, now.Format(time.RFC1123Z))
	err = s.spool.Enqueue(m, s.disk.CheckAtEnd(io.MultiReader(strings.NewReader(received), strings.NewReader(string(header)), msg)))
	if errors.Is(err, errTooBig) {
		return nil, admin.UserError(err)
	}
	if errors.Is(err, diskspace.ErrLow) || errors.Is(err, store.ErrNoSpace) {
		return nil, noSpace(err)
	}
	if err != nil {
		return nil, err
	}
	s.metrics.Accepted()
	rcpts := make([]string, len(m.Rcpts))
	for i, r := range m.Rcpts {
		rcpts[i] = r.Address
	}
	return SendmailReply{ID: id, Rcpts: rcpts}, nil
}

// noSpace is sendmail's refusal while the disk is below min-free-space.
func noSpace(cause error) error {
	return admin.UserError(fmt.Errorf("not enough free disk space to queue mail: %w; the message was not queued, send it again once space is freed", cause))
}

// sendmailSender returns the envelope sender and whether it needs SMTPUTF8.
func (s *Server) sendmailSender(req SendmailRequest) (string, bool, error) {
	from := strings.Trim(strings.TrimSpace(req.From), "<>")
	switch {
	case req.From == "<>":
		return "", false, nil
	case from == "":
		login := req.Login
		if login == "" {
			login = "nobody"
		}
		from = login + "@" + s.cfg.Domains[0]
	case !strings.Contains(from, "@"):
		from += "@" + s.cfg.Domains[0]
	}
	a, err := addr.Parse(from, true)
	if err != nil {
		return "", false, admin.UserError(fmt.Errorf("sender %q is not a valid address", from))
	}
	return a.String(), !a.IsASCII(), nil
}

// sendmailRcpts parses and checks the recipients; a bare name is a local
// user at the first local domain, as sendmail takes it.
func (s *Server) sendmailRcpts(list, notify []string) ([]spool.Recipient, bool, error) {
	var out []spool.Recipient
	utf8 := false
	for _, r := range list {
		r = strings.Trim(strings.TrimSpace(r), "<>")
		if r == "" {
			continue
		}
		if !strings.Contains(r, "@") {
			r += "@" + s.cfg.Domains[0]
		}
		a, err := addr.Parse(r, true)
		if err != nil {
			return nil, false, admin.UserError(fmt.Errorf("recipient %q is not a valid address", r))
		}
		if slices.ContainsFunc(out, func(x spool.Recipient) bool { return x.Address == a.String() }) {
			continue
		}
		if s.loop.IsLocal(a.String()) {
			ok, err := s.boxes.UserExists(mailbox.Resolve(a.String()))
			if err != nil {
				return nil, false, err
			}
			if !ok {
				return nil, false, admin.UserError(fmt.Errorf("recipient %s: no such user", a))
			}
		}
		utf8 = utf8 || !a.IsASCII()
		out = append(out, spool.Recipient{Address: a.String(), Notify: notify})
	}
	if len(out) == 0 {
		return nil, false, admin.UserError(inject.ErrNoRecipients)
	}
	if len(out) > s.cfg.MaxRecipients {
		return nil, false, admin.UserError(fmt.Errorf("%d recipients; max-recipients is %d", len(out), s.cfg.MaxRecipients))
	}
	return out, utf8, nil
}

// dsnParams checks sendmail's -R and -V, and -N is checked with the
// recipients.
func dsnParams(req SendmailRequest) (ret, envid string, err error) {
	for _, n := range req.Notify {
		if !slices.Contains([]string{"NEVER", "SUCCESS", "FAILURE", "DELAY"}, n) ||
			(n == "NEVER" && len(req.Notify) > 1) {
			return "", "", admin.UserError(fmt.Errorf("-N %s: NOTIFY is NEVER, or a list of SUCCESS, FAILURE, DELAY", strings.Join(req.Notify, ",")))
		}
	}
	ret = strings.ToUpper(req.Ret)
	if ret != "" && ret != "FULL" && ret != "HDRS" {
		return "", "", admin.UserError(fmt.Errorf("-R %s: RET is FULL or HDRS", req.Ret))
	}
	// RFC 3461 §4.4: at most 100 printable ASCII characters.
	if len(req.EnvID) > 100 || !isPrintable(req.EnvID) {
		return "", "", admin.UserError(errors.New("-V: ENVID is at most 100 printable ASCII characters"))
	}
	return ret, req.EnvID, nil
}

func isPrintable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
