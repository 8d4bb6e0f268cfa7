package spool

import (
	"context"
	"errors"
	"io"
	"time"
)

// Backend is the storage the spool needs, in the spool's own terms. A
// storage engine implements it (internal/store/badger for one node,
// internal/store/postgres for several sharing one database); the spool and
// everything above it never learn which one runs.
//
// Every method is safe for concurrent use and returns the neutral errors of
// internal/store (ErrNotFound, ErrNoSpace, ErrUnavailable, ErrLeaseLost...),
// wrapped with context. Engines retry their own conflicts (store.Retry).
type Backend interface {
	// Enqueue commits m, its body and the accepted event in one
	// transaction and returns once all three are durable: synced to disk,
	// or committed with synchronous commit. m.ID is set by the caller;
	// m.Size, and an accepted event's Size, are set to the body's. An
	// event with no kind is not recorded (a restored message).
	Enqueue(ctx context.Context, m *Message, body io.Reader, ev Event) error
	// Get reads message id's envelope and recipients.
	Get(ctx context.Context, id string) (*Message, error)
	// Body opens message id's body.
	Body(ctx context.Context, id string) (io.ReadCloser, error)
	// Page returns up to limit messages with IDs above after, in ID
	// (arrival) order; each call is one short read, so that listing a
	// queue of any size holds one page at a time.
	Page(ctx context.Context, after string, limit int) ([]*Message, error)
	// Count is the number of queued messages; Oldest the arrival time of
	// the oldest (zero for an empty queue).
	Count(ctx context.Context) (int, error)
	Oldest(ctx context.Context) (time.Time, error)
	// NextDue is the earliest time at which a message not held and not
	// leased falls due.
	NextDue(ctx context.Context) (time.Time, bool, error)

	// Claim leases to this node up to limit messages that are due at now
	// and neither held nor leased, earliest first, for d. A leased
	// message is handed to no other claimer until its lease ends or is
	// released. Claims are fair between nodes (each takes what is due
	// and free, without scanning past what others hold).
	Claim(ctx context.Context, now time.Time, limit int, d time.Duration) ([]Lease, error)
	// Renew extends a lease still held (a long delivery).
	Renew(ctx context.Context, l Lease, d time.Duration) error
	// Release gives a lease back; the message is due again as its
	// recipients say.
	Release(ctx context.Context, l Lease) error

	// Update runs fn on message id and commits, in one transaction, the
	// changed message (removed once every recipient is final), the
	// effects fn returns and the release of lease when not nil. With a
	// lease, the update is refused with store.ErrLeaseLost when another
	// claim has taken the message over since (fencing). fn may run more
	// than once (on a conflict) and must not keep m.
	Update(ctx context.Context, id string, lease *Lease, fn func(m *Message) (Effects, error)) error
	// Delete removes message id with its body, recording ev.
	Delete(ctx context.Context, id string, ev Event) error

	// Record appends events that change no state (attempts).
	Record(ctx context.Context, evs ...Event) error
	// LastEvents returns the newest n events, oldest first; EventsSince
	// up to limit events after the position (since, after) in (time,
	// cursor) order, those timed at since included when after is empty;
	// History
	// the events of message id, oldest first. Each carries its Cursor, a
	// unique position in the log. Events are kept for EventRetention.
	// (Commits on several nodes, or concurrent ones on one, need not
	// reach the log in time order, so a follower reads a little behind
	// what it saw and skips the cursors it had.)
	LastEvents(ctx context.Context, n int) ([]Event, error)
	EventsSince(ctx context.Context, since time.Time, after string, limit int) ([]Event, error)
	History(ctx context.Context, id string) ([]Event, error)

	// QueueChanged returns a channel closed at the next change of due
	// work on any node (a new message, a flush, a release, a lease
	// given back). EventsChanged is the same for the event log.
	QueueChanged() <-chan struct{}
	EventsChanged() <-chan struct{}
}

// Lease is a node's claim on a queued message. Epoch grows with every
// claim of the message, so a write carrying an older one is known late.
type Lease struct {
	ID    string
	Node  string
	Epoch uint64
	Until time.Time
}

// Effects are what an Update commits besides the message itself.
type Effects struct {
	// Events are recorded in the same commit.
	Events []Event
	// Notices are messages queued in the same commit (delivery status
	// notifications), so that a failure and its bounce are one change.
	Notices []Notice
	// File, when not nil, files the message's body into mailboxes in the
	// same commit: local delivery. A recipient marked delivered and its
	// copy in the mailbox commit together or not at all.
	File *Filing
	// KeepLease keeps the update's lease after the commit, for a delivery
	// with a further step (the remote recipients after the local ones);
	// otherwise the update gives it back.
	KeepLease bool
}

// Notice is a message queued by an Update, with its whole body.
type Notice struct {
	Message *Message
	Body    []byte
}

// Filing puts one copy of a message into the INBOX of each account.
type Filing struct {
	Accounts []string
	// Date is the mailboxes' internal date of the message.
	Date time.Time
}

// ErrNoAccount is returned by an Update whose filing names an account that
// does not exist (any more): the caller decides the recipient's fate anew.
var ErrNoAccount = errors.New("no such account")

// NoAccountError names the account a filing did not find.
type NoAccountError struct{ Account string }

func (e *NoAccountError) Error() string { return "no such account: " + e.Account }

// Is makes NoAccountError match ErrNoAccount.
func (e *NoAccountError) Is(target error) bool { return target == ErrNoAccount }
