// Package spool is the relay's durable queue: accepted messages, their
// envelopes, per-recipient delivery state, claims on due work, and the event
// log that is the mail log's source. Storage comes through Backend
// (backend.go), implemented by the engines under internal/store.
//
// Invariants:
//   - Enqueue returns nil only after the envelope, every body chunk and the
//     accepted event are committed in one transaction and durable; a crash
//     never leaves a half-written message visible.
//   - Every change to a message is one operation of the store (Update), with
//     the events derived from it and its effects: a local delivery's filing
//     into mailboxes, the notices it calls for. A message whose recipients
//     are all final (delivered or failed) is removed in that same commit, so
//     a recipient leaves the spool only together with the record of its
//     outcome.
//   - Due work is claimed with a lease (Claim): a leased message goes to no
//     other claimer, on this node or another, until its lease ends, and a
//     write that carries a lease taken over since is refused (fencing).
//   - Events are published to the mail log and hooks only after their
//     commit; `relay queue tail -f` reads them back from the store, so it
//     sees every node's.
package spool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/relaymail/relay/internal/store"
)

// ErrNotFound is returned for an ID that is not in the spool.
var ErrNotFound = fmt.Errorf("no such message in the queue: %w", store.ErrNotFound)

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
	// Reply is the last attempt's reply: why the recipient waits or
	// failed (zero when delivered or not yet tried). In JSON it comes
	// rendered as "last_error" too (MarshalJSON).
	Reply Reply `json:"reply,omitzero"`
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
	b   Backend
	now func() time.Time

	mailLog *slog.Logger
	hooks   []func(Event)
}

// New returns a spool on backend b. now is the clock (nil for time.Now);
// tests pass a fake one.
func New(b Backend, now func() time.Time) *Spool {
	if now == nil {
		now = time.Now
	}
	return &Spool{b: b, now: now}
}

// ctx is the context of the spool's calls that take none: the operations
// run to their end once started.
var ctx = context.Background()

// Now is the spool's clock.
func (s *Spool) Now() time.Time { return s.now() }

// NewID returns a fresh, time-ordered, unique queue ID (a ULID).
func (s *Spool) NewID() string {
	return ulid.Make().String()
}

// Changed returns a channel that is closed at the next change of due work
// on any node (a new message, a flush, a release). The delivery loop waits
// on it instead of polling.
func (s *Spool) Changed() <-chan struct{} { return s.b.QueueChanged() }

// prepare fills in what a new message gets before it is stored.
func (s *Spool) prepare(m *Message, now time.Time) error {
	if m.ID == "" {
		return errors.New("enqueue: message has no ID")
	}
	if len(m.Rcpts) == 0 {
		return errors.New("enqueue: message has no recipients")
	}
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
	return nil
}

func acceptedEvent(m *Message, now time.Time) Event {
	rcpts := make([]string, len(m.Rcpts))
	for i, r := range m.Rcpts {
		rcpts[i] = r.Address
	}
	return Event{Time: now, Event: EventAccepted, ID: m.ID, From: m.From, Rcpts: rcpts, Size: m.Size, Client: m.ClientIP}
}

// Enqueue stores m and its body durably. m.ID must come from NewID; Size and
// recipient states are filled in here. It returns only after the message is
// durable (synced, or committed synchronously), so the caller may answer
// 250.
func (s *Spool) Enqueue(m *Message, body io.Reader) error {
	now := s.now()
	if err := s.prepare(m, now); err != nil {
		return err
	}
	// The accepted event carries the size, known once the body is read:
	// the engine fills it in before it writes the event.
	ev := acceptedEvent(m, now)
	if err := s.b.Enqueue(ctx, m, body, ev); err != nil {
		return fmt.Errorf("enqueue %s: %w", m.ID, err)
	}
	// Published only once durable: the mail log never reports as accepted
	// a message that a crash could still take back.
	ev.Size = m.Size
	s.publish([]Event{ev})
	return nil
}

// Notice builds a message for Effects.Notices: a new queued message with
// its whole body, ready to be committed with the update that calls for it.
func (s *Spool) Notice(m *Message, body []byte) (Notice, error) {
	if err := s.prepare(m, s.now()); err != nil {
		return Notice{}, err
	}
	m.Size = int64(len(body))
	return Notice{Message: m, Body: body}, nil
}

// Flush makes every pending recipient of message id due now (postqueue -i).
// A held message stays held.
func (s *Spool) Flush(id string) error {
	now := s.now()
	return s.Update(id, nil, func(m *Message) (Effects, error) {
		for i := range m.Rcpts {
			if m.Rcpts[i].State == Pending && m.Rcpts[i].NextAttempt.After(now) {
				m.Rcpts[i].NextAttempt = now
			}
		}
		return Effects{}, nil
	})
}

// FlushAll flushes every queued message (postqueue -f). It walks the queue a
// page at a time, so that a queue of 100,000 messages is not held in memory
// at once; it returns how many messages it flushed.
func (s *Spool) FlushAll() (int, error) {
	n := 0
	err := s.Each(func(m *Message) error {
		err := s.Flush(m.ID)
		if errors.Is(err, ErrNotFound) {
			return nil // delivered meanwhile
		}
		if err == nil {
			n++
		}
		return err
	})
	return n, err
}

// pageSize is how many envelopes one read of a listing holds.
const pageSize = 500

// Each calls fn for every queued message in arrival (ID) order, reading a
// page at a time, so that memory stays bounded however long the queue.
func (s *Spool) Each(fn func(m *Message) error) error {
	after := ""
	for {
		page, err := s.b.Page(ctx, after, pageSize)
		if err != nil || len(page) == 0 {
			return err
		}
		for _, m := range page {
			if err := fn(m); err != nil {
				return err
			}
		}
		after = page[len(page)-1].ID
	}
}

// Page returns up to limit messages with IDs above after, in ID order.
func (s *Spool) Page(after string, limit int) ([]*Message, error) { return s.b.Page(ctx, after, limit) }

// Get returns message id.
func (s *Spool) Get(id string) (*Message, error) { return s.b.Get(ctx, id) }

// List returns every queued message in arrival order.
func (s *Spool) List() ([]*Message, error) {
	var out []*Message
	err := s.Each(func(m *Message) error { out = append(out, m); return nil })
	return out, err
}

// Count returns the number of queued messages.
func (s *Spool) Count() (int, error) { return s.b.Count(ctx) }

// Oldest returns the arrival time of the oldest queued message, or zero when
// the queue is empty.
func (s *Spool) Oldest() (time.Time, error) { return s.b.Oldest(ctx) }

// NextDue returns the earliest due time of work not held or leased, if any.
func (s *Spool) NextDue() (time.Time, bool, error) { return s.b.NextDue(ctx) }

// Claim leases up to limit messages due now to this node for d (see
// Backend.Claim).
func (s *Spool) Claim(limit int, d time.Duration) ([]Lease, error) {
	return s.b.Claim(ctx, s.now(), limit, d)
}

// Renew extends a lease for d from now.
func (s *Spool) Renew(l Lease, d time.Duration) error { return s.b.Renew(ctx, l, d) }

// ReleaseLease gives a lease back without changing the message.
func (s *Spool) ReleaseLease(l Lease) error { return s.b.Release(ctx, l) }

// Update runs fn on message id in one operation of the store, then stores
// the changed message (or removes it once every recipient is final) with
// the effects fn returns. The events of the change (delivered, deferred,
// bounced, held, released) are derived from what fn did and recorded in the
// same commit. With a lease, the update is refused (store.ErrLeaseLost) when
// another claim took the message over since. fn may run more than once.
func (s *Spool) Update(id string, lease *Lease, fn func(m *Message) (Effects, error)) error {
	var published []Event
	err := s.b.Update(ctx, id, lease, func(m *Message) (Effects, error) {
		before := snap(m)
		eff, err := fn(m)
		if err != nil {
			return eff, err
		}
		eff.Events = append(s.stateEvents(before, m), eff.Events...)
		for _, n := range eff.Notices {
			ev := acceptedEvent(n.Message, s.now())
			ev.Size = int64(len(n.Body))
			eff.Events = append(eff.Events, ev)
		}
		published = eff.Events
		return eff, nil
	})
	if err != nil {
		return err
	}
	s.publish(published)
	return nil
}

// Hold takes a message out of the claims until Release.
func (s *Spool) Hold(id string) error {
	return s.Update(id, nil, func(m *Message) (Effects, error) {
		m.Hold = true
		return Effects{}, nil
	})
}

// Release puts a held message back among the claims.
func (s *Spool) Release(id string) error {
	return s.Update(id, nil, func(m *Message) (Effects, error) {
		m.Hold = false
		return Effects{}, nil
	})
}

// Delete removes a message, its body and its place among the claims
// (postsuper -d).
func (s *Spool) Delete(id string) error {
	ev := Event{Time: s.now(), Event: EventDeleted, ID: id, Operator: true}
	if err := s.b.Delete(ctx, id, ev); err != nil {
		return err
	}
	s.publish([]Event{ev})
	return nil
}

// Body returns a reader over message id's body, read one chunk at a time.
func (s *Spool) Body(id string) (io.ReadCloser, error) { return s.b.Body(ctx, id) }
