package badger

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sync/atomic"
	"time"

	bdg "github.com/dgraph-io/badger/v4"

	"github.com/relaymail/relay/internal/store"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

// The spool's keys:
//
//	q/e/<id>                 envelope (envelope.go)
//	q/b/<id><chunk:u32 BE>   body, in BodyChunk pieces (PutChunks)
//	q/d/<due:u64 BE ns><id>  due index, empty value
//	ev/t/<time:u64 BE ns><n:u32 BE>        an event (JSON), in time order
//	ev/m/<id><time:u64 BE ns><n:u32 BE>    empty: the message's history
//
// The due index holds one key per message that is neither held nor
// finished, ordered by the earliest next attempt of its pending recipients,
// so finding due work costs O(due), not O(queue). Events expire after
// spool.EventRetention (Badger TTL).
const (
	prefixEnv     = "q/e/"
	prefixBody    = "q/b/"
	prefixDue     = "q/d/"
	prefixLog     = "ev/t/"
	prefixHistory = "ev/m/"
)

func envKey(id string) []byte { return []byte(prefixEnv + id) }

func bodyPrefix(id string) []byte { return []byte(prefixBody + id) }

func dueKey(t time.Time, id string) []byte {
	k := binary.BigEndian.AppendUint64([]byte(prefixDue), uint64(t.UnixNano()))
	return append(k, id...)
}

// mapErr turns Badger's errors into the seam's neutral ones.
func mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, bdg.ErrConflict):
		return errors.Join(store.ErrConflict, err)
	case errors.Is(err, bdg.ErrTxnTooBig):
		return errors.Join(store.ErrTooBig, err)
	case isNoSpace(err):
		return errors.Join(store.ErrNoSpace, err)
	}
	return err
}

// update runs fn in a read-write transaction, retrying conflicts.
func (s *Store) update(ctx context.Context, fn func(txn *bdg.Txn) error) error {
	return store.Retry(ctx, func() error { return mapErr(s.db.Update(fn)) })
}

// view runs fn in a read transaction.
func (s *Store) view(fn func(txn *bdg.Txn) error) error { return mapErr(s.db.View(fn)) }

// Enqueue implements spool.Backend: the commit is followed by a group sync
// before it returns.
func (s *Store) Enqueue(ctx context.Context, m *spool.Message, body io.Reader, ev spool.Event) error {
	txn := s.db.NewTransaction(true)
	defer txn.Discard()
	size, err := PutChunks(txn, bodyPrefix(m.ID), body)
	if err != nil {
		return mapErr(fmt.Errorf("enqueue %s: body: %w", m.ID, err))
	}
	m.Size = size
	if ev.Event == spool.EventAccepted {
		ev.Size = size
	}
	var due time.Time
	if err := putEnvelope(txn, m, &due); err != nil {
		return mapErr(fmt.Errorf("enqueue %s: %w", m.ID, err))
	}
	if ev.Event != "" {
		if err := s.appendEvent(txn, &ev); err != nil {
			return mapErr(err)
		}
	}
	if err := txn.Commit(); err != nil {
		return mapErr(fmt.Errorf("enqueue %s: commit: %w", m.ID, err))
	}
	s.db.Committed()
	if err := s.db.Sync(); err != nil {
		return mapErr(fmt.Errorf("enqueue %s: %w", m.ID, err))
	}
	s.committed(due, true)
	return nil
}

// SyncStats reports how many enqueue commits there were and the highest of
// them a completed sync covers: an enqueue that returned is always among
// the synced ones (the guard of the relay's first promise).
func (s *Store) SyncStats() (committed, synced uint64) { return s.db.SyncStats() }

// committed runs after a commit: the due time written is noted for the next
// scan, then the queue's and the log's waiters are woken.
func (s *Store) committed(due time.Time, events bool) {
	if !due.IsZero() {
		s.noteDue(due)
	}
	s.signal(&s.queueCh)
	if events {
		s.signal(&s.eventsCh)
	}
}

// putEnvelope writes m and moves its due-index entry to where its state
// says; *due gets the time written to the index (zero for none).
func putEnvelope(txn *bdg.Txn, m *spool.Message, due *time.Time) error {
	next := m.NextDue()
	if !m.Due.IsZero() && !m.Due.Equal(next) {
		if err := txn.Delete(dueKey(m.Due, m.ID)); err != nil {
			return fmt.Errorf("unindex: %w", err)
		}
	}
	if !next.IsZero() {
		if err := txn.Set(dueKey(next, m.ID), nil); err != nil {
			return fmt.Errorf("index: %w", err)
		}
		*due = next
	}
	m.Due = next
	if err := txn.Set(envKey(m.ID), appendEnvelope(nil, m)); err != nil {
		return fmt.Errorf("store envelope: %w", err)
	}
	return nil
}

func getEnvelope(txn *bdg.Txn, id string) (*spool.Message, error) {
	item, err := txn.Get(envKey(id))
	if errors.Is(err, bdg.ErrKeyNotFound) {
		return nil, fmt.Errorf("%s: %w", id, spool.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", id, err)
	}
	m := new(spool.Message)
	if err := item.Value(func(v []byte) error { return parseEnvelope(v, m) }); err != nil {
		return nil, fmt.Errorf("decode %s: %w", id, err)
	}
	return m, nil
}

func deleteMessage(txn *bdg.Txn, m *spool.Message) error {
	if !m.Due.IsZero() {
		if err := txn.Delete(dueKey(m.Due, m.ID)); err != nil {
			return err
		}
	}
	if err := DeleteChunks(txn, bodyPrefix(m.ID), m.Size); err != nil {
		return err
	}
	return txn.Delete(envKey(m.ID))
}

// Get implements spool.Backend.
func (s *Store) Get(_ context.Context, id string) (*spool.Message, error) {
	var m *spool.Message
	err := s.view(func(txn *bdg.Txn) error {
		var err error
		m, err = getEnvelope(txn, id)
		return err
	})
	return m, err
}

// Body implements spool.Backend.
func (s *Store) Body(ctx context.Context, id string) (io.ReadCloser, error) {
	m, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(ChunkReader(s.db, nil, bodyPrefix(id), m.Size)), nil
}

// Page implements spool.Backend.
func (s *Store) Page(_ context.Context, after string, limit int) ([]*spool.Message, error) {
	var out []*spool.Message
	err := s.view(func(txn *bdg.Txn) error {
		it := txn.NewIterator(bdg.IteratorOptions{Prefix: []byte(prefixEnv)})
		defer it.Close()
		for it.Seek(append(envKey(after), 0)); it.Valid() && len(out) < limit; it.Next() {
			m := new(spool.Message)
			if err := it.Item().Value(func(v []byte) error { return parseEnvelope(v, m) }); err != nil {
				return fmt.Errorf("decode %s: %w", it.Item().Key(), err)
			}
			out = append(out, m)
		}
		return nil
	})
	return out, err
}

// Count implements spool.Backend.
func (s *Store) Count(context.Context) (int, error) {
	n := 0
	err := s.view(func(txn *bdg.Txn) error {
		it := txn.NewIterator(bdg.IteratorOptions{Prefix: []byte(prefixEnv)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			n++
		}
		return nil
	})
	return n, err
}

// Oldest implements spool.Backend. IDs are time-ordered, so it is the first
// envelope: one key, whatever the size of the queue.
func (s *Store) Oldest(context.Context) (time.Time, error) {
	var t time.Time
	err := s.view(func(txn *bdg.Txn) error {
		it := txn.NewIterator(bdg.IteratorOptions{Prefix: []byte(prefixEnv)})
		defer it.Close()
		it.Rewind()
		if !it.Valid() {
			return nil
		}
		var m spool.Message
		if err := it.Item().Value(func(v []byte) error { return parseEnvelope(v, &m) }); err != nil {
			return fmt.Errorf("decode %s: %w", it.Item().Key(), err)
		}
		t = m.Arrived
		return nil
	})
	return t, err
}

// NextDue implements spool.Backend. Like a claim, it starts where nothing
// but tombstones lies before (scanFrom, without taking the earliest time
// written from the next claim): the delivery loop asks after every round,
// and a round follows every delivery, so a scan from the index's front
// would wade through the entries of every message delivered lately.
func (s *Store) NextDue(context.Context) (time.Time, bool, error) {
	s.claimMu.Lock()
	defer s.claimMu.Unlock()
	from := s.low
	if e := s.earliest.Load(); e != math.MaxInt64 && (from.IsZero() || e < from.UnixNano()) {
		from = time.Unix(0, e)
	}
	_, first, _, err := s.scanDue(from, time.Unix(0, 0), 0, nil)
	return first, !first.IsZero(), err
}

// scanDue reads the due index from the time from on: up to limit IDs due at
// or before now that skip does not refuse, earliest first; first, the due
// time of the first entry found (zero if none); and next, the earliest due
// time after now (zero if the scan stopped at limit or found none). Starting
// at from skips what lies before it: the index's front, where the entries of
// delivered messages were deleted, is full of tombstones that a scan from the
// start would wade through every time.
func (s *Store) scanDue(from, now time.Time, limit int, skip func(id string) bool) (ids []string, first, next time.Time, err error) {
	end := uint64(now.UnixNano())
	err = s.view(func(txn *bdg.Txn) error {
		it := txn.NewIterator(bdg.IteratorOptions{Prefix: []byte(prefixDue)})
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
			if id := string(k[8:]); skip == nil || !skip(id) {
				ids = append(ids, id)
			}
		}
		return nil
	})
	return ids, first, next, err
}

// scanFrom returns where the next scan may start without missing an entry:
// the earlier of the first entry the last scan found (before which there
// was nothing but tombstones) and the earliest due time written since.
func (s *Store) scanFrom() time.Time {
	low := s.low
	e := s.earliest.Swap(math.MaxInt64)
	if e != math.MaxInt64 && (low.IsZero() || e < low.UnixNano()) {
		return time.Unix(0, e)
	}
	return low
}

// noteDue records a due time written to the index, for scanFrom. It runs
// after the commit, before the change is signalled, so that a scan either
// sees the entry or is woken again to look for it.
func (s *Store) noteDue(t time.Time) {
	n := t.UnixNano()
	for {
		cur := s.earliest.Load()
		if n >= cur || s.earliest.CompareAndSwap(cur, n) {
			return
		}
	}
}

// Claim implements spool.Backend. One process holds a Badger database, so
// the leases live in memory and do not run out: a worker cannot die while
// its process lives, and a lease ends when it is given back (by the update
// that carries it, or Release). A claim is a scan of the due index that
// skips what is leased.
func (s *Store) Claim(_ context.Context, now time.Time, limit int, d time.Duration) ([]spool.Lease, error) {
	s.claimMu.Lock()
	defer s.claimMu.Unlock()
	from := s.scanFrom()
	ids, first, _, err := s.scanDue(from, now, limit+s.leaseCount(), func(id string) bool {
		s.leaseMu.Lock()
		defer s.leaseMu.Unlock()
		_, ok := s.leases[id]
		return ok
	})
	if err != nil {
		s.low = time.Time{} // what scanFrom handed out is lost: start over
		return nil, err
	}
	s.low = first
	if s.low.IsZero() {
		s.low = from
	}
	var out []spool.Lease
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	for _, id := range ids {
		if len(out) == limit {
			break
		}
		l := spool.Lease{ID: id, Node: s.node, Epoch: s.epoch.Add(1), Until: now.Add(d)}
		s.leases[id] = l
		out = append(out, l)
	}
	return out, nil
}

func (s *Store) leaseCount() int {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	return len(s.leases)
}

// holds reports whether l is still the message's current lease.
func (s *Store) holds(l spool.Lease) bool {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	cur, ok := s.leases[l.ID]
	return ok && cur.Epoch == l.Epoch
}

// Renew implements spool.Backend.
func (s *Store) Renew(_ context.Context, l spool.Lease, d time.Duration) error {
	s.leaseMu.Lock()
	defer s.leaseMu.Unlock()
	cur, ok := s.leases[l.ID]
	if !ok || cur.Epoch != l.Epoch {
		return fmt.Errorf("renew %s: %w", l.ID, store.ErrLeaseLost)
	}
	cur.Until = s.now().Add(d)
	s.leases[l.ID] = cur
	return nil
}

// Release implements spool.Backend.
func (s *Store) Release(_ context.Context, l spool.Lease) error {
	s.leaseMu.Lock()
	cur, ok := s.leases[l.ID]
	if ok && cur.Epoch == l.Epoch {
		delete(s.leases, l.ID)
	}
	s.leaseMu.Unlock()
	if !ok || cur.Epoch != l.Epoch {
		return fmt.Errorf("release %s: %w", l.ID, store.ErrLeaseLost)
	}
	// The message is due again as its recipients say: wake the claimers.
	s.signal(&s.queueCh)
	return nil
}

// Update implements spool.Backend.
func (s *Store) Update(ctx context.Context, id string, lease *spool.Lease, fn func(m *spool.Message) (spool.Effects, error)) error {
	var res updateResult
	unlock := func() {}
	defer func() { unlock() }()
	try := func() error {
		return mapErr(s.db.Update(func(txn *bdg.Txn) error {
			var err error
			res, err = s.updateTxn(txn, id, lease, fn)
			return err
		}))
	}
	locked := false
	err := store.Retry(ctx, func() error {
		err := try()
		if errors.Is(err, store.ErrConflict) && !locked && len(res.accounts) > 0 {
			// Met another delivery into the same account: take turns
			// from now on (fileLocks), starting at once.
			unlock = s.lockAccounts(res.accounts)
			locked = true
			err = try()
		}
		return err
	})
	if err != nil {
		return err
	}
	if lease != nil && !res.keep {
		s.leaseMu.Lock()
		if cur, ok := s.leases[id]; ok && cur.Epoch == lease.Epoch {
			delete(s.leases, id)
		}
		s.leaseMu.Unlock()
	}
	s.committed(res.due, res.events)
	for _, u := range res.files {
		s.Publish(u, mailbox.Event{})
	}
	return nil
}

// updateResult is what one try of Update leaves for after its commit.
type updateResult struct {
	due      time.Time
	files    []string // the users whose INBOX got the message
	accounts []string // the accounts it was filed into (fileLocks)
	events   bool     // events were logged
	keep     bool     // the lease stays
}

// updateTxn is one try of Update in txn.
func (s *Store) updateTxn(txn *bdg.Txn, id string, lease *spool.Lease, fn func(m *spool.Message) (spool.Effects, error)) (updateResult, error) {
	var res updateResult
	if lease != nil && !s.holds(*lease) {
		return res, fmt.Errorf("update %s: %w", id, store.ErrLeaseLost)
	}
	m, err := getEnvelope(txn, id)
	if err != nil {
		return res, err
	}
	eff, err := fn(m)
	if err != nil {
		return res, err
	}
	res.keep = eff.KeepLease
	if eff.File != nil {
		res.accounts = eff.File.Accounts
		if res.files, err = s.fileTxn(txn, m, eff.File); err != nil {
			return res, err
		}
	}
	for _, n := range eff.Notices {
		var nd time.Time
		n.Message.Size = int64(len(n.Body))
		if _, err := txn.Get(envKey(n.Message.ID)); err == nil {
			return res, fmt.Errorf("queue notice %s: the ID is taken", n.Message.ID)
		}
		if _, err := PutChunks(txn, bodyPrefix(n.Message.ID), bytesReader(n.Body)); err != nil {
			return res, fmt.Errorf("queue notice %s: %w", n.Message.ID, err)
		}
		if err := putEnvelope(txn, n.Message, &nd); err != nil {
			return res, fmt.Errorf("queue notice %s: %w", n.Message.ID, err)
		}
		res.due = earlier(res.due, nd)
	}
	for i := range eff.Events {
		if err := s.appendEvent(txn, &eff.Events[i]); err != nil {
			return res, err
		}
		res.events = true
	}
	if m.Done() {
		return res, deleteMessage(txn, m)
	}
	var md time.Time
	if err := putEnvelope(txn, m, &md); err != nil {
		return res, err
	}
	res.due = earlier(res.due, md)
	return res, nil
}

func earlier(a, b time.Time) time.Time {
	if a.IsZero() || !b.IsZero() && b.Before(a) {
		return b
	}
	return a
}

// Delete implements spool.Backend.
func (s *Store) Delete(ctx context.Context, id string, ev spool.Event) error {
	err := s.update(ctx, func(txn *bdg.Txn) error {
		m, err := getEnvelope(txn, id)
		if err != nil {
			return err
		}
		if err := deleteMessage(txn, m); err != nil {
			return err
		}
		return s.appendEvent(txn, &ev)
	})
	if err == nil {
		s.committed(time.Time{}, true)
	}
	return err
}

// eventSeq makes event keys unique within a nanosecond.
var eventSeq atomic.Uint32

// appendEvent writes ev into txn and sets its cursor.
func (s *Store) appendEvent(txn *bdg.Txn, ev *spool.Event) error {
	seq := binary.BigEndian.AppendUint64(nil, uint64(ev.Time.UnixNano()))
	seq = binary.BigEndian.AppendUint32(seq, eventSeq.Add(1))
	v, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode event: %w", err)
	}
	ttl := spool.EventRetention
	if err := txn.SetEntry(bdg.NewEntry(append([]byte(prefixLog), seq...), v).WithTTL(ttl)); err != nil {
		return fmt.Errorf("log event: %w", err)
	}
	hk := append(append([]byte(prefixHistory), ev.ID...), seq...)
	if err := txn.SetEntry(bdg.NewEntry(hk, nil).WithTTL(ttl)); err != nil {
		return fmt.Errorf("log event: %w", err)
	}
	ev.Cursor = hex.EncodeToString(seq)
	return nil
}

// Record implements spool.Backend. It is not synced: losing it in a crash
// loses only log lines.
func (s *Store) Record(ctx context.Context, evs ...spool.Event) error {
	err := s.update(ctx, func(txn *bdg.Txn) error {
		for i := range evs {
			if err := s.appendEvent(txn, &evs[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		s.signal(&s.eventsCh)
	}
	return err
}

func decodeEvent(item *bdg.Item) (spool.Event, error) {
	var ev spool.Event
	if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &ev) }); err != nil {
		return ev, fmt.Errorf("decode event %x: %w", item.Key(), err)
	}
	ev.Cursor = hex.EncodeToString(item.Key()[len(prefixLog):])
	return ev, nil
}

// LastEvents implements spool.Backend.
func (s *Store) LastEvents(_ context.Context, n int) ([]spool.Event, error) {
	if n <= 0 {
		return nil, nil
	}
	var out []spool.Event
	err := s.view(func(txn *bdg.Txn) error {
		it := txn.NewIterator(bdg.IteratorOptions{Prefix: []byte(prefixLog), Reverse: true})
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

// EventsSince implements spool.Backend.
func (s *Store) EventsSince(_ context.Context, since time.Time, after string, limit int) ([]spool.Event, error) {
	var out []spool.Event
	// The log's keys are in (time, sequence) order, and a cursor is the
	// key's suffix: starting after it is seeking just past its key.
	start := binary.BigEndian.AppendUint64([]byte(prefixLog), uint64(max(since.UnixNano(), 0)))
	if after != "" {
		seq, err := hex.DecodeString(after)
		if err != nil {
			return nil, fmt.Errorf("event cursor %q: %w", after, err)
		}
		start = append(append([]byte(prefixLog), seq...), 0)
	}
	err := s.view(func(txn *bdg.Txn) error {
		it := txn.NewIterator(bdg.IteratorOptions{Prefix: []byte(prefixLog)})
		defer it.Close()
		for it.Seek(start); it.Valid() && len(out) < limit; it.Next() {
			ev, err := decodeEvent(it.Item())
			if err != nil {
				return err
			}
			out = append(out, ev)
		}
		return nil
	})
	return out, err
}

// History implements spool.Backend.
func (s *Store) History(_ context.Context, id string) ([]spool.Event, error) {
	var out []spool.Event
	err := s.view(func(txn *bdg.Txn) error {
		p := []byte(prefixHistory + id)
		it := txn.NewIterator(bdg.IteratorOptions{Prefix: p})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			seq := it.Item().Key()[len(p):]
			if len(seq) != 12 {
				continue // another ID that starts with id
			}
			item, err := txn.Get(append([]byte(prefixLog), seq...))
			if errors.Is(err, bdg.ErrKeyNotFound) {
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

// QueueChanged implements spool.Backend.
func (s *Store) QueueChanged() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queueCh
}

// EventsChanged implements spool.Backend.
func (s *Store) EventsChanged() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eventsCh
}

// signal closes *ch and replaces it, waking its waiters.
func (s *Store) signal(ch *chan struct{}) {
	s.mu.Lock()
	close(*ch)
	*ch = make(chan struct{})
	s.mu.Unlock()
}
