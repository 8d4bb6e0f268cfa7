// Package spool is the relay's durable queue: accepted messages, their
// envelopes, per-recipient delivery state and the due-time index, on Badger.
//
// Invariants:
//   - Enqueue returns nil only after the envelope and every body chunk are
//     committed in one transaction and synced to disk; a crash never leaves a
//     half-written message visible.
//   - Every change to a recipient's state is one transaction (Update), which
//     also rewrites the message's entry in the due index. A message whose
//     recipients are all final (delivered or failed) is removed in that same
//     transaction, so a recipient leaves the spool only together with the
//     record of its outcome.
//   - The due index holds one key per message that is neither held nor
//     finished, ordered by the earliest next attempt of its pending
//     recipients, so finding due work costs O(due), not O(queue).
//
// Keys (all under the "q/" prefix, which the spool owns in the shared
// database):
//
//	q/e/<id>                 envelope (codec.go)
//	q/b/<id><chunk:u32 BE>   body, in store.BodyChunk pieces (store.PutChunks)
//	q/d/<due:u64 BE ns><id>  due index, empty value
//
// The event log (events.go) lives under "ev/": every state change records its
// event in the transaction that makes the change, so the log and the queue
// cannot disagree; events are published to the mail log, hooks and `tail -f`
// followers only after the commit.
package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/oklog/ulid/v2"

	"github.com/relaymail/relay/internal/store"
)

// ErrNotFound is returned for an ID that is not in the spool.
var ErrNotFound = errors.New("no such message in the queue")

// State is a recipient's delivery state.
type State string

// Recipient states.
const (
	Pending   State = "pending"
	Delivered State = "delivered"
	Failed    State = "failed"
)

// MailParams are the MAIL FROM parameters worth keeping (RFC 1870, 6152,
// 6531, 3461, 4954).
type MailParams struct {
	Size     int64  `json:"size,omitempty"`
	Body     string `json:"body,omitempty"` // 7BIT or 8BITMIME
	SMTPUTF8 bool   `json:"smtputf8,omitempty"`
	Ret      string `json:"ret,omitempty"`   // FULL or HDRS
	EnvID    string `json:"envid,omitempty"` // decoded ENVID
	Auth     string `json:"auth,omitempty"`  // AUTH= mailbox
}

// Recipient is one RCPT TO with its parameters and delivery state.
type Recipient struct {
	Address string `json:"address"`
	// Notify holds the RFC 3461 NOTIFY keywords (NEVER, SUCCESS, FAILURE,
	// DELAY); empty means the default (FAILURE, DELAY).
	Notify []string `json:"notify,omitempty"`
	// ORcpt is the RFC 3461 ORCPT as "type;address".
	ORcpt       string    `json:"orcpt,omitempty"`
	State       State     `json:"state"`
	Attempts    int       `json:"attempts"`
	NextAttempt time.Time `json:"next_attempt"`
	LastError   string    `json:"last_error"`
	// RemoteMTA is the host that gave the last answer, for DSNs.
	RemoteMTA string `json:"remote_mta,omitempty"`
	// DelayNotified records that the sender was told of a delay, which
	// happens once.
	DelayNotified bool `json:"delay_notified,omitempty"`
}

// Message is a queued message's envelope and state; the body is stored
// apart and read with Body.
type Message struct {
	ID       string      `json:"id"`
	Arrived  time.Time   `json:"arrived"`
	ClientIP string      `json:"client_ip,omitempty"`
	Helo     string      `json:"helo,omitempty"`
	From     string      `json:"from"`
	Params   MailParams  `json:"params"`
	Rcpts    []Recipient `json:"recipients"`
	Size     int64       `json:"size"`
	Hold     bool        `json:"hold,omitempty"`
	// Due is the time under which the message sits in the due index, or
	// zero when it has no entry there. Only the spool sets it.
	Due time.Time `json:"due,omitzero"`
}

// Done reports whether every recipient has reached a final state.
func (m *Message) Done() bool {
	for _, r := range m.Rcpts {
		if r.State == Pending {
			return false
		}
	}
	return true
}

// NextDue is the earliest next attempt among pending recipients, or zero when
// the message is held or has nothing pending: when it falls due.
func (m *Message) NextDue() time.Time {
	if m.Hold {
		return time.Time{}
	}
	var due time.Time
	for _, r := range m.Rcpts {
		if r.State != Pending {
			continue
		}
		next := r.NextAttempt
		if next.IsZero() {
			// A recipient without a time is due at once; skipping it
			// would drop a pending message from the index for good.
			next = time.Unix(0, 1)
		}
		if due.IsZero() || next.Before(due) {
			due = next
		}
	}
	return due
}

// Spool is the queue. It is safe for concurrent use.
type Spool struct {
	db  *store.DB
	now func() time.Time

	mu      sync.Mutex
	waiters chan struct{}

	mailLog   *slog.Logger
	hooks     []func(Event)
	followers followers
	// earliest is the earliest due time (ns) written since the last
	// ScanFrom, math.MaxInt64 for none.
	earliest atomic.Int64
}

// New returns a spool on db. now is the clock (nil for time.Now); tests pass
// a fake one.
func New(db *store.DB, now func() time.Time) *Spool {
	if now == nil {
		now = time.Now
	}
	s := &Spool{db: db, now: now, waiters: make(chan struct{})}
	s.earliest.Store(math.MaxInt64)
	return s
}

// Now is the spool's clock.
func (s *Spool) Now() time.Time { return s.now() }

// NewID returns a fresh, time-ordered, unique queue ID (a ULID).
func (s *Spool) NewID() string {
	return ulid.Make().String()
}

// Changed returns a channel that is closed at the next change of the due
// index (a new message, a flush, a release). The delivery loop waits on it
// instead of polling.
func (s *Spool) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiters
}

func (s *Spool) signal() {
	s.mu.Lock()
	close(s.waiters)
	s.waiters = make(chan struct{})
	s.mu.Unlock()
}

const (
	prefixEnv  = "q/e/"
	prefixBody = "q/b/"
	prefixDue  = "q/d/"
)

func envKey(id string) []byte { return []byte(prefixEnv + id) }

func bodyPrefix(id string) []byte { return []byte(prefixBody + id) }

func dueKey(t time.Time, id string) []byte {
	k := binary.BigEndian.AppendUint64([]byte(prefixDue), uint64(t.UnixNano()))
	return append(k, id...)
}

// Enqueue stores m and its body durably. m.ID must come from NewID; Size and
// recipient states are filled in here. It returns only after the message is
// committed and synced (group commit), so the caller may answer 250.
func (s *Spool) Enqueue(m *Message, body io.Reader) error {
	tx := s.Begin()
	defer tx.Discard()
	if err := s.EnqueueTxn(tx, m, body); err != nil {
		return err
	}
	if err := tx.Txn.Commit(); err != nil {
		return fmt.Errorf("enqueue %s: commit: %w", m.ID, err)
	}
	if err := s.db.Sync(); err != nil {
		return fmt.Errorf("enqueue %s: %w", m.ID, err)
	}
	// Published only once durable: the mail log never reports as accepted
	// a message that a crash could still take back.
	s.committed(tx)
	return nil
}

// EnqueueTxn writes m and its body into tx, so that a bounce is queued in
// the same transaction that records the failure it reports. The caller
// commits (and syncs, if it acknowledges anything).
func (s *Spool) EnqueueTxn(tx *Tx, m *Message, body io.Reader) error {
	if m.ID == "" {
		return errors.New("enqueue: message has no ID")
	}
	if len(m.Rcpts) == 0 {
		return errors.New("enqueue: message has no recipients")
	}
	now := s.now()
	if m.Arrived.IsZero() {
		m.Arrived = now
	}
	for i := range m.Rcpts {
		r := &m.Rcpts[i]
		if r.State == "" {
			r.State = Pending
		}
		if r.NextAttempt.IsZero() {
			r.NextAttempt = now
		}
	}
	size, err := store.PutChunks(tx.Txn, bodyPrefix(m.ID), body)
	if err != nil {
		return fmt.Errorf("enqueue %s: body: %w", m.ID, err)
	}
	m.Size = size
	if err := s.putEnvelope(tx, m); err != nil {
		return fmt.Errorf("enqueue %s: %w", m.ID, err)
	}
	rcpts := make([]string, len(m.Rcpts))
	for i, r := range m.Rcpts {
		rcpts[i] = r.Address
	}
	ev := Event{Time: now, Event: EventAccepted, ID: m.ID, From: m.From, Rcpts: rcpts, Size: m.Size, Client: m.ClientIP}
	if err := s.record(tx, ev); err != nil {
		return fmt.Errorf("enqueue %s: %w", m.ID, err)
	}
	return nil
}

// Flush makes every pending recipient of message id due now (postqueue -i).
// A held message stays held.
func (s *Spool) Flush(id string) error {
	now := s.now()
	return s.Update(id, func(_ *Tx, m *Message) error {
		for i := range m.Rcpts {
			if m.Rcpts[i].State == Pending && m.Rcpts[i].NextAttempt.After(now) {
				m.Rcpts[i].NextAttempt = now
			}
		}
		return nil
	})
}

// FlushAll flushes every queued message (postqueue -f). It walks the queue a
// page of IDs at a time, so that a queue of 100,000 messages is not held in
// memory at once; it returns how many messages it flushed.
func (s *Spool) FlushAll() (int, error) {
	n := 0
	after := ""
	for {
		ids, err := s.idsAfter(after, 1000)
		if err != nil || len(ids) == 0 {
			return n, err
		}
		for _, id := range ids {
			err := s.Flush(id)
			if errors.Is(err, ErrNotFound) {
				continue // delivered meanwhile
			}
			if err != nil {
				return n, err
			}
			n++
		}
		after = ids[len(ids)-1]
	}
}

// idsAfter returns up to limit queue IDs greater than after, in order,
// reading keys only.
func (s *Spool) idsAfter(after string, limit int) ([]string, error) {
	var ids []string
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixEnv)})
		defer it.Close()
		it.Seek(append(envKey(after), 0))
		for ; it.Valid() && len(ids) < limit; it.Next() {
			ids = append(ids, string(it.Item().Key()[len(prefixEnv):]))
		}
		return nil
	})
	return ids, err
}

// putEnvelope writes m and moves its due-index entry to where its state says.
func (s *Spool) putEnvelope(tx *Tx, m *Message) error {
	txn := tx.Txn
	due := m.NextDue()
	if !m.Due.IsZero() && !m.Due.Equal(due) {
		if err := txn.Delete(dueKey(m.Due, m.ID)); err != nil {
			return fmt.Errorf("unindex: %w", err)
		}
	}
	if !due.IsZero() {
		if err := txn.Set(dueKey(due, m.ID), nil); err != nil {
			return fmt.Errorf("index: %w", err)
		}
		tx.noteDue(due)
	}
	m.Due = due
	if err := txn.Set(envKey(m.ID), appendEnvelope(nil, m)); err != nil {
		return fmt.Errorf("store envelope: %w", err)
	}
	return nil
}

// GetTxn reads message id inside txn.
func GetTxn(txn *badger.Txn, id string) (*Message, error) {
	item, err := txn.Get(envKey(id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("%s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", id, err)
	}
	m := new(Message)
	err = item.Value(func(v []byte) error { return parseEnvelope(v, m) })
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", id, err)
	}
	return m, nil
}

// Get returns message id.
func (s *Spool) Get(id string) (*Message, error) {
	var m *Message
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		m, err = GetTxn(txn, id)
		return err
	})
	return m, err
}

// List returns every queued message in arrival order.
func (s *Spool) List() ([]*Message, error) {
	var out []*Message
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixEnv), PrefetchValues: false})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			m := new(Message)
			if err := it.Item().Value(func(v []byte) error { return parseEnvelope(v, m) }); err != nil {
				return fmt.Errorf("decode %s: %w", it.Item().Key(), err)
			}
			out = append(out, m)
		}
		return nil
	})
	return out, err
}

// Count returns the number of queued messages without decoding them.
func (s *Spool) Count() (int, error) {
	n := 0
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixEnv)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	return n, err
}

// Oldest returns the arrival time of the oldest queued message, or zero when
// the queue is empty. IDs are time-ordered, so it is the first envelope:
// reading it costs one key, whatever the size of the queue.
func (s *Spool) Oldest() (time.Time, error) {
	var t time.Time
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixEnv), PrefetchValues: false})
		defer it.Close()
		it.Rewind()
		if !it.Valid() {
			return nil
		}
		var m Message
		if err := it.Item().Value(func(v []byte) error { return parseEnvelope(v, &m) }); err != nil {
			return fmt.Errorf("decode %s: %w", it.Item().Key(), err)
		}
		t = m.Arrived
		return nil
	})
	return t, err
}

// Due returns up to limit IDs of messages whose next attempt is at or before
// now, earliest first. It reads only index keys up to now.
func (s *Spool) Due(now time.Time, limit int) ([]string, error) {
	ids, _, _, err := s.ScanDue(time.Time{}, now, limit)
	return ids, err
}

// ScanDue reads the due index from the time from on: up to limit IDs due at
// or before now, earliest first; first, the due time of the first entry
// found (zero if none); and next, the earliest due time after now (zero if
// the scan stopped at limit or found none). Starting at from skips what lies
// before it: the index's front, where the entries of delivered messages
// were deleted, is full of tombstones that a scan from the start would wade
// through every time. ScanFrom says where a caller may start safely.
func (s *Spool) ScanDue(from, now time.Time, limit int) (ids []string, first, next time.Time, err error) {
	end := uint64(now.UnixNano())
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixDue)})
		defer it.Close()
		start := []byte(prefixDue)
		if !from.IsZero() {
			start = dueKey(from, "")
		}
		for it.Seek(start); it.Valid(); it.Next() {
			k := it.Item().Key()[len(prefixDue):]
			if len(k) < 8 {
				continue
			}
			ns := binary.BigEndian.Uint64(k)
			at := time.Unix(0, int64(ns))
			if first.IsZero() {
				first = at
			}
			if ns > end {
				next = at
				return nil
			}
			if len(ids) >= limit {
				return nil
			}
			ids = append(ids, string(k[8:]))
		}
		return nil
	})
	return ids, first, next, err
}

// ScanFrom returns where the next ScanDue may start without missing an
// entry: the earlier of low (the first entry the caller's last scan found,
// before which there was nothing but tombstones) and the earliest due time
// written since the previous call.
func (s *Spool) ScanFrom(low time.Time) time.Time {
	e := s.earliest.Swap(math.MaxInt64)
	if e != math.MaxInt64 && (low.IsZero() || e < low.UnixNano()) {
		return time.Unix(0, e)
	}
	return low
}

// noteDue records a due time written to the index, for ScanFrom. It runs
// after the commit, before the change is signalled, so that a scan either
// sees the entry or is woken again to look for it.
func (s *Spool) noteDue(t time.Time) {
	n := t.UnixNano()
	for {
		cur := s.earliest.Load()
		if n >= cur || s.earliest.CompareAndSwap(cur, n) {
			return
		}
	}
}

// NextDue returns the earliest due time in the index, if any.
func (s *Spool) NextDue() (time.Time, bool, error) {
	_, first, _, err := s.ScanDue(time.Time{}, time.Unix(0, 0), 0)
	return first, !first.IsZero(), err
}

// Update runs fn on message id in one transaction, then stores the changed
// envelope and due entry; if every recipient is final afterwards, the message
// is removed instead. fn may write other keys to tx (a mailbox insert) so
// that they commit atomically with the state change. The events of the change
// (delivered, deferred, bounced, held, released) are derived from what fn did
// and logged in the same transaction. Conflicting concurrent updates are
// retried.
func (s *Spool) Update(id string, fn func(tx *Tx, m *Message) error) error {
	for range 16 {
		tx := s.Begin()
		err := s.updateTx(tx, id, fn)
		if err == nil {
			err = s.Commit(tx)
		}
		tx.Discard()
		if errors.Is(err, badger.ErrConflict) {
			continue
		}
		return err
	}
	return fmt.Errorf("update %s: %w", id, badger.ErrConflict)
}

func (s *Spool) updateTx(tx *Tx, id string, fn func(tx *Tx, m *Message) error) error {
	m, err := GetTxn(tx.Txn, id)
	if err != nil {
		return err
	}
	before := snap(m)
	if err := fn(tx, m); err != nil {
		return err
	}
	if err := s.stateEvents(tx, before, m); err != nil {
		return err
	}
	if m.Done() {
		return deleteTxn(tx.Txn, m)
	}
	return s.putEnvelope(tx, m)
}

// Hold takes a message out of the due index until Release.
func (s *Spool) Hold(id string) error {
	return s.Update(id, func(_ *Tx, m *Message) error {
		m.Hold = true
		return nil
	})
}

// Release puts a held message back in the due index.
func (s *Spool) Release(id string) error {
	return s.Update(id, func(_ *Tx, m *Message) error {
		m.Hold = false
		return nil
	})
}

// Delete removes a message, its body and its index entry (postsuper -d).
func (s *Spool) Delete(id string) error {
	tx := s.Begin()
	defer tx.Discard()
	m, err := GetTxn(tx.Txn, id)
	if err != nil {
		return err
	}
	if err := deleteTxn(tx.Txn, m); err != nil {
		return err
	}
	if err := s.record(tx, Event{Event: EventDeleted, ID: id, Operator: true}); err != nil {
		return err
	}
	return s.Commit(tx)
}

func deleteTxn(txn *badger.Txn, m *Message) error {
	if !m.Due.IsZero() {
		if err := txn.Delete(dueKey(m.Due, m.ID)); err != nil {
			return err
		}
	}
	if err := store.DeleteChunks(txn, bodyPrefix(m.ID), m.Size); err != nil {
		return err
	}
	return txn.Delete(envKey(m.ID))
}

// Body returns a reader over message id's body, read one chunk at a time.
func (s *Spool) Body(id string) (io.Reader, error) {
	m, err := s.Get(id)
	if err != nil {
		return nil, err
	}
	return store.ChunkReader(s.db, nil, bodyPrefix(id), m.Size), nil
}

// BodyTxn returns message m's body read inside txn (for a delivery that
// commits in the same transaction).
func BodyTxn(txn *badger.Txn, m *Message) io.Reader {
	return store.ChunkReader(nil, txn, bodyPrefix(m.ID), m.Size)
}
