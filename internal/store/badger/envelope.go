package badger

import (
	"github.com/relaymail/relay/internal/record"
	"github.com/relaymail/relay/spool"
)

// An envelope is read at least twice per delivery round (to see what is due,
// then inside the transaction that records the outcome) and written once per
// state change, so it has a compact binary form: in JSON its encoding and
// decoding took about a tenth of the relay's CPU while accepting and
// delivering locally.
//
//	0x01 | id | arrived | client ip | helo | from |
//	params: size | body | smtputf8 | ret | envid | auth |
//	size | hold | due | count { recipient }
//	recipient: address | count { notify } | orcpt | state | attempts |
//	           next attempt | last error | remote mta | delay notified
//
// Strings are length-prefixed, numbers varints, times nanoseconds since the
// epoch (0 for none), booleans a byte (internal/record). Envelopes written as
// JSON (they start with '{') still read.
const envFormat = 0x01

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
		b = record.AppendString(b, r.LastError)
		b = record.AppendString(b, r.RemoteMTA)
		b = record.AppendBool(b, r.DelayNotified)
	}
	return b
}

// minRcptRecord is the fewest bytes a recipient takes: a byte for each of
// its nine fields.
const minRcptRecord = 9

// parseEnvelope decodes an envelope record into m. The strings are copies:
// v belongs to Badger.
func parseEnvelope(v []byte, m *spool.Message) error {
	r, done, err := record.Open(v, envFormat, m)
	if done || err != nil {
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
	if n := r.Count(minRcptRecord); n > 0 {
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
		rc.LastError = r.String()
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
