package badger

import (
	"strings"

	"github.com/relaymail/relay/internal/record"
	"github.com/relaymail/relay/spool"
)

// An envelope is read at least twice per delivery round (to see what is due,
// then inside the transaction that records the outcome) and written once per
// state change, so it has a compact binary form: in JSON its encoding and
// decoding took about a tenth of the relay's CPU while accepting and
// delivering locally.
//
//	0x02 | id | arrived | client ip | helo | from |
//	params: size | body | smtputf8 | ret | envid | auth |
//	size | hold | due | count { recipient }
//	recipient: address | count { notify } | orcpt | state | attempts |
//	           next attempt | reply | remote mta | delay notified
//	reply: code | enhanced | text | permanent
//
// Strings are length-prefixed, numbers varints, times nanoseconds since the
// epoch (0 for none), booleans a byte (internal/record). Older envelopes
// still read: format 0x01 has the reply as one string, "last error", and
// envelopes written as JSON (they start with '{') have it as "last_error";
// both are converted to a spool.Reply when read (legacyReply).
const (
	envFormat   = 0x02
	envFormatV1 = 0x01
)

// appendEnvelope appends m's record to b.
func appendEnvelope(b []byte, m *spool.Message) []byte {
	b = append(b, envFormat)
	b = record.AppendString(b, m.ID)
	b = record.AppendTime(b, m.Arrived)
	b = record.AppendString(b, m.ClientIP)
	b = record.AppendString(b, m.Helo)
	b = record.AppendString(b, m.From)
	p := m.Params
	b = record.AppendVarint(b, p.Size)
	b = record.AppendString(b, p.Body)
	b = record.AppendBool(b, p.SMTPUTF8)
	b = record.AppendString(b, p.Ret)
	b = record.AppendString(b, p.EnvID)
	b = record.AppendString(b, p.Auth)
	b = record.AppendVarint(b, m.Size)
	b = record.AppendBool(b, m.Hold)
	b = record.AppendTime(b, m.Due)
	b = record.AppendUvarint(b, uint64(len(m.Rcpts)))
	for _, r := range m.Rcpts {
		b = record.AppendString(b, r.Address)
		b = record.AppendUvarint(b, uint64(len(r.Notify)))
		for _, n := range r.Notify {
			b = record.AppendString(b, n)
		}
		b = record.AppendString(b, r.ORcpt)
		b = record.AppendString(b, string(r.State))
		b = record.AppendVarint(b, int64(r.Attempts))
		b = record.AppendTime(b, r.NextAttempt)
		b = record.AppendVarint(b, int64(r.Reply.Code))
		b = record.AppendString(b, r.Reply.Enhanced)
		b = record.AppendString(b, r.Reply.Text)
		b = record.AppendBool(b, r.Reply.Permanent)
		b = record.AppendString(b, r.RemoteMTA)
		b = record.AppendBool(b, r.DelayNotified)
	}
	return b
}

// minRcptRecord is the fewest bytes a recipient takes: a byte for each of
// its twelve fields (nine in format 0x01).
const minRcptRecord, minRcptRecordV1 = 12, 9

// parseEnvelope decodes an envelope record into m. The strings are copies:
// v belongs to Badger.
func parseEnvelope(v []byte, m *spool.Message) error {
	format, minRcpt := byte(envFormat), minRcptRecord
	if len(v) > 0 && v[0] == envFormatV1 {
		format, minRcpt = envFormatV1, minRcptRecordV1
	}
	var legacy jsonEnvelope
	r, done, err := record.Open(v, format, &legacy)
	if done {
		if err == nil {
			legacy.convert(m)
		}
		return err
	}
	if err != nil {
		return err
	}
	*m = spool.Message{
		ID:       r.String(),
		Arrived:  r.Time(),
		ClientIP: r.String(),
		Helo:     r.String(),
		From:     r.String(),
		Params: spool.MailParams{
			Size:     r.Varint(),
			Body:     r.String(),
			SMTPUTF8: r.Bool(),
			Ret:      r.String(),
			EnvID:    r.String(),
			Auth:     r.String(),
		},
		Size: r.Varint(),
		Hold: r.Bool(),
		Due:  r.Time(),
	}
	if n := r.Count(minRcpt); n > 0 {
		m.Rcpts = make([]spool.Recipient, n)
	}
	for i := range m.Rcpts {
		rc := &m.Rcpts[i]
		rc.Address = r.String()
		if k := r.Count(1); k > 0 {
			rc.Notify = make([]string, k)
			for j := range rc.Notify {
				rc.Notify[j] = r.Interned(notifyKeywords)
			}
		}
		rc.ORcpt = r.String()
		rc.State = spool.State(r.Interned(states))
		rc.Attempts = int(r.Varint())
		rc.NextAttempt = r.Time()
		if format == envFormatV1 {
			rc.Reply = legacyReply(r.String())
		} else {
			rc.Reply = spool.Reply{Code: int(r.Varint()), Enhanced: r.String(), Text: r.String(), Permanent: r.Bool()}
		}
		rc.RemoteMTA = r.String()
		rc.DelayNotified = r.Bool()
	}
	return r.Err()
}

// The strings every envelope repeats, read without allocating.
var (
	states         = []string{string(spool.Pending), string(spool.Delivered), string(spool.Failed)}
	notifyKeywords = []string{"NEVER", "SUCCESS", "FAILURE", "DELAY"}
)

// jsonEnvelope is an envelope written as JSON, before the binary form: a
// spool.Message whose recipients carry their reply as the string "last_error".
type jsonEnvelope struct {
	spool.Message
	Rcpts []struct {
		spool.Recipient
		LastError string `json:"last_error"`
	} `json:"recipients"`
}

// convert fills m from e, each recipient's reply converted from its last
// error unless the record has the typed one.
func (e *jsonEnvelope) convert(m *spool.Message) {
	*m = e.Message
	m.Rcpts = nil
	for _, r := range e.Rcpts {
		rc := r.Recipient
		if rc.Reply.IsZero() {
			rc.Reply = legacyReply(r.LastError)
		}
		m.Rcpts = append(m.Rcpts, rc)
	}
}

// legacyReply converts the last error of an envelope written before
// replies were typed into a Reply. That string was the reply rendered
// ("550 5.1.1 no such user"), an expiry ("4.4.7 message expired after
// 120h0m0s; last error: 451 4.2.0 busy"), or free text; a string without
// a basic code gets the one its class calls for (451 or 550), and a local
// failure's Go error text is dropped for the fixed spool.LocalTrouble text.
func legacyReply(s string) spool.Reply {
	if s == "" {
		return spool.Reply{}
	}
	code, rest := 0, s
	if len(s) >= 3 && isReplyCode(s[:3]) && (len(s) == 3 || s[3] == ' ') {
		code = int(s[0]-'0')*100 + int(s[1]-'0')*10 + int(s[2]-'0')
		rest = strings.TrimPrefix(s[3:], " ")
	}
	enhanced, text, _ := strings.Cut(rest, " ")
	if !isEnhancedCode(enhanced) {
		enhanced, text = "", rest
	}
	switch {
	case code != 0:
	case strings.HasPrefix(enhanced, "5"):
		code = 550
	default:
		code = 451
	}
	if code == 451 && enhanced == "4.3.0" && strings.HasPrefix(text, "local delivery failed:") {
		return spool.LocalTrouble
	}
	return spool.NewReply(code, enhanced, text)
}

// isReplyCode reports whether s is a 2yz, 4yz or 5yz reply code.
func isReplyCode(s string) bool {
	return len(s) == 3 && (s[0] == '2' || s[0] == '4' || s[0] == '5') &&
		s[1] >= '0' && s[1] <= '9' && s[2] >= '0' && s[2] <= '9'
}

// isEnhancedCode reports whether s is an RFC 3463 status code: class 2, 4
// or 5, a subject and a detail of one to three digits each.
func isEnhancedCode(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || !strings.Contains("245", parts[0]) {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) == 0 || len(p) > 3 || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}
