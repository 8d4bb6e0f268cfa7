package smtpd

import "github.com/emersion/go-smtp"

// errNoStorage refuses mail while the disk is below min-free-space or the
// store reports its own disk full. RFC 5321
// §4.2.2 names 452 "insufficient system storage", and §4.3.2 allows it in
// reply to MAIL and at the end of the data; RFC 3463 §3.4 gives X.3.1, "mail
// system full". The client keeps the message and tries later: nothing was
// acknowledged, so nothing is lost.
var errNoStorage = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "insufficient system storage"}

// noSpace logs a MAIL refused for want of disk space and returns its reply.
func (s *session) noSpace(cause error) error {
	s.srv.log.Info("rejected", "reason", "insufficient storage", "client", s.ip, "error", cause)
	s.srv.cfg.Metrics.Rejected("insufficient storage")
	return errNoStorage
}
