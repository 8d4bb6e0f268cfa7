package imapd

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/relaymail/relay/mailbox"
)

// clientFault rewrites imapserver's generic reply to a tagged command and
// nothing else.
func TestClientFault(t *testing.T) {
	t.Parallel()
	bad := "a1" + clientFaultText
	for in, want := range map[string]string{
		"a1 NO [SERVERBUG] Internal server error\r\n":           bad,
		"* NO [SERVERBUG] Internal server error\r\n":            "* NO [SERVERBUG] Internal server error\r\n",
		" NO [SERVERBUG] Internal server error\r\n":             " NO [SERVERBUG] Internal server error\r\n",
		"a1 NO [SERVERBUG] internal error, try again later\r\n": "a1 NO [SERVERBUG] internal error, try again later\r\n",
		"* 1 FETCH (BODY[] {40}\r\n":                            "* 1 FETCH (BODY[] {40}\r\n",
		"x\r\na1 NO [SERVERBUG] Internal server error\r\n":      "x\r\na1 NO [SERVERBUG] Internal server error\r\n",
	} {
		if got := string(clientFault([]byte(in))); got != want {
			t.Errorf("clientFault(%q) = %q, want %q", in, got, want)
		}
	}
}

// Every failure a session hands imapserver is an IMAP status, so that
// imapserver's generic reply never stands for a server fault: a store or
// write error becomes the server's own SERVERBUG, a known store error its
// RFC 5530 code, and an IMAP status stays as it is.
func TestServerError(t *testing.T) {
	t.Parallel()
	own := &imap.Error{Type: imap.StatusResponseTypeBad, Text: "invalid message sequence number"}
	for _, tc := range []struct {
		err  error
		typ  imap.StatusResponseType
		code imap.ResponseCode
	}{
		{io.ErrClosedPipe, imap.StatusResponseTypeNo, imap.ResponseCodeServerBug},
		{fmt.Errorf("read chunk: %w", errors.New("disk on fire")), imap.StatusResponseTypeNo, imap.ResponseCodeServerBug},
		{fmt.Errorf("select: %w", mailbox.ErrNoMailbox), imap.StatusResponseTypeNo, imap.ResponseCodeNonExistent},
		{own, imap.StatusResponseTypeBad, ""},
		{imapserver.ErrAuthFailed, imap.StatusResponseTypeNo, imap.ResponseCodeAuthenticationFailed},
	} {
		var ie *imap.Error
		if !errors.As(serverError(tc.err), &ie) {
			t.Errorf("serverError(%v) = %v, not an *imap.Error", tc.err, serverError(tc.err))
			continue
		}
		if ie.Type != tc.typ || ie.Code != tc.code {
			t.Errorf("serverError(%v) = %s [%s] %q, want %s [%s]", tc.err, ie.Type, ie.Code, ie.Text, tc.typ, tc.code)
		}
		if tc.code == imap.ResponseCodeServerBug && ie.Text != "internal error, try again later" {
			t.Errorf("serverError(%v) text %q leaks the cause or is imapserver's own", tc.err, ie.Text)
		}
	}
	if serverError(nil) != nil {
		t.Error("serverError(nil) != nil")
	}
}
