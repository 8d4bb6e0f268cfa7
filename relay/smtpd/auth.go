package smtpd

import (
	"context"
	"errors"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/relaymail/relay/internal/throttle"
	"github.com/relaymail/relay/mailbox"
)

// errAuthBlocked answers every attempt while a client or an account is
// locked out after too many failures.
var errAuthBlocked = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "temporary authentication failure: too many failed attempts, try again later"}

// errAuthTemporary answers AUTH when the account store cannot be asked
// (RFC 4954 §6: 454 4.7.0 temporary authentication failure).
var errAuthTemporary = &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "temporary authentication failure, try again later"}

// AuthMechanisms implements smtp.AuthSession. AUTH is offered only where it
// may be used: on a submission port with an account store, and on TLS or
// from PlainAuthNets (RFC 4954 §4: no plain-text passwords over an untrusted
// network). The relay port offers none, as Postfix's port 25 does not.
func (s *session) AuthMechanisms() []string {
	if !s.srv.cfg.Submission || s.srv.cfg.Accounts == nil || !s.authAllowed() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *session) authAllowed() bool {
	if _, ok := s.conn.TLSConnectionState(); ok {
		return true
	}
	for _, p := range s.srv.cfg.PlainAuthNets {
		if p.Contains(s.addr) {
			return true
		}
	}
	return false
}

// Auth implements smtp.AuthSession.
func (s *session) Auth(mech string) (sasl.Server, error) {
	if !s.srv.cfg.Submission || s.srv.cfg.Accounts == nil {
		return nil, smtp.ErrAuthUnsupported
	}
	if !s.authAllowed() {
		return nil, errNeedTLS
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return s.authenticate("", "")
			}
			return s.authenticate(user, pass)
		}), nil
	case sasl.Login:
		return &loginServer{auth: s.authenticate}, nil
	}
	return nil, errNoMech
}

// authenticate checks a password; failures wait out the throttle's delay for
// this client and account and then answer 535 5.7.8, never saying whether
// the user or the password was wrong.
//
// After throttle.Limit failures from the client's address or for the account
// name, attempts are refused with 454 4.7.0 (RFC 4954 §6) without looking at
// the password, until the lockout ends: the same answer for a name that
// exists and one that does not.
func (s *session) authenticate(user, pass string) error {
	if s.gone() {
		return errIdleTimeout
	}
	t := s.srv.cfg.Throttle
	ipKey, userKey := throttle.IPKey(s.addr), "user:"+mailbox.NormalizeUser(user)
	if blocked, retry := t.Blocked(ipKey, userKey); blocked {
		s.srv.log.Warn("auth refused", "reason", "too many failures", "client", s.ip, "user", user, "retry_after", retry.Round(time.Second))
		s.srv.cfg.Metrics.AuthFailure("smtp")
		return errAuthBlocked
	}
	account, err := s.srv.cfg.Accounts.Authenticate(user, pass)
	if err != nil && !errors.Is(err, mailbox.ErrAuth) {
		// RFC 4954 §6: the store could not be asked; no failure is
		// counted against the client.
		s.srv.log.Error("auth: account lookup failed", "client", s.ip, "user", user, "error", err)
		return errAuthTemporary
	}
	if err != nil {
		s.srv.log.Warn("auth failed", "client", s.ip, "user", user, "failures", t.Failures(ipKey)+1)
		s.srv.cfg.Metrics.AuthFailure("smtp")
		t.Fail(context.Background(), ipKey, userKey)
		return errAuthFailed
	}
	t.Succeed("user:" + account)
	s.user = account
	s.srv.log.Info("auth", "client", s.ip, "user", account)
	return nil
}

// loginServer is the obsolete but common LOGIN mechanism (Outlook, older
// phones): username and password each in answer to a base64 prompt. go-sasl
// has only the client side.
type loginServer struct {
	auth func(user, pass string) error
	user string
	step int
}

var errLoginDone = errors.New("LOGIN: unexpected client response")

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step = 1
		if resp == nil {
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		l.user = string(resp)
		l.step = 2
		return []byte("Password:"), false, nil
	case 2:
		l.step = 3
		return nil, true, l.auth(l.user, string(resp))
	}
	return nil, true, errLoginDone
}
