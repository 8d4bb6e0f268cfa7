// Package badger is the embedded storage engine: spool.Backend and
// mailbox.Backend on one Badger database in the data directory, for a relay
// that runs on one node. The spool's and the mailbox store's keys live side
// by side (spool.go, mailbox.go), so that a local delivery (the mailbox
// insert plus the recipient's state) is one transaction.
//
// Badger is opened with SyncWrites off; durability before an acknowledgement
// comes from DB.Sync, which batches concurrent callers into a single fsync
// of the value log and the memtable WAL (group commit). Badger maps its files,
// and a write into a sparse page of a full filesystem faults (SIGBUS) rather
// than failing, so the files are preallocated (prealloc_linux.go) and the
// server keeps Reserve bytes free before it writes.
package badger

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	bdg "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// SyncMode says how DB.Sync reaches the disk.
type SyncMode int

const (
	// SyncGroup lets concurrent callers share one fsync: a caller waits for
	// the next sync round that starts after it asked.
	SyncGroup SyncMode = iota
	// SyncEach runs one fsync per caller, one after the other. It exists to
	// measure what group commit buys; nothing in the relay uses it.
	SyncEach
	// SyncNone makes Sync a no-op. Only for tests and benchmarks that do not
	// care about power loss.
	SyncNone
)

// Options tune the database. The zero value is the relay's default.
type Options struct {
	// InMemory keeps everything in RAM (tests only).
	InMemory bool
	// Sync selects the sync strategy (default SyncGroup).
	Sync SyncMode
	// Logger receives Badger's warnings and errors; nil discards them.
	Logger *slog.Logger
}

// DB is the shared Badger database.
type DB struct {
	*bdg.DB
	mode   SyncMode
	syncer *groupSyncer
	eachMu sync.Mutex
	closed bool // guarded by eachMu

	// commits counts the commits the engine reported (Committed);
	// synced is the highest count a completed sync started after.
	commits, synced atomic.Uint64
}

// Committed records that a transaction the caller must see durable has
// committed, and returns its number. A Sync that starts afterwards covers it.
func (db *DB) Committed() uint64 { return db.commits.Add(1) }

// SyncStats reports how many commits were recorded and the highest number
// a completed sync covers: a commit is durable once synced reaches it.
func (db *DB) SyncStats() (committed, synced uint64) { return db.commits.Load(), db.synced.Load() }

// covered records that a sync which started when commits stood at n has
// completed.
func (db *DB) covered(n uint64) {
	for {
		cur := db.synced.Load()
		if n <= cur || db.synced.CompareAndSwap(cur, n) {
			return
		}
	}
}

// ValueThreshold is the size from which Badger moves a value out of the LSM
// tree into the value log. Envelopes, index keys and events stay in the
// tree; message bodies (in BodyChunk pieces) go to the value log, so that
// compactions move pointers instead of rewriting every body at every level.
// With bodies in the tree, queueing 100,000 4 KiB messages held over 1 GiB
// in Badger's table builders; with them in the log, about 100 MiB.
const ValueThreshold = 1 << 10

// BodyChunk is the size in which packages store message bodies. It is one
// byte under Badger's largest ValueThreshold, so that an in-memory database
// (tests), which must keep every value inline, can hold it too.
const BodyChunk = 1<<20 - 1

// The sizes of the files Badger maps, which the relay's reserve of free
// disk space is computed from.
const (
	// memTableSize is Badger's MemTableSize: the memtable's arena, whose
	// write-ahead log (a .mem file) is mapped at twice this size.
	memTableSize = 32 << 20
	// valueLogFileSize is Badger's ValueLogFileSize: a value-log file is
	// finished past it, and each is mapped at twice this size.
	valueLogFileSize = 16 << 20
)

// Reserve is the free space, in bytes, the store needs on its filesystem to
// keep growing without a fault. Badger creates each file it maps by
// truncating it to its full size, so that the file is sparse, and a write
// into a page that the filesystem cannot back raises SIGBUS instead of
// returning an error. Preallocate backs such files within one poll of their
// creation; until it runs, the filesystem must hold what Badger may create
// in the meantime:
//   - the next memtable's write-ahead log, 2 x memTableSize;
//   - the next value-log file, 2 x valueLogFileSize;
//   - the level-0 table written when the full memtable is flushed, at most
//     about memTableSize;
//   - memTableSize more for compactions, which write their output tables
//     before they delete their inputs, and the small DISCARD and MANIFEST
//     files.
//
// Opening the database creates the first two at once, so Reserve is also
// what `relay serve` needs free to start.
const Reserve = 2*memTableSize + 2*valueLogFileSize + 2*memTableSize

// Open opens (creating if needed) the database in dir and backs its mapped
// files with disk blocks (see Preallocate).
func Open(dir string, o Options) (*DB, error) {
	bo := bdg.DefaultOptions(dir).
		WithInMemory(o.InMemory).
		WithSyncWrites(false).
		WithValueThreshold(ValueThreshold).
		// Sized for a 2-core machine with a few GiB of RAM: the defaults
		// reserve several hundred MiB for memtables and the block cache.
		WithMemTableSize(memTableSize).
		WithNumMemtables(2).
		WithNumLevelZeroTables(3).
		WithNumLevelZeroTablesStall(8).
		// Uncompressed tables are read straight from their mapping, so
		// the block cache would hold copies of nothing.
		WithCompression(options.None).
		WithBlockCacheSize(0).
		WithIndexCacheSize(16 << 20).
		// Small value-log files: every sync msyncs the whole mapping of
		// the one being written (twice its size), and garbage collection
		// rewrites a file at a time. 16 MiB against 64 MiB: one writer's
		// enqueue+sync 1700-1930 -> 2149-2703 msgs/s (BenchmarkEnqueue).
		WithValueLogFileSize(valueLogFileSize).
		WithNumCompactors(2).
		WithMetricsEnabled(false).
		WithLogger(badgerLogger{o.Logger})
	if o.InMemory {
		// No value log in memory: every chunk must stay inline.
		bo = bo.WithDir("").WithValueDir("").WithValueThreshold(1 << 20)
	}
	bdb, err := bdg.Open(bo)
	if err != nil {
		if strings.Contains(err.Error(), "Another process is using this Badger database") {
			return nil, fmt.Errorf("open database %s: %w", dir, ErrLocked)
		}
		return nil, fmt.Errorf("open database %s: %w", dir, err)
	}
	db := &DB{DB: bdb, mode: o.Sync}
	if o.Sync == SyncGroup {
		db.syncer = newGroupSyncer(func() error {
			// Read before the sync starts: every commit counted by
			// then is on disk once it returns.
			n := db.commits.Load()
			if err := bdb.Sync(); err != nil {
				return err
			}
			db.covered(n)
			return nil
		})
	}
	// The files Badger just made (a memtable log, a value-log file) are
	// sparse; a failure here is not fatal, the caller's next poll retries.
	if err := db.Preallocate(); err != nil && o.Logger != nil {
		o.Logger.Warn("preallocating database files failed", "error", err)
	}
	return db, nil
}

// Preallocate gives every file Badger maps in the database directory (memtable
// logs, value-log files, tables, the discard file) the disk blocks it lacks,
// so that no page Badger writes later can fault for want of space (see
// Reserve). Call it often (the relay does every 500 ms): Badger creates
// such files as it goes. It returns ErrNoSpace (wrapped) when the
// filesystem had no room for a file, and ErrNoPrealloc when the filesystem
// cannot preallocate at all.
func (db *DB) Preallocate() error {
	if db.Opts().InMemory {
		return nil
	}
	return preallocateDir(db.Opts().Dir)
}

// Errors of Preallocate.
var (
	ErrNoSpace    = errors.New("no space left to back a database file")
	ErrNoPrealloc = errors.New("the filesystem cannot preallocate files")
)

// Sync makes every transaction committed before the call durable. Under
// SyncGroup, concurrent callers share one fsync.
func (db *DB) Sync() error {
	switch db.mode {
	case SyncNone:
		return nil
	case SyncEach:
		db.eachMu.Lock()
		defer db.eachMu.Unlock()
		if db.closed {
			return errClosed
		}
		n := db.commits.Load()
		if err := db.DB.Sync(); err != nil {
			return err
		}
		db.covered(n)
		return nil
	default:
		return db.syncer.sync()
	}
}

// Close stops the syncer and closes the database.
func (db *DB) Close() error {
	if db.syncer != nil {
		db.syncer.close()
	}
	db.eachMu.Lock()
	db.closed = true
	db.eachMu.Unlock()
	return db.DB.Close()
}

var errClosed = errors.New("database closed")

// CollectGarbage rewrites the value log files whose bodies were mostly
// deleted, until none is left. Queue traffic deletes constantly, so without
// it, run every few minutes, the value log only grows.
func (db *DB) CollectGarbage() {
	if db.Opts().InMemory {
		return
	}
	for db.RunValueLogGC(0.5) == nil {
	}
}

// ReleaseCold hands the pages of database files that are not being written
// back to the kernel, so that the process's resident set tracks what it
// works on rather than everything it ever read or wrote. It returns how many
// mappings it released; see releaseCold for why this is safe.
func (db *DB) ReleaseCold() (int, error) {
	if db.Opts().InMemory {
		return 0, nil
	}
	return db.releaseCold()
}

// ErrLocked is returned by Open when another process holds the database.
var ErrLocked = errors.New("database is in use by another process")

// groupSyncer runs one sync at a time; callers that arrive while a sync runs
// wait for the next one, which then covers all of them.
type groupSyncer struct {
	syncFn  func() error
	mu      sync.Mutex
	waiting *syncRound // round that the next sync will complete
	running bool
	closed  bool
	loops   sync.WaitGroup
}

type syncRound struct {
	done    chan struct{}
	err     error
	callers int // how many wait for it (tests see who has joined)
}

func newGroupSyncer(fn func() error) *groupSyncer {
	return &groupSyncer{syncFn: fn}
}

func (g *groupSyncer) sync() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return errClosed
	}
	if g.waiting == nil {
		g.waiting = &syncRound{done: make(chan struct{})}
	}
	round := g.waiting
	round.callers++
	if !g.running {
		g.running = true
		g.loops.Add(1)
		go g.loop()
	}
	g.mu.Unlock()
	<-round.done
	return round.err
}

// loop syncs until nobody waits any more. A caller that joined g.waiting after
// a sync started is covered by the next iteration, never by the running one,
// because its transaction may have committed after that sync began.
func (g *groupSyncer) loop() {
	defer g.loops.Done()
	for {
		g.mu.Lock()
		round := g.waiting
		g.waiting = nil
		if round == nil {
			g.running = false
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		round.err = g.syncFn()
		if round.err != nil {
			round.err = fmt.Errorf("sync database: %w", round.err)
		}
		close(round.done)
	}
}

// close fails the callers still waiting for a round and waits for a
// running sync to end, so the database is never synced after it closed.
func (g *groupSyncer) close() {
	g.mu.Lock()
	g.closed = true
	if r := g.waiting; r != nil {
		g.waiting = nil
		r.err = errClosed
		close(r.done)
	}
	g.mu.Unlock()
	g.loops.Wait()
}

// badgerLogger routes Badger's log through slog, dropping its chatty INFO and
// DEBUG lines.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	if b.l != nil {
		b.l.Error("badger", "msg", fmt.Sprintf(f, a...))
	}
}
func (b badgerLogger) Warningf(f string, a ...any) {
	if b.l != nil {
		b.l.Warn("badger", "msg", fmt.Sprintf(f, a...))
	}
}
func (badgerLogger) Infof(string, ...any)  {}
func (badgerLogger) Debugf(string, ...any) {}
