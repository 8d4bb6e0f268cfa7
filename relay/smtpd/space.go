package smtpd

import (
	"github.com/emersion/go-smtp"
)

// errNoStorage refuses mail while the disk is below min-free-space: RFC 1870
// §6.1 gives 452 for a temporary lack of storage at MAIL, and RFC 3463
// §3.4 X.3.1 is "mail system full". The client keeps the message and tries
// later; nothing was acknowledged, so nothing is lost.
var errNoStorage = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "insufficient system storage"}

// noSpace logs a MAIL refused for want of disk space and returns its reply.
func (s *session) noSpace(cause error) error {
	s.srv.log.Info("rejected", "reason", "insufficient storage", "client", s.ip, "error", cause)
	s.srv.cfg.Metrics.Rejected("insufficient storage")
	return errNoStorage
}
