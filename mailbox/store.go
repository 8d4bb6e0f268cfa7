// Package mailbox is the relay's mailbox store: accounts, their mailboxes,
// and the messages in them, with IMAP's per-mailbox UIDs, UIDVALIDITY and
// UIDNEXT, on the Badger database the spool shares.
//
// Invariants:
//   - Every account has INBOX, Sent, Drafts, Trash, Junk and Archive from the
//     moment it exists, each with its RFC 6154 special-use attribute.
//   - A message body is a blob stored once, however many mailboxes hold it;
//     each holder counts in the blob's reference count, and the blob goes
//     with the last reference.
//   - UIDs are never reused: UIDNEXT only grows, in the same transaction as
//     the insert that uses it. UIDVALIDITY is fixed at mailbox creation and
//     unique across re-creations.
//   - The *Txn functions write into a caller's transaction, so that a local
//     delivery and the spool's recipient state commit together; watchers are
//     told of a change only after its commit (Notify), never before.
//
// Keys (all under the "m/" prefix):
//
//	m/u/<user>                   account (JSON)
//	m/n/<user>\x00<mailbox>      mailbox (JSON)
//	m/x/<mailbox id:u64><uid:u32> message record (JSON)
//	m/b/<blob><chunk:u32>        blob body chunks
//	m/r/<blob>                   blob reference count (u32)
//	m/seq/mailbox, m/seq/uidvalidity  counters
package mailbox

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/relaymail/relay/internal/store"
)

// Errors the store returns; callers test them with errors.Is.
var (
	ErrNoUser       = errors.New("no such user")
	ErrUserExists   = errors.New("user already exists")
	ErrNoMailbox    = errors.New("no such mailbox")
	ErrMailboxExist = errors.New("mailbox already exists")
	ErrAuth         = errors.New("authentication failed")
	ErrHasMail      = errors.New("user has mail")
	ErrBadAddress   = errors.New("not a valid address")
	ErrBadPassword  = errors.New("unusable password")
)

// Store is the mailbox store. It is safe for concurrent use.
type Store struct {
	db  *store.DB
	now func() time.Time

	mu       sync.Mutex
	watchers map[string][]chan struct{} // user -> change signals
}

// New returns the store on db; now is the clock (nil for time.Now).
func New(db *store.DB, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{db: db, now: now, watchers: map[string][]chan struct{}{}}
}

// DB returns the underlying database (for transactions that span packages).
func (s *Store) DB() *store.DB { return s.db }

// Watch returns a channel that receives a value after each committed change
// to user's mailboxes, and a function to stop watching. Signals coalesce: a
// slow watcher sees one signal for many changes.
func (s *Store) Watch(user string) (<-chan struct{}, func()) {
	user = NormalizeUser(user)
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.watchers[user] = append(s.watchers[user], ch)
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		ws := s.watchers[user]
		for i, w := range ws {
			if w == ch {
				s.watchers[user] = append(ws[:i:i], ws[i+1:]...)
				break
			}
		}
		if len(s.watchers[user]) == 0 {
			delete(s.watchers, user)
		}
	}
}

// Notify tells user's watchers that a committed change happened. Callers
// that write with the *Txn functions call it after their commit.
func (s *Store) Notify(user string) {
	user = NormalizeUser(user)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ch := range s.watchers[user] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// NormalizeUser lower-cases an account address: local parts are matched
// without regard to case, as most mail systems do.
func NormalizeUser(addr string) string { return strings.ToLower(strings.TrimSpace(addr)) }

// Resolve maps a recipient address to the account it reaches:
// user+tag@domain goes to user@domain (plus-addressing).
func Resolve(rcpt string) string {
	rcpt = NormalizeUser(rcpt)
	at := strings.LastIndexByte(rcpt, '@')
	if at < 0 {
		return rcpt
	}
	local, domain := rcpt[:at], rcpt[at:]
	if i := strings.IndexByte(local, '+'); i > 0 {
		local = local[:i]
	}
	return local + domain
}

const (
	prefixUser    = "m/u/"
	prefixMailbox = "m/n/"
	prefixMsg     = "m/x/"
	prefixBlob    = "m/b/"
	prefixRef     = "m/r/"
	keySeqMailbox = "m/seq/mailbox"
	keySeqUIDV    = "m/seq/uidvalidity"
)

func userKey(u string) []byte { return []byte(prefixUser + u) }

func mailboxKey(u, name string) []byte { return []byte(prefixMailbox + u + "\x00" + name) }

func mailboxPrefix(u string) []byte { return []byte(prefixMailbox + u + "\x00") }

func msgPrefix(mbox uint64) []byte {
	return binary.BigEndian.AppendUint64([]byte(prefixMsg), mbox)
}

func msgKey(mbox uint64, uid uint32) []byte {
	return binary.BigEndian.AppendUint32(msgPrefix(mbox), uid)
}

func blobKey(blob string, chunk uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte(prefixBlob+blob), chunk)
}

func refKey(blob string) []byte { return []byte(prefixRef + blob) }

func getJSON(txn *badger.Txn, key []byte, v any) error {
	item, err := txn.Get(key)
	if err != nil {
		return err
	}
	return item.Value(func(b []byte) error { return json.Unmarshal(b, v) })
}

func putJSON(txn *badger.Txn, key []byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return txn.Set(key, b)
}

// counter increments the u64 at key inside txn and returns the new value.
func counter(txn *badger.Txn, key string, atLeast uint64) (uint64, error) {
	var n uint64
	item, err := txn.Get([]byte(key))
	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
	case err != nil:
		return 0, err
	default:
		if err := item.Value(func(b []byte) error {
			if len(b) != 8 {
				return fmt.Errorf("counter %s: bad length %d", key, len(b))
			}
			n = binary.BigEndian.Uint64(b)
			return nil
		}); err != nil {
			return 0, err
		}
	}
	n = max(n+1, atLeast)
	return n, txn.Set([]byte(key), binary.BigEndian.AppendUint64(nil, n))
}

// update runs fn in a read-write transaction, retrying on conflicts with
// concurrent writers (a delivery and an IMAP APPEND to one mailbox).
func (s *Store) update(fn func(txn *badger.Txn) error) error {
	for range 32 {
		err := s.db.Update(fn)
		if !errors.Is(err, badger.ErrConflict) {
			return err
		}
	}
	return badger.ErrConflict
}
