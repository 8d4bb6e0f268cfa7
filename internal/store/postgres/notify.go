package postgres

import (
	"context"
	"encoding/json"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relaymail/relay/mailbox"
)

// The NOTIFY channels every node listens on.
const (
	chanQueue   = "relay_queue"   // due work changed
	chanEvents  = "relay_events"  // events were appended
	chanMailbox = "relay_mailbox" // a mailbox changed (payload: mailboxNote)
)

// Notifications are coalesced: a NOTIFY takes a lock at the commit that
// serializes every committing transaction behind it, which halved the rate
// at which one node accepted mail when each enqueue sent one. So this node's
// own waiters are woken at once, in process, and the other nodes through a
// notifier goroutine that sends at most one NOTIFY per channel every
// notifyEvery, in a transaction of its own that changes no data, carrying
// the changes made meanwhile.
const notifyEvery = 5 * time.Millisecond

// notes are the changes waiting for the notifier.
type notes struct {
	queue, events bool
	mailbox       []mailboxNote
}

// changed wakes this node's waiters for the queue and the event log at
// once, and has the notifier tell the other nodes.
func (s *Store) changed(queue, events bool) {
	if queue {
		s.signal(&s.queueCh)
	}
	if events {
		s.signal(&s.eventsCh)
	}
	s.noteMu.Lock()
	s.pending.queue = s.pending.queue || queue
	s.pending.events = s.pending.events || events
	s.noteMu.Unlock()
	s.poke()
}

func (s *Store) poke() {
	select {
	case s.notifyKick <- struct{}{}:
	default:
	}
}

// notifier sends the coalesced notifications until ctx ends.
func (s *Store) notifier(ctx context.Context) {
	defer close(s.notifierDone)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.notifyKick:
		}
		s.noteMu.Lock()
		n := s.pending
		s.pending = notes{}
		s.noteMu.Unlock()
		s.send(ctx, n)
		select {
		case <-ctx.Done():
			return
		case <-time.After(notifyEvery):
		}
	}
}

// send sends one round of notifications: the payload of the queue and
// event channels is this node's name (so that it ignores its own), a
// mailbox note goes as it is or, when too large, as an overflow.
func (s *Store) send(ctx context.Context, n notes) {
	b := &pgx.Batch{}
	if n.queue {
		b.Queue("SELECT pg_notify($1, $2)", chanQueue, s.node)
	}
	if n.events {
		b.Queue("SELECT pg_notify($1, $2)", chanEvents, s.node)
	}
	seen := map[string]bool{}
	for _, note := range n.mailbox {
		p, _ := json.Marshal(note)
		if len(p) > maxPayload {
			note.Expunged, note.Flags, note.Overflow = nil, nil, true
			p, _ = json.Marshal(note)
		}
		if string(p) == "" || seen[string(p)] {
			continue // one "look again" per user is enough
		}
		seen[string(p)] = true
		b.Queue("SELECT pg_notify($1, $2)", chanMailbox, string(p))
	}
	if b.Len() == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil && ctx.Err() == nil {
		s.log.Warn("store: telling other nodes of changes failed", "error", err)
	}
}

// mailboxNote is a mailbox change as it travels between nodes. NOTIFY
// payloads are limited to 8000 bytes; a change too large for one says only
// that the user's mailboxes changed (Overflow), and sessions re-read them.
type mailboxNote struct {
	Node     string   `json:"n"`
	User     string   `json:"u"`
	Mailbox  uint64   `json:"m,omitempty"`
	Expunged []uint32 `json:"x,omitempty"`
	Flags    []uint32 `json:"f,omitempty"`
	Overflow bool     `json:"o,omitempty"`
}

const maxPayload = 7900

// listen holds one connection that LISTENs on the channels, reconnecting
// with a growing pause when it drops; after a reconnect it wakes everyone,
// since notifications sent meanwhile are lost.
func (s *Store) listen(ctx context.Context, ready chan struct{}) {
	defer close(s.stopped)
	pause := 100 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		conn, err := pgx.Connect(ctx, s.url)
		if err == nil {
			for _, ch := range []string{chanQueue, chanEvents, chanMailbox} {
				if _, err = conn.Exec(ctx, "LISTEN "+ch); err != nil {
					break
				}
			}
		}
		if err != nil {
			if conn != nil {
				conn.Close(context.Background())
			}
			if first {
				close(ready)
				first = false
			}
			if ctx.Err() == nil {
				s.log.Warn("store: listening for other nodes' changes failed; retrying", "error", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
			pause = min(2*pause, 5*time.Second)
			continue
		}
		pause = 100 * time.Millisecond
		if first {
			close(ready)
			first = false
		} else {
			s.wakeAll()
		}
		s.receive(ctx, conn)
		conn.Close(context.Background())
	}
}

// receive dispatches notifications until the connection fails or ctx ends.
func (s *Store) receive(ctx context.Context, conn *pgx.Conn) {
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("store: lost the connection that listens for other nodes' changes", "error", err)
			}
			return
		}
		switch n.Channel {
		case chanQueue:
			if n.Payload != s.node {
				s.signal(&s.queueCh)
			}
		case chanEvents:
			if n.Payload != s.node {
				s.signal(&s.eventsCh)
			}
		case chanMailbox:
			var note mailboxNote
			if json.Unmarshal([]byte(n.Payload), &note) != nil || note.Node == s.node {
				continue // our own changes were handed out when made
			}
			s.dispatch(note.User, mailbox.Event{Mailbox: note.Mailbox, Expunged: note.Expunged, Flags: note.Flags, Overflow: note.Overflow})
		}
	}
}

// wakeAll tells every waiter to look again: notifications may have been
// lost while the listening connection was down.
func (s *Store) wakeAll() {
	s.signal(&s.queueCh)
	s.signal(&s.eventsCh)
	s.dispatch("", mailbox.Event{Overflow: true})
}

func (s *Store) dispatch(user string, ev mailbox.Event) {
	s.mu.Lock()
	fn := s.onChange
	s.mu.Unlock()
	if fn != nil {
		fn(user, ev)
	}
}

// OnChange implements mailbox.Backend.
func (s *Store) OnChange(fn func(user string, ev mailbox.Event)) {
	s.mu.Lock()
	s.onChange = fn
	s.mu.Unlock()
}

// Publish implements mailbox.Backend: this node's sessions hear of the
// change at once (with its source, so the session that made it is not told
// of its own change), the others through NOTIFY.
func (s *Store) Publish(user string, ev mailbox.Event) {
	s.dispatch(user, ev)
	note := mailboxNote{Node: s.node, User: user, Mailbox: ev.Mailbox, Expunged: ev.Expunged, Flags: ev.Flags, Overflow: ev.Overflow}
	s.noteMu.Lock()
	s.pending.mailbox = append(s.pending.mailbox, note)
	s.noteMu.Unlock()
	s.poke()
}
