package mailbox

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/oklog/ulid/v2"

	"github.com/relaymail/relay/internal/store"
)

// Message is one message in one mailbox.
type Message struct {
	UID   uint32    `json:"-"`
	Blob  string    `json:"b"`
	Size  int64     `json:"s"`
	Date  time.Time `json:"d"` // IMAP internal date
	Flags []string  `json:"f,omitempty"`
}

// NewBlobID returns a fresh blob ID for a body that does not come from the
// spool (IMAP APPEND).
func NewBlobID() string { return ulid.Make().String() }

// PutBlobTxn stores a body once for refs holders and returns its size. The
// blob ID must be unique (a queue ID serves: one delivery per message).
// The header section is also kept apart (Head), up to maxHead bytes.
func PutBlobTxn(txn *badger.Txn, blob string, body io.Reader, refs uint32) (int64, error) {
	hc := &headCapture{r: body}
	size, err := store.PutChunks(txn, []byte(prefixBlob+blob), hc)
	if err != nil {
		return 0, fmt.Errorf("store blob %s: %w", blob, err)
	}
	if head := hc.head(size); head != nil {
		if err := txn.Set(headKey(blob), head); err != nil {
			return 0, fmt.Errorf("store blob %s header: %w", blob, err)
		}
	}
	return size, txn.Set(refKey(blob), binary.BigEndian.AppendUint32(nil, refs))
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

// refs reads blob's reference count.
func refs(txn *badger.Txn, blob string) (uint32, error) {
	item, err := txn.Get(refKey(blob))
	if err != nil {
		return 0, fmt.Errorf("blob %s refcount: %w", blob, err)
	}
	var n uint32
	err = item.Value(func(b []byte) error {
		if len(b) != 4 {
			return fmt.Errorf("blob %s refcount: bad length", blob)
		}
		n = binary.BigEndian.Uint32(b)
		return nil
	})
	return n, err
}

// unrefBlob drops one reference to blob and deletes it with the last.
func unrefBlob(txn *badger.Txn, blob string, size int64) error {
	n, err := refs(txn, blob)
	if err != nil {
		return err
	}
	if n > 1 {
		return txn.Set(refKey(blob), binary.BigEndian.AppendUint32(nil, n-1))
	}
	if err := store.DeleteChunks(txn, []byte(prefixBlob+blob), size); err != nil {
		return err
	}
	if err := txn.Delete(headKey(blob)); err != nil {
		return err
	}
	return txn.Delete(refKey(blob))
}

// AppendTxn adds a message referring to an existing blob (whose reference
// the caller already counted) to user's mailbox, taking the next UID.
func AppendTxn(txn *badger.Txn, user, mailbox, blob string, size int64, date time.Time, flags []string) (*Mailbox, uint32, error) {
	mb, err := GetMailboxTxn(txn, user, mailbox)
	if err != nil {
		return nil, 0, err
	}
	uid := mb.UIDNext
	mb.UIDNext++
	mb.Messages++
	mb.Size += size
	if !hasFlag(flags, FlagSeen) {
		mb.Unseen++
	}
	m := Message{UID: uid, Blob: blob, Size: size, Date: date.UTC().Truncate(time.Second), Flags: flags}
	if err := putMsg(txn, msgKey(mb.ID, uid), m); err != nil {
		return nil, 0, err
	}
	if err := putMailbox(txn, mb); err != nil {
		return nil, 0, err
	}
	return mb, uid, nil
}

// DeliverTxn stores body once and files it in the INBOX of every user in
// users (resolved account addresses), inside txn. The caller commits and then
// calls Notify for each user.
func DeliverTxn(txn *badger.Txn, blob string, body io.Reader, users []string, date time.Time) error {
	if len(users) == 0 {
		return nil
	}
	size, err := PutBlobTxn(txn, blob, body, uint32(len(users)))
	if err != nil {
		return err
	}
	for _, u := range users {
		if _, _, err := AppendTxn(txn, NormalizeUser(u), "INBOX", blob, size, date, nil); err != nil {
			return fmt.Errorf("deliver to %s: %w", u, err)
		}
	}
	return nil
}

// Messages lists the messages of one mailbox in UID order.
func (s *Store) Messages(user, mailbox string) ([]Message, error) {
	var out []Message
	err := s.db.View(func(txn *badger.Txn) error {
		mb, err := GetMailboxTxn(txn, user, mailbox)
		if err != nil {
			return err
		}
		it := txn.NewIterator(badger.IteratorOptions{Prefix: msgPrefix(mb.ID), PrefetchValues: false})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			m, err := readMsg(it.Item())
			if err != nil {
				return err
			}
			out = append(out, m)
		}
		return nil
	})
	return out, err
}

// Open returns a reader over a message's body.
func (s *Store) Open(m Message) io.Reader {
	return store.ChunkReader(s.db, nil, []byte(prefixBlob+m.Blob), m.Size)
}

// Head returns the stored header section of m: the bytes of its body up to
// and including the empty line that ends the header. ok is false when none
// was stored (a header over maxHead, or a blob older than the header
// store); the body has it then.
func (s *Store) Head(m Message) (head []byte, ok bool, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		head, ok, err = headTxn(txn, m)
		return err
	})
	return head, ok, err
}

func headTxn(txn *badger.Txn, m Message) ([]byte, bool, error) {
	item, err := txn.Get(headKey(m.Blob))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err == nil {
		var head []byte
		if head, err = item.ValueCopy(nil); err == nil {
			return head, true, nil
		}
	}
	return nil, false, fmt.Errorf("read header of %s: %w", m.Blob, err)
}

// Append stores a new message (IMAP APPEND) in user's mailbox and returns
// the mailbox's UIDVALIDITY and the new UID.
func (s *Store) Append(user, mailbox string, body io.Reader, date time.Time, flags []string) (uidValidity, uid uint32, err error) {
	user = NormalizeUser(user)
	blob := NewBlobID()
	// The body is read once; a conflict retry must not read it again.
	data, err := io.ReadAll(body)
	if err != nil {
		return 0, 0, fmt.Errorf("append: read message: %w", err)
	}
	err = s.update(func(txn *badger.Txn) error {
		size, err := PutBlobTxn(txn, blob, bytes.NewReader(data), 1)
		if err != nil {
			return err
		}
		mb, u, err := AppendTxn(txn, user, mailbox, blob, size, date, flags)
		if err != nil {
			return err
		}
		uidValidity, uid = mb.UIDValidity, u
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	if err := s.db.Sync(); err != nil {
		return 0, 0, err
	}
	s.Notify(user)
	return uidValidity, uid, nil
}
