package mailbox

import (
	"errors"
	"fmt"
	"strings"

	"github.com/dgraph-io/badger/v4"
)

// Mailbox is one folder of an account.
type Mailbox struct {
	ID          uint64 `json:"id"`
	User        string `json:"user"`
	Name        string `json:"name"`
	SpecialUse  string `json:"special_use,omitempty"`
	UIDValidity uint32 `json:"uidvalidity"`
	UIDNext     uint32 `json:"uidnext"`
	Subscribed  bool   `json:"subscribed"`
	// Messages and Size are kept with every insert and removal, so STATUS
	// needs no scan.
	Messages uint32 `json:"messages"`
	Size     int64  `json:"size"`
	Unseen   uint32 `json:"unseen"`
	// FirstRecent is the lowest UID not yet claimed as \Recent by a
	// session (ClaimRecent).
	FirstRecent uint32 `json:"first_recent,omitempty"`
}

// Delimiter is the hierarchy delimiter of mailbox names.
const Delimiter = '/'

// CanonicalName spells INBOX in capitals whatever the client sent (RFC 3501
// §5.1: INBOX is case-insensitive); other names keep their case.
func CanonicalName(name string) string {
	if strings.EqualFold(name, "INBOX") {
		return "INBOX"
	}
	if len(name) > 6 && strings.EqualFold(name[:6], "INBOX/") {
		return "INBOX" + name[5:]
	}
	return name
}

func (s *Store) createMailboxTxn(txn *badger.Txn, user, name, specialUse string) (*Mailbox, error) {
	name = CanonicalName(name)
	if _, err := txn.Get(mailboxKey(user, name)); err == nil {
		return nil, fmt.Errorf("%s: %w", name, ErrMailboxExist)
	} else if !errors.Is(err, badger.ErrKeyNotFound) {
		return nil, err
	}
	id, err := counter(txn, keySeqMailbox, 1)
	if err != nil {
		return nil, err
	}
	// UIDVALIDITY: at least the current time, and always above any value
	// given before, so a mailbox deleted and made again is never mistaken
	// for the old one by a client's cache.
	uv, err := counter(txn, keySeqUIDV, uint64(uint32(s.now().Unix())))
	if err != nil {
		return nil, err
	}
	mb := &Mailbox{ID: id, User: user, Name: name, SpecialUse: specialUse, UIDValidity: uint32(uv), UIDNext: 1, Subscribed: true}
	return mb, putMailbox(txn, mb)
}

// CreateMailbox makes a mailbox for user.
func (s *Store) CreateMailbox(user, name, specialUse string) (*Mailbox, error) {
	user = NormalizeUser(user)
	var mb *Mailbox
	err := s.update(func(txn *badger.Txn) error {
		if _, err := txn.Get(userKey(user)); err != nil {
			return fmt.Errorf("%s: %w", user, ErrNoUser)
		}
		var err error
		mb, err = s.createMailboxTxn(txn, user, name, specialUse)
		return err
	})
	return mb, err
}

// GetMailboxTxn reads one of user's mailboxes inside txn.
func GetMailboxTxn(txn *badger.Txn, user, name string) (*Mailbox, error) {
	item, err := txn.Get(mailboxKey(NormalizeUser(user), CanonicalName(name)))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("%s: %w", name, ErrNoMailbox)
	}
	if err != nil {
		return nil, err
	}
	return readMailbox(item)
}

// GetMailbox reads one of user's mailboxes.
func (s *Store) GetMailbox(user, name string) (*Mailbox, error) {
	var mb *Mailbox
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		mb, err = GetMailboxTxn(txn, user, name)
		return err
	})
	return mb, err
}

// Mailboxes lists user's mailboxes in name order.
func (s *Store) Mailboxes(user string) ([]*Mailbox, error) {
	user = NormalizeUser(user)
	var out []*Mailbox
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: mailboxPrefix(user), PrefetchValues: false})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			mb, err := readMailbox(it.Item())
			if err != nil {
				return err
			}
			out = append(out, mb)
		}
		return nil
	})
	return out, err
}

// purgeMailbox deletes every message of mailbox id, in batches that fit a
// transaction, dropping blob references as it goes.
func (s *Store) purgeMailbox(id uint64) error {
	for {
		more := false
		err := s.update(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: msgPrefix(id), PrefetchValues: false})
			defer it.Close()
			n := 0
			for it.Rewind(); it.Valid(); it.Next() {
				if n == purgeBatch {
					more = true
					return nil
				}
				m, err := readMsg(it.Item())
				if err != nil {
					return err
				}
				if err := txn.Delete(it.Item().KeyCopy(nil)); err != nil {
					return err
				}
				if err := unrefBlob(txn, m.Blob, m.Size); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil || !more {
			return err
		}
	}
}

const purgeBatch = 500
