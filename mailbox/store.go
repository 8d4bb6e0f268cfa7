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
//   - A local delivery and the queue's record of it commit together: that is
//     one operation of the storage engine (spool.Backend.Update with a
//     filing), not a transaction handed between packages. Sessions hear of a
//     change only after its commit, on this node and on every other node
//     sharing the store (Backend.Publish).
//
// Storage comes through Backend (backend.go); the engines live under
// internal/store.
package mailbox

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"
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
	b   Backend
	now func() time.Time

	mu   sync.Mutex
	subs map[string][]*Subscription // by user

	// batch is how many messages one transaction of a bulk command
	// touches (batchMessages); batchFault, when set, fails a part before
	// it runs. Both are for tests (export_test.go).
	batch      int
	batchFault func(part int) error
}

// New returns the store on backend b; now is the clock (nil for time.Now).
// It receives b's change notices, so one Store per backend.
func New(b Backend, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	s := &Store{b: b, now: now, subs: map[string][]*Subscription{}, batch: batchMessages}
	b.OnChange(s.changed)
	return s
}

// ctx is the context of the store's calls: the IMAP server's commands
// run to the end once started.
var ctx = context.Background()

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
	if len(sub.events) >= maxQueued || ev.Overflow {
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

// changed hands a change from the backend (this node's or another's) to
// every subscription of user; an empty user means every user, with an
// overflow: notices may have been lost.
func (s *Store) changed(user string, ev Event) {
	s.mu.Lock()
	var subs []*Subscription
	if user == "" {
		for _, us := range s.subs {
			subs = append(subs, us...)
		}
	} else {
		subs = slices.Clone(s.subs[NormalizeUser(user)])
	}
	s.mu.Unlock()
	for _, sub := range subs {
		sub.push(ev)
	}
}

// publish announces a committed change of user's mailboxes to every node.
func (s *Store) publish(user string, ev Event) { s.b.Publish(NormalizeUser(user), ev) }

// Watch returns a channel that receives a value after each committed change
// to user's mailboxes, and a function to stop watching. Signals coalesce.
func (s *Store) Watch(user string) (<-chan struct{}, func()) {
	sub := s.Subscribe(user)
	return sub.C, sub.Close
}

// Notify tells user's watchers, on every node, that messages may have
// arrived.
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
