package mailbox

import (
	"bytes"
	"fmt"
	"io"
	"time"
)

// Message is one message in one mailbox.
type Message struct {
	UID   uint32    `json:"-"`
	Blob  string    `json:"b"`
	Size  int64     `json:"s"`
	Date  time.Time `json:"d"` // IMAP internal date
	Flags []string  `json:"f,omitempty"`
}

// maxHead is the longest header section stored apart from its body. Real
// headers, DKIM signatures and Received chains included, are a few KiB; a
// longer one is read from the body like a message without a stored header.
const maxHead = 32 << 10

// HeadCapture passes a body through and keeps its header section for a
// stored copy (maxHead bytes at most); Head returns it once the body was
// read to its end.
type HeadCapture struct{ h headCapture }

// NewHeadCapture reads r.
func NewHeadCapture(r io.Reader) *HeadCapture { return &HeadCapture{headCapture{r: r}} }

func (c *HeadCapture) Read(p []byte) (int, error) { return c.h.Read(p) }

// Head is the header section of the body of size bytes read through c, or
// nil when it is not to be stored apart.
func (c *HeadCapture) Head(size int64) []byte { return c.h.head(size) }

// headCapture passes a body through and keeps its header section: the
// bytes up to and including the first empty line, which is where IMAP's
// header parser ends it too. It copies no more than that.
type headCapture struct {
	r       io.Reader
	buf     []byte
	lineLen int  // bytes of the current line seen so far
	lineCR  bool // the current line so far is a lone CR
	end     int  // length of the header section, once found
	full    bool // the header section is longer than maxHead
}

func (h *headCapture) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if h.end == 0 && !h.full && n > 0 {
		h.take(p[:n])
	}
	return n, err
}

// take scans b for the empty line and keeps what belongs to the header.
func (h *headCapture) take(b []byte) {
	room := maxHead - len(h.buf)
	for i := 0; i < len(b); {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			h.lineCR = h.lineLen == 0 && len(b)-i == 1 && b[i] == '\r'
			h.lineLen += len(b) - i
			break
		}
		blank := h.lineLen+j == 0 ||
			h.lineLen+j == 1 && (j == 1 && b[i] == '\r' || j == 0 && h.lineCR)
		h.lineLen, h.lineCR = 0, false
		i += j + 1
		if blank {
			if i > room {
				h.full = true
				return
			}
			h.buf = append(h.buf, b[:i]...)
			h.end = len(h.buf)
			return
		}
	}
	if len(b) > room {
		h.full = true
		return
	}
	h.buf = append(h.buf, b...)
}

// head returns the header section of a body of size bytes: up to the empty
// line, or the whole body when it has none and fits, else nil.
func (h *headCapture) head(size int64) []byte {
	switch {
	case h.end > 0:
		return h.buf[:h.end]
	case !h.full && int64(len(h.buf)) == size && size > 0:
		return h.buf
	}
	return nil
}

// Messages lists the messages of one mailbox in UID order.
func (s *Store) Messages(user, mailbox string) ([]Message, error) {
	mb, err := s.GetMailbox(user, mailbox)
	if err != nil {
		return nil, err
	}
	var out []Message
	err = s.b.ForEachMessage(ctx, mb.ID, func(m Message, _ HeadReader) error {
		out = append(out, m)
		return nil
	})
	return out, err
}

// Open returns a reader over a message's body.
func (s *Store) Open(m Message) io.Reader { return s.b.Open(ctx, m) }

// Head returns the stored header section of m: the bytes of its body up to
// and including the empty line that ends the header. ok is false when none
// was stored (a header over maxHead, or a blob older than the header
// store); the body has it then.
func (s *Store) Head(m Message) (head []byte, ok bool, err error) { return s.b.Head(ctx, m) }

// Append stores a new message (IMAP APPEND) in user's mailbox and returns
// the mailbox's UIDVALIDITY and the new UID. The message is durable when it
// returns.
func (s *Store) Append(user, mailbox string, body io.Reader, date time.Time, flags []string) (uidValidity, uid uint32, err error) {
	user = NormalizeUser(user)
	// The body is read once, before the store is asked: a retry inside
	// the engine must not read the client again.
	data, err := io.ReadAll(body)
	if err != nil {
		return 0, 0, fmt.Errorf("append: read message: %w", err)
	}
	mb, uid, err := s.b.Append(ctx, user, CanonicalName(mailbox), bytes.NewReader(data), date, flags)
	if err != nil {
		return 0, 0, err
	}
	s.Notify(user)
	return mb.UIDValidity, uid, nil
}
