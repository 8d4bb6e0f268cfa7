package spool

import (
	"encoding/json"
	"strconv"
	"strings"
)

// Reply is the outcome of a delivery attempt for one recipient, as an SMTP
// reply: the basic code (RFC 5321 §4.2), the enhanced status code (RFC
// 3463), the text, and whether the failure is final. It is what a remote
// server answered or what the relay decided in its place (a refused
// connection, a DNS failure, trouble with local storage), and it travels
// typed from the attempt to the recipient's state, the mail log and the
// DSN, so that nothing reads a status back out of text.
//
// The zero Reply means there is none (a recipient not yet tried, or one
// delivered).
type Reply struct {
	// Code is the three-digit reply code: 4yz temporary, 5yz permanent.
	Code int `json:"code"`
	// Enhanced is the enhanced status code, "5.1.1"; empty when the
	// server gave none.
	Enhanced string `json:"enhanced,omitempty"`
	// Text is the reply's text without the codes, as the server sent it
	// (several lines joined by "\n"), or the relay's own fixed text.
	Text string `json:"text,omitempty"`
	// Permanent says the recipient fails for good: retrying cannot help.
	// It follows the code's class unless a rule says otherwise.
	Permanent bool `json:"permanent,omitempty"`
}

// NewReply returns the reply code, enhanced, text, permanent when the code
// is 5yz (RFC 5321 §4.2.1).
func NewReply(code int, enhanced, text string) Reply {
	return Reply{Code: code, Enhanced: enhanced, Text: text, Permanent: code >= 500}
}

// TempReply returns a temporary failure, 451 with the enhanced code.
func TempReply(enhanced, text string) Reply { return NewReply(451, enhanced, text) }

// IsZero reports whether r is no reply at all.
func (r Reply) IsZero() bool { return r == Reply{} }

// Status is the enhanced status code a DSN reports for r (RFC 3464
// §2.3.4): the server's own, or the class of its basic code with no
// detail ("4.0.0", "5.0.0") when it gave none.
func (r Reply) Status() string {
	switch {
	case r.Enhanced != "":
		return r.Enhanced
	case r.Code >= 200 && r.Code < 600:
		return strconv.Itoa(r.Code/100) + ".0.0"
	default:
		return "4.0.0"
	}
}

// String renders r as one line, "550 5.1.1 no such user": the lines of a
// multi-line reply and any control characters become spaces, so that a
// remote server's text cannot break a log line or a table.
func (r Reply) String() string {
	if r.IsZero() {
		return ""
	}
	var b strings.Builder
	if r.Code != 0 {
		b.WriteString(strconv.Itoa(r.Code))
	}
	for _, s := range []string{r.Enhanced, r.Text} {
		if s == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strings.Map(func(c rune) rune {
			if c < ' ' || c == 0x7f {
				return ' '
			}
			return c
		}, s))
	}
	return b.String()
}

// LocalTrouble is the reply for a failure of the relay's own storage
// during a delivery: temporary (DESIGN: "451 4.3.0, nothing lost"), with a
// fixed text, since the error behind it belongs in the log, not in a
// notice to the sender.
var LocalTrouble = TempReply("4.3.0", "temporary local problem")

// MarshalJSON writes r with its reply also rendered as "last_error",
// "451 4.2.0 mailbox busy", which scripts reading `relay queue list
// --json` rely on; a reader of the typed "reply" ignores it.
func (r Recipient) MarshalJSON() ([]byte, error) {
	type plain Recipient // without this method
	return json.Marshal(struct {
		plain
		LastError string `json:"last_error"`
	}{plain(r), r.Reply.String()})
}
