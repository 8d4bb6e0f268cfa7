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
//	m/n/<user>\x00<mailbox>      mailbox (codec.go)
//	m/x/<mailbox id:u64><uid:u32> message record (codec.go)
//	m/b/<blob><chunk:u32>        blob body chunks
//	m/h/<blob>                   the blob's header section, when short
//	m/r/<blob>                   blob reference count (u32)
//	m/seq/mailbox, m/seq/uidvalidity  counters
package mailbox

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
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

	mu   sync.Mutex
	subs map[string][]*Subscription // by user

	// batch is how many messages one transaction of a bulk command
	// touches (batchMessages); batchFault, when set, fails a part before
	// it runs. Both are for tests (export_test.go).
	batch      int
	batchFault func(part int) error
}

// New returns the store on db; now is the clock (nil for time.Now).
func New(db *store.DB, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{db: db, now: now, subs: map[string][]*Subscription{}, batch: batchMessages}
}

// DB returns the underlying database (for transactions that span packages).
func (s *Store) DB() *store.DB { return s.db }

// Event is a committed change that sessions with a mailbox selected must
// hear of. A zero Event (no mailbox) only says "look for new messages".
type Event struct {
	Mailbox  uint64
	Expunged []uint32 // UIDs removed, ascending
	Flags    []uint32 // UIDs whose flags changed
	// Source is the session that made the change, so that its own
	// change is not reported back to it.
	Source any
	// Overflow says the change is not known in detail (it was too large
	// to carry between nodes, or notices may have been lost): sessions
	// re-read the mailbox.
	Overflow bool
}

// Subscription receives a user's events. C gets a value whenever events are
// waiting; Drain takes them.
type Subscription struct {
	C <-chan struct{}
	c chan struct{}

	mu       sync.Mutex
	events   []Event
	overflow bool
	store    *Store
	user     string
}

// maxQueued bounds a subscription's backlog; past it the subscriber is told
// to resynchronise instead (Drain's overflow).
const maxQueued = 10000

// Subscribe starts receiving user's events. Close it when done.
func (s *Store) Subscribe(user string) *Subscription {
	user = NormalizeUser(user)
	c := make(chan struct{}, 1)
	sub := &Subscription{C: c, c: c, store: s, user: user}
	s.mu.Lock()
	s.subs[user] = append(s.subs[user], sub)
	s.mu.Unlock()
	return sub
}

// Drain returns the waiting events; overflow says some were dropped and the
// caller must re-read its state from the store.
func (sub *Subscription) Drain() (events []Event, overflow bool) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	events, overflow = sub.events, sub.overflow
	sub.events, sub.overflow = nil, false
	return events, overflow
}

// Close stops the subscription.
func (sub *Subscription) Close() {
	s := sub.store
	s.mu.Lock()
	defer s.mu.Unlock()
	subs := s.subs[sub.user]
	if i := slices.Index(subs, sub); i >= 0 {
		s.subs[sub.user] = slices.Delete(subs, i, i+1)
	}
	if len(s.subs[sub.user]) == 0 {
		delete(s.subs, sub.user)
	}
}

func (sub *Subscription) push(ev Event) {
	sub.mu.Lock()
	if len(sub.events) >= maxQueued {
		sub.overflow = true
		sub.events = nil
	}
	if ev.Mailbox != 0 && !sub.overflow {
		sub.events = append(sub.events, ev)
	}
	sub.mu.Unlock()
	select {
	case sub.c <- struct{}{}:
	default:
	}
}

// publish hands ev to every subscription of user. Callers publish only after
// the change committed.
func (s *Store) publish(user string, ev Event) {
	user = NormalizeUser(user)
	s.mu.Lock()
	subs := slices.Clone(s.subs[user])
	s.mu.Unlock()
	for _, sub := range subs {
		sub.push(ev)
	}
}

// Watch returns a channel that receives a value after each committed change
// to user's mailboxes, and a function to stop watching. Signals coalesce.
func (s *Store) Watch(user string) (<-chan struct{}, func()) {
	sub := s.Subscribe(user)
	return sub.C, sub.Close
}

// Notify tells user's watchers that messages may have arrived. Callers that
// write with the *Txn functions call it after their commit.
func (s *Store) Notify(user string) { s.publish(user, Event{}) }

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
	prefixHead    = "m/h/"
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

func headKey(blob string) []byte { return []byte(prefixHead + blob) }

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
// concurrent writers (a delivery and an IMAP APPEND to one mailbox), with a
// short growing pause so that many writers to one mailbox take turns.
func (s *Store) update(fn func(txn *badger.Txn) error) error {
	for try := range 64 {
		err := s.db.Update(fn)
		if !errors.Is(err, badger.ErrConflict) {
			return err
		}
		time.Sleep(time.Duration(rand.IntN(try+1)+1) * 200 * time.Microsecond)
	}
	return badger.ErrConflict
}
