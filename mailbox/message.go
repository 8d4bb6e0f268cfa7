package mailbox

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
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

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// NewBlobID returns a fresh blob ID for a body that does not come from the
// spool (IMAP APPEND).
func NewBlobID() string { return ulid.Make().String() }

// PutBlobTxn stores a body once for refs holders and returns its size. The
// blob ID must be unique (a queue ID serves: one delivery per message).
func PutBlobTxn(txn *badger.Txn, blob string, body io.Reader, refs uint32) (int64, error) {
	size, err := store.PutChunks(txn, []byte(prefixBlob+blob), body)
	if err != nil {
		return 0, fmt.Errorf("store blob %s: %w", blob, err)
	}
	return size, txn.Set(refKey(blob), binary.BigEndian.AppendUint32(nil, refs))
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
	if err := putJSON(txn, mailboxKey(mb.User, mb.Name), mb); err != nil {
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
		it := txn.NewIterator(badger.IteratorOptions{Prefix: msgPrefix(mb.ID), PrefetchValues: true})
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
