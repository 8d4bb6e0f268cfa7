package spool

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Event kinds: what happened to a message or one of its recipients. They are
// the mail log's vocabulary and what `relay queue tail` shows.
const (
	EventAccepted  = "accepted"  // the message entered the queue
	EventAttempt   = "attempt"   // a delivery attempt to a remote host starts
	EventDeferred  = "deferred"  // an attempt failed temporarily; retried later
	EventDelivered = "delivered" // a recipient was delivered (or relayed on)
	EventBounced   = "bounced"   // a recipient failed for good
	EventHeld      = "held"      // the operator put the message on hold
	EventReleased  = "released"  // the operator released it
	EventDeleted   = "deleted"   // the operator deleted it
)

// EventRetention is how long the event log keeps an event.
const EventRetention = 7 * 24 * time.Hour

// Event is one line of the mail log. Fields that do not apply to a kind are
// left empty.
type Event struct {
	Time  time.Time `json:"time"`
	Event string    `json:"event"`
	ID    string    `json:"id"`
	// Accepted only: the envelope sender ("" for <>), recipients, size in
	// bytes and the client's address.
	From   string   `json:"from,omitempty"`
	Rcpts  []string `json:"rcpts,omitempty"`
	Size   int64    `json:"size,omitempty"`
	Client string   `json:"client,omitempty"`
	// Per-recipient events: the recipient, the attempt number, the host
	// that answered ("local" for a mailbox), the time since arrival in
	// seconds, the status (an SMTP reply or enhanced code) and, when
	// deferred, the next attempt.
	Rcpt     string    `json:"rcpt,omitempty"`
	Attempt  int       `json:"attempt,omitempty"`
	Relay    string    `json:"relay,omitempty"`
	Delay    float64   `json:"delay,omitempty"`
	Status   string    `json:"status,omitempty"`
	Next     time.Time `json:"next,omitzero"`
	Operator bool      `json:"operator,omitempty"` // caused by an operator's command

	// Cursor is the event's position in the log, set by the store when
	// it is written or read: EventsAfter(Cursor) continues after it.
	Cursor string `json:"-"`

	seq []byte // position in the log, set when written
}

// attrs renders the event as the key-value pairs of one mail-log line.
func (ev Event) attrs() []any {
	a := []any{"id", ev.ID}
	add := func(k string, v any, ok bool) {
		if ok {
			a = append(a, k, v)
		}
	}
	from := ev.From
	if from == "" {
		from = "<>"
	}
	add("from", from, ev.Event == EventAccepted)
	add("rcpts", ev.Rcpts, len(ev.Rcpts) > 0)
	add("size", ev.Size, ev.Event == EventAccepted)
	add("client", ev.Client, ev.Client != "")
	add("rcpt", ev.Rcpt, ev.Rcpt != "")
	add("attempt", ev.Attempt, ev.Attempt > 0)
	add("relay", ev.Relay, ev.Relay != "")
	add("delay", time.Duration(ev.Delay*float64(time.Second)).Round(time.Millisecond), ev.Delay > 0)
	add("status", ev.Status, ev.Status != "")
	add("next", ev.Next.Format(time.RFC3339), !ev.Next.IsZero())
	add("operator", true, ev.Operator)
	return a
}

// Keys of the event log, under "ev/", which the spool owns beside "q/":
//
//	ev/t/<time:u64 BE ns><n:u32 BE>        the event (JSON), in time order
//	ev/m/<id><time:u64 BE ns><n:u32 BE>    empty: the message's history
//
// Both expire after EventRetention (Badger TTL).
const (
	prefixLog     = "ev/t/"
	prefixHistory = "ev/m/"
)

// Tx is a spool write transaction: a Badger transaction plus the events it
// records, which are published (mail log, followers) only once it commits.
type Tx struct {
	*badger.Txn
	events []Event
	due    time.Time // earliest due-index entry written
}

func (tx *Tx) noteDue(t time.Time) {
	if tx.due.IsZero() || t.Before(tx.due) {
		tx.due = t
	}
}

// Begin starts a write transaction for EnqueueTxn and the caller's own keys;
// Commit ends it.
func (s *Spool) Begin() *Tx { return &Tx{Txn: s.db.NewTransaction(true)} }

// Commit commits tx without syncing and then publishes its events.
func (s *Spool) Commit(tx *Tx) error {
	if err := tx.Txn.Commit(); err != nil {
		return err
	}
	s.committed(tx)
	return nil
}

// committed runs after tx's commit: the due index is noted for ScanFrom, the
// events published and waiters woken, in that order.
func (s *Spool) committed(tx *Tx) {
	if !tx.due.IsZero() {
		s.noteDue(tx.due)
	}
	s.publish(tx.events)
	s.signal()
}

// eventSeq makes event keys unique within a nanosecond.
var eventSeq atomic.Uint32

// record writes ev into tx, to be published when tx commits.
func (s *Spool) record(tx *Tx, ev Event) error {
	if ev.Time.IsZero() {
		ev.Time = s.now()
	}
	seq := binary.BigEndian.AppendUint64(nil, uint64(ev.Time.UnixNano()))
	seq = binary.BigEndian.AppendUint32(seq, eventSeq.Add(1))
	v, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode event: %w", err)
	}
	ttl := EventRetention
	if err := tx.SetEntry(badger.NewEntry(append([]byte(prefixLog), seq...), v).WithTTL(ttl)); err != nil {
		return fmt.Errorf("log event: %w", err)
	}
	hk := append(append([]byte(prefixHistory), ev.ID...), seq...)
	if err := tx.SetEntry(badger.NewEntry(hk, nil).WithTTL(ttl)); err != nil {
		return fmt.Errorf("log event: %w", err)
	}
	ev.seq = seq
	tx.events = append(tx.events, ev)
	return nil
}

// Record logs events that change no state (attempts starting) in a
// transaction of their own. It is not synced: losing it in a crash loses only
// log lines.
func (s *Spool) Record(evs ...Event) error {
	tx := s.Begin()
	defer tx.Discard()
	for _, ev := range evs {
		if err := s.record(tx, ev); err != nil {
			return err
		}
	}
	return s.Commit(tx)
}

// stateEvents derives the events of an Update from what fn changed: a
// recipient that left Pending was delivered or bounced, one that stayed
// Pending with one more attempt was deferred; a change of the hold flag is
// held or released.
func (s *Spool) stateEvents(tx *Tx, before snapshot, m *Message) error {
	now := s.now()
	if before.hold != m.Hold {
		kind := EventReleased
		if m.Hold {
			kind = EventHeld
		}
		if err := s.record(tx, Event{Time: now, Event: kind, ID: m.ID, Operator: true}); err != nil {
			return err
		}
	}
	for i, r := range m.Rcpts {
		if i >= len(before.rcpts) || before.rcpts[i].state != Pending {
			continue
		}
		ev := Event{Time: now, ID: m.ID, Rcpt: r.Address, Attempt: r.Attempts, Relay: r.RemoteMTA,
			Delay: now.Sub(m.Arrived).Round(time.Millisecond).Seconds(), Status: r.LastError}
		switch {
		case r.State == Delivered:
			ev.Event = EventDelivered
			if ev.Status == "" {
				ev.Status = "2.0.0"
			}
		case r.State == Failed:
			ev.Event = EventBounced
		case r.Attempts > before.rcpts[i].attempts:
			ev.Event, ev.Next = EventDeferred, r.NextAttempt
		default:
			continue
		}
		if ev.Relay == "" && ev.Event == EventDelivered {
			ev.Relay = "local"
		}
		if err := s.record(tx, ev); err != nil {
			return err
		}
	}
	return nil
}

// snapshot is what stateEvents compares against.
type snapshot struct {
	hold  bool
	rcpts []struct {
		state    State
		attempts int
	}
}

func snap(m *Message) snapshot {
	sn := snapshot{hold: m.Hold, rcpts: make([]struct {
		state    State
		attempts int
	}, len(m.Rcpts))}
	for i, r := range m.Rcpts {
		sn.rcpts[i].state, sn.rcpts[i].attempts = r.State, r.Attempts
	}
	return sn
}

// SetMailLog makes every published event a line in log (nil for none). Call
// it before the spool is used.
func (s *Spool) SetMailLog(log *slog.Logger) { s.mailLog = log }

// OnEvent registers fn to run, in the committing goroutine, for every event
// after its transaction committed (metrics). fn must be quick. Call it
// before the spool is used.
func (s *Spool) OnEvent(fn func(Event)) { s.hooks = append(s.hooks, fn) }

func (s *Spool) publish(evs []Event) {
	for _, ev := range evs {
		if s.mailLog != nil {
			s.mailLog.Info(ev.Event, ev.attrs()...)
		}
		for _, h := range s.hooks {
			h(ev)
		}
		s.followers.send(ev)
	}
}

// followers fan events out to live `queue tail -f` readers.
type followers struct {
	mu   sync.Mutex
	subs map[*follower]struct{}
}

type follower struct {
	ch      chan Event
	overrun atomic.Bool
}

// followBuffer is how far a follower may fall behind before it is cut off.
const followBuffer = 16384

func (f *followers) add() *follower {
	fl := &follower{ch: make(chan Event, followBuffer)}
	f.mu.Lock()
	if f.subs == nil {
		f.subs = map[*follower]struct{}{}
	}
	f.subs[fl] = struct{}{}
	f.mu.Unlock()
	return fl
}

func (f *followers) remove(fl *follower) {
	f.mu.Lock()
	delete(f.subs, fl)
	f.mu.Unlock()
}

// send never blocks a committer: a follower that cannot keep up is marked
// overrun and stops at its next read.
func (f *followers) send(ev Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for fl := range f.subs {
		select {
		case fl.ch <- ev:
		default:
			fl.overrun.Store(true)
		}
	}
}

// ErrOverrun ends a Tail that could not keep up with the events.
var ErrOverrun = errors.New("tail fell behind the mail log and was cut off")

// Tail calls fn for the last n events in the log, oldest first, and, with
// follow, for every later event as it is committed, until ctx ends or fn
// fails. An event is passed once even if it commits while the replay runs.
func (s *Spool) Tail(ctx context.Context, n int, follow bool, fn func(Event) error) error {
	var fl *follower
	if follow {
		fl = s.followers.add()
		defer s.followers.remove(fl)
	}
	past, err := s.lastEvents(n)
	if err != nil {
		return err
	}
	seen := make(map[string]bool, len(past))
	for _, ev := range past {
		seen[string(ev.seq)] = true
		if err := fn(ev); err != nil {
			return err
		}
	}
	if !follow {
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-fl.ch:
			if fl.overrun.Load() {
				return ErrOverrun
			}
			if seen[string(ev.seq)] {
				continue
			}
			if err := fn(ev); err != nil {
				return err
			}
		}
	}
}

// lastEvents reads the newest n events, oldest first.
func (s *Spool) lastEvents(n int) ([]Event, error) {
	if n <= 0 {
		return nil, nil
	}
	var out []Event
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(prefixLog), Reverse: true, PrefetchValues: false})
		defer it.Close()
		// Reverse iteration starts at the last key under the prefix only
		// when seeking past it.
		for it.Seek([]byte(prefixLog + "\xff")); it.Valid() && len(out) < n; it.Next() {
			ev, err := decodeEvent(it.Item())
			if err != nil {
				return err
			}
			out = append(out, ev)
		}
		return nil
	})
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, err
}

func decodeEvent(item *badger.Item) (Event, error) {
	var ev Event
	if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &ev) }); err != nil {
		return ev, fmt.Errorf("decode event %x: %w", item.Key(), err)
	}
	ev.seq = item.KeyCopy(nil)[len(prefixLog):]
	return ev, nil
}

// History returns the logged events of message id, oldest first.
func (s *Spool) History(id string) ([]Event, error) {
	var out []Event
	err := s.db.View(func(txn *badger.Txn) error {
		p := []byte(prefixHistory + id)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: p})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			seq := it.Item().Key()[len(p):]
			if len(seq) != 12 {
				continue // another ID that starts with id
			}
			item, err := txn.Get(append([]byte(prefixLog), seq...))
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue // expired between the two keys
			}
			if err != nil {
				return err
			}
			ev, err := decodeEvent(item)
			if err != nil {
				return err
			}
			out = append(out, ev)
		}
		return nil
	})
	return out, err
}
