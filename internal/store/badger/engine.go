package badger

import (
	"bytes"
	"errors"
	"hash/fnv"
	"io"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

// Store is the embedded engine: spool.Backend and mailbox.Backend on one
// Badger database, which one process holds at a time. Because of that, the
// state that coordinates work (leases on queued messages, change
// notifications) lives in this process; on a shared PostgreSQL store it
// lives in the database.
type Store struct {
	db   *DB
	node string
	now  func() time.Time

	mu       sync.Mutex
	queueCh  chan struct{}
	eventsCh chan struct{}
	onChange func(user string, ev mailbox.Event)

	// Claims: the leases handed out, a counter for their epochs, and the
	// due index's scan position (see scanFrom).
	claimMu  sync.Mutex
	leaseMu  sync.Mutex
	leases   map[string]spool.Lease
	epoch    atomic.Uint64
	low      time.Time    // guarded by claimMu
	earliest atomic.Int64 // earliest due time (ns) written since the last scan

	// fileLocks serialize writes of new messages into the same account:
	// they all rewrite the mailbox's record, so under Badger's
	// optimistic transactions all but one would be redone, again and
	// again while a burst for one account lasts. An APPEND holds its
	// account's stripe; a delivery, whose accounts are known only once
	// its update has run, retries holding them after a first conflict.
	// In-process is enough: one process owns a Badger store.
	fileLocks [64]sync.Mutex
}

// lockAccounts takes the file locks of accounts, in stripe order so that
// two callers cannot deadlock, and returns what releases them.
func (s *Store) lockAccounts(accounts []string) func() {
	var stripes []int
	for _, a := range accounts {
		h := fnv.New32a()
		h.Write([]byte(a))
		stripes = append(stripes, int(h.Sum32()%uint32(len(s.fileLocks))))
	}
	slices.Sort(stripes)
	stripes = slices.Compact(stripes)
	for _, i := range stripes {
		s.fileLocks[i].Lock()
	}
	return func() {
		for _, i := range stripes {
			s.fileLocks[i].Unlock()
		}
	}
}

// New returns the engine on an open database. now is the clock (nil for
// time.Now).
func New(db *DB, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	s := &Store{db: db, node: "local", now: now, queueCh: make(chan struct{}), eventsCh: make(chan struct{}),
		leases: map[string]spool.Lease{}}
	s.earliest.Store(math.MaxInt64)
	return s
}

// DB is the underlying database (for the server's housekeeping: garbage
// collection, page release, free space).
func (s *Store) DB() *DB { return s.db }

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// isNoSpace reports whether err comes from a full filesystem.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

var (
	_ spool.Backend   = (*Store)(nil)
	_ mailbox.Backend = (*Store)(nil)
)
