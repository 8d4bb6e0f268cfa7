// Package dsn builds delivery status notifications: RFC 3464 multipart/report
// messages (RFC 6522) with a human-readable part, a message/delivery-status
// part and the original message or its header (RET=FULL or HDRS, RFC 3461).
// For messages that needed SMTPUTF8 the RFC 6533 global types are used.
package dsn

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"

	"github.com/relaymail/relay/spool"
)

// Action is the RFC 3464 §2.3.3 action of a recipient.
type Action string

// Actions.
const (
	Failed    Action = "failed"
	Delayed   Action = "delayed"
	Delivered Action = "delivered"
	Relayed   Action = "relayed"
)

// Recipient is the report on one recipient.
type Recipient struct {
	Address string // final recipient
	ORcpt   string // ORCPT as "type;address", or empty
	Action  Action
	// Reply is the recipient's last reply, the zero Reply for one
	// delivered or relayed. Its enhanced code is the Status (RFC 3464
	// §2.3.4) and the reply itself the Diagnostic-Code, "smtp; 550 5.1.1
	// no such user" (§2.3.6).
	Reply spool.Reply
	// Expired says a failed recipient ran out of time while its replies
	// were temporary: the Status is then 5.4.7, delivery time expired
	// (RFC 3463 §3.5), and Reply the last of them.
	Expired     bool
	RemoteMTA   string
	LastAttempt time.Time
	// WillRetryUntil is set for delayed recipients.
	WillRetryUntil time.Time
}

// Report is one notification about one message.
type Report struct {
	ReportingMTA string // our host name
	To           string // the envelope sender of the original
	QueueID      string // of the original message
	NoticeID     string // of this notice, for its Message-Id
	EnvID        string
	Arrived      time.Time
	Recipients   []Recipient
	// Ret is FULL or HDRS; empty means HDRS for failures (only the header
	// comes back unless the sender asked for all).
	Ret string
	// UTF8 selects message/global-delivery-status (RFC 6533).
	UTF8 bool
	// Now is the report's date.
	Now time.Time
}

// status is the enhanced status code reported for rc.
func status(rc Recipient) string {
	switch {
	case rc.Expired:
		return "5.4.7"
	case rc.Reply.IsZero() && (rc.Action == Delivered || rc.Action == Relayed):
		return "2.0.0"
	}
	return rc.Reply.Status()
}

// ErrNoRecipients is Build's answer to a report on nobody.
var ErrNoRecipients = errors.New("dsn: a report needs at least one recipient")

// maxHeaderCopy bounds what RET=HDRS returns of an original whose header
// section never ends (go-message's default header limit).
const maxHeaderCopy = 1 << 20

// Build writes the notification; original is the queued message (it is
// read up to its header for RET=HDRS). Every value of r becomes one line
// of printable text: ENVID and ORCPT come from the client (xtext-decoded,
// RFC 3461 §4), and a CR or LF in them would either add fields to the
// report or, refused by go-message, lose the notice.
func Build(w io.Writer, r *Report, original io.Reader) error {
	if len(r.Recipients) == 0 {
		return ErrNoRecipients
	}
	r = clean(r)
	var h message.Header
	h.Set("From", fmt.Sprintf("Mail Delivery System <MAILER-DAEMON@%s>", r.ReportingMTA))
	h.Set("To", "<"+r.To+">")
	h.Set("Subject", subject(r))
	h.Set("Date", r.Now.Format(time.RFC1123Z))
	id := r.NoticeID
	if id == "" {
		id = r.QueueID
	}
	h.Set("Message-Id", fmt.Sprintf("<%s.dsn@%s>", id, r.ReportingMTA))
	// RFC 3834: automatic replies must not trigger further ones.
	h.Set("Auto-Submitted", "auto-replied")
	h.Set("MIME-Version", "1.0")
	h.SetContentType("multipart/report", map[string]string{"report-type": "delivery-status"})
	mw, err := message.CreateWriter(w, h)
	if err != nil {
		return err
	}

	var th message.Header
	th.SetContentType("text/plain", map[string]string{"charset": "utf-8"})
	tw, err := mw.CreatePart(th)
	if err != nil {
		return err
	}
	io.WriteString(tw, humanText(r))
	tw.Close()

	var sh message.Header
	statusType := "message/delivery-status"
	if r.UTF8 {
		statusType = "message/global-delivery-status"
	}
	sh.SetContentType(statusType, nil)
	sw, err := mw.CreatePart(sh)
	if err != nil {
		return err
	}
	if err := writeStatus(sw, r); err != nil {
		return err
	}
	sw.Close()

	full := strings.EqualFold(r.Ret, "FULL")
	var oh message.Header
	switch {
	case full && r.UTF8:
		oh.SetContentType("message/global", nil)
	case full:
		oh.SetContentType("message/rfc822", nil)
	case r.UTF8:
		oh.SetContentType("message/global-headers", nil)
	default:
		oh.SetContentType("text/rfc822-headers", nil)
	}
	ow, err := mw.CreatePart(oh)
	if err != nil {
		return err
	}
	if full {
		_, err = io.Copy(ow, original)
	} else {
		err = copyHeader(ow, original)
	}
	if err != nil {
		return fmt.Errorf("dsn: copy original: %w", err)
	}
	ow.Close()
	return mw.Close()
}

func subject(r *Report) string {
	switch r.Recipients[0].Action {
	case Delayed:
		return "Delayed Mail (still being retried)"
	case Delivered, Relayed:
		return "Successful Mail Delivery Report"
	default:
		return "Undelivered Mail Returned to Sender"
	}
}

func humanText(r *Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "This is the mail system at host %s.\r\n\r\n", r.ReportingMTA)
	switch r.Recipients[0].Action {
	case Delayed:
		b.WriteString("Your message could not be delivered yet. It is still in the queue\r\nand delivery will be retried; you need not send it again.\r\n\r\n")
	case Delivered, Relayed:
		b.WriteString("Your message was delivered to the following recipients.\r\n\r\n")
	default:
		b.WriteString("I'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients.\r\n\r\n")
	}
	for _, rc := range r.Recipients {
		why := rc.Reply.String()
		if rc.Expired {
			why = "delivery time expired; last reply: " + why
		}
		fmt.Fprintf(&b, "<%s>: %s\r\n", rc.Address, oneLine(why))
	}
	return b.String()
}

// writeStatus writes the per-message block, then one block per recipient,
// each a header section ending in a blank line (RFC 3464 §2.1).
func writeStatus(w io.Writer, r *Report) error {
	var m textproto.Header
	// Fields are written in the order added; textproto.Header.Add
	// prepends, so they are added in reverse.
	fields := [][2]string{{"Reporting-MTA", "dns; " + r.ReportingMTA}}
	if r.EnvID != "" {
		fields = append(fields, [2]string{"Original-Envelope-Id", r.EnvID})
	}
	fields = append(fields, [2]string{"X-Relay-Queue-ID", r.QueueID})
	if !r.Arrived.IsZero() {
		fields = append(fields, [2]string{"Arrival-Date", r.Arrived.Format(time.RFC1123Z)})
	}
	addAll(&m, fields)
	if err := textproto.WriteHeader(w, m); err != nil {
		return err
	}
	for _, rc := range r.Recipients {
		var h textproto.Header
		var f [][2]string
		if rc.ORcpt != "" {
			f = append(f, [2]string{"Original-Recipient", origRcpt(rc.ORcpt)})
		}
		typ := "rfc822"
		if r.UTF8 {
			typ = "utf-8"
		}
		f = append(f, [2]string{"Final-Recipient", typ + "; " + rc.Address},
			[2]string{"Action", string(rc.Action)},
			[2]string{"Status", oneLine(status(rc))})
		if rc.RemoteMTA != "" {
			f = append(f, [2]string{"Remote-MTA", "dns; " + rc.RemoteMTA})
		}
		if !rc.Reply.IsZero() {
			f = append(f, [2]string{"Diagnostic-Code", "smtp; " + oneLine(rc.Reply.String())})
		}
		if !rc.LastAttempt.IsZero() {
			f = append(f, [2]string{"Last-Attempt-Date", rc.LastAttempt.Format(time.RFC1123Z)})
		}
		if !rc.WillRetryUntil.IsZero() {
			f = append(f, [2]string{"Will-Retry-Until", rc.WillRetryUntil.Format(time.RFC1123Z)})
		}
		addAll(&h, f)
		if err := textproto.WriteHeader(w, h); err != nil {
			return err
		}
	}
	return nil
}

func addAll(h *textproto.Header, fields [][2]string) {
	for i := len(fields) - 1; i >= 0; i-- {
		h.Add(fields[i][0], fields[i][1])
	}
}

// origRcpt renders ORCPT "rfc822;addr" as "rfc822; addr".
func origRcpt(s string) string {
	typ, addr, ok := strings.Cut(s, ";")
	if !ok {
		return "rfc822; " + s
	}
	return strings.ToLower(typ) + "; " + addr
}

// oneLine turns s into one line of text: control characters become
// spaces, and runs of white space one space.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	return strings.Join(strings.Fields(s), " ")
}

// clean returns a copy of r with every text value made one line.
func clean(r *Report) *Report {
	c := *r
	for _, p := range []*string{&c.ReportingMTA, &c.To, &c.QueueID, &c.NoticeID, &c.EnvID} {
		*p = oneLine(*p)
	}
	c.Recipients = make([]Recipient, len(r.Recipients))
	for i, rc := range r.Recipients {
		for _, p := range []*string{&rc.Address, &rc.ORcpt, &rc.RemoteMTA} {
			*p = oneLine(*p)
		}
		rc.Action = Action(oneLine(string(rc.Action)))
		c.Recipients[i] = rc
	}
	return &c
}

// copyHeader copies the header section of original, up to and including the
// blank line, and at most maxHeaderCopy bytes of it.
func copyHeader(w io.Writer, original io.Reader) error {
	br := bufio.NewReader(io.LimitReader(original, maxHeaderCopy))
	for {
		line, err := br.ReadBytes('\n')
		w.Write(line)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			return nil
		}
	}
}
