package imapd

import "github.com/emersion/go-imap/v2"

// errNoStorage refuses APPEND while the disk is below min-free-space. RFC
// 5530 §3 has no code for a full disk; LIMIT ("the operation ran up against
// an implementation limit of some kind") fits a limit the server sets for
// itself and, unlike OVERQUOTA, does not tell the user to delete mail of
// their own. The text says it is temporary.
var errNoStorage = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeLimit, Text: "insufficient system storage, try again later"}

// noSpace logs an APPEND refused for want of disk space and returns its
// reply.
func (s *session) noSpace(cause error) error {
	s.srv.cfg.Log.Info("append refused", "user", s.user, "reason", "insufficient storage", "error", cause)
	return errNoStorage
}
