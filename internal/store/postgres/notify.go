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
			s.signal(&s.queueCh)
		case chanEvents:
			s.signal(&s.eventsCh)
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
	b, _ := json.Marshal(note)
	if len(b) > maxPayload {
		note.Expunged, note.Flags, note.Overflow = nil, nil, true
		b, _ = json.Marshal(note)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := s.pool.Exec(ctx, "SELECT pg_notify($1, $2)", chanMailbox, string(b)); err != nil {
		s.log.Warn("store: telling other nodes of a mailbox change failed", "user", user, "error", err)
	}
}
