package spool

import (
	"context"
	"log/slog"
	"time"
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

	// Cursor is the event's unique position in the log, set by the store
	// when it is written or read.
	Cursor string `json:"-"`
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

// Record logs events that change no state (attempts starting). It is not
// synced: losing it in a crash loses only log lines.
func (s *Spool) Record(evs ...Event) error {
	now := s.now()
	for i := range evs {
		if evs[i].Time.IsZero() {
			evs[i].Time = now
		}
	}
	if err := s.b.Record(ctx, evs...); err != nil {
		return err
	}
	s.publish(evs)
	return nil
}

// stateEvents derives the events of an Update from what fn changed: a
// recipient that left Pending was delivered or bounced, one that stayed
// Pending with one more attempt was deferred; a change of the hold flag is
// held or released.
func (s *Spool) stateEvents(before snapshot, m *Message) []Event {
	now := s.now()
	var evs []Event
	if before.hold != m.Hold {
		kind := EventReleased
		if m.Hold {
			kind = EventHeld
		}
		evs = append(evs, Event{Time: now, Event: kind, ID: m.ID, Operator: true})
	}
	for i, r := range m.Rcpts {
		if i >= len(before.rcpts) || before.rcpts[i].state != Pending {
			continue
		}
		ev := Event{Time: now, ID: m.ID, Rcpt: r.Address, Attempt: r.Attempts, Relay: r.RemoteMTA,
			Delay: now.Sub(m.Arrived).Round(time.Millisecond).Seconds(), Status: r.Reply.String()}
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
		evs = append(evs, ev)
	}
	return evs
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
// of this node after its commit (metrics). fn must be quick. Call it before
// the spool is used.
func (s *Spool) OnEvent(fn func(Event)) { s.hooks = append(s.hooks, fn) }

func (s *Spool) publish(evs []Event) {
	for _, ev := range evs {
		if s.mailLog != nil {
			s.mailLog.Info(ev.Event, ev.attrs()...)
		}
		for _, h := range s.hooks {
			h(ev)
		}
	}
}

// tailLookback is how far behind the newest event it saw a follower reads
// again: commits of one node, or of several, reach the log out of time
// order by up to about this much, and an event committed late must not be
// missed.
const tailLookback = 5 * time.Second

// tailPage bounds one read of a follower.
const tailPage = 1000

// Tail calls fn for the last n events in the log, oldest first, and, with
// follow, for every later event as it is committed on any node, until ctx
// ends or fn fails. An event is passed once.
func (s *Spool) Tail(ctx context.Context, n int, follow bool, fn func(Event) error) error {
	changed := s.b.EventsChanged()
	seen := map[string]time.Time{}
	mark := s.now()
	if follow {
		// What the log holds already is the past: only events that
		// commit from now on are followed, also those that reach the log
		// late with an earlier time.
		if err := s.pastWindow(ctx, mark, seen); err != nil {
			return err
		}
	}
	past, err := s.b.LastEvents(ctx, n)
	if err != nil {
		return err
	}
	for _, ev := range past {
		seen[ev.Cursor] = ev.Time
		if err := fn(ev); err != nil {
			return err
		}
	}
	if len(past) > 0 && past[len(past)-1].Time.After(mark) {
		mark = past[len(past)-1].Time
	}
	if !follow {
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		changed = s.b.EventsChanged()
		// Page through the window in (time, cursor) order: each page
		// starts after the last event of the one before.
		since, after := mark.Add(-tailLookback), ""
		for {
			evs, err := s.b.EventsSince(ctx, since, after, tailPage)
			if err != nil {
				return err
			}
			for _, ev := range evs {
				if _, ok := seen[ev.Cursor]; ok {
					continue
				}
				seen[ev.Cursor] = ev.Time
				if ev.Time.After(mark) {
					mark = ev.Time
				}
				if err := fn(ev); err != nil {
					return err
				}
			}
			if len(evs) < tailPage {
				break
			}
			since, after = evs[len(evs)-1].Time, evs[len(evs)-1].Cursor
		}
		for c, t := range seen {
			if t.Before(mark.Add(-2 * tailLookback)) {
				delete(seen, c)
			}
		}
	}
}

// pastWindow marks as seen the events of the follower's look-back window
// before now.
func (s *Spool) pastWindow(ctx context.Context, now time.Time, seen map[string]time.Time) error {
	since, after := now.Add(-tailLookback), ""
	for {
		evs, err := s.b.EventsSince(ctx, since, after, tailPage)
		if err != nil {
			return err
		}
		for _, ev := range evs {
			seen[ev.Cursor] = ev.Time
		}
		if len(evs) < tailPage {
			return nil
		}
		since, after = evs[len(evs)-1].Time, evs[len(evs)-1].Cursor
	}
}

// History returns the logged events of message id, oldest first.
func (s *Spool) History(id string) ([]Event, error) { return s.b.History(ctx, id) }
