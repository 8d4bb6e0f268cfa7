package badger

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	bdg "github.com/dgraph-io/badger/v4"
)

// openTemp opens a database in a fresh temporary directory and closes it when
// the test ends.
func openTemp(t *testing.T, o Options) (*DB, string) {
	t.Helper()
	dir := t.TempDir()
	db, err := Open(dir, o)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { db.Close() })
	return db, dir
}

// waitFor polls cond until it holds or a few seconds have passed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// recv receives from ch, failing the test if nothing arrives within a few
// seconds.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// waiters reports how many callers are registered for the next sync round.
// waiters is how many callers wait for the next round of g.
func waiters(g *groupSyncer) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.waiting == nil {
		return 0
	}
	return g.waiting.callers
}

// TestGroupSyncerSharesSyncs: many concurrent callers all succeed, share
// fewer syncs than there are callers, and each one is covered by a sync that
// started after it called.
func TestGroupSyncerSharesSyncs(t *testing.T) {
	const callers = 64
	var started, completed atomic.Int64
	g := newGroupSyncer(func() error {
		started.Add(1)
		time.Sleep(2 * time.Millisecond)
		completed.Add(1)
		return nil
	})
	defer g.close()

	var wg sync.WaitGroup
	errs := make(chan error, callers)
	start := make(chan struct{})
	for i := range callers {
		wg.Go(func() {
			<-start
			before := started.Load()
			if err := g.sync(); err != nil {
				errs <- fmt.Errorf("caller %d: %w", i, err)
				return
			}
			// A sync that started after this caller asked must have
			// completed: syncs run one at a time, so at least before+1 of
			// them have completed.
			if after := completed.Load(); after < before+1 {
				errs <- fmt.Errorf("caller %d released after %d completed syncs, but %d had started when it asked", i, after, before)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	n := started.Load()
	t.Logf("%d callers, %d syncs", callers, n)
	if n < 1 || n >= callers {
		t.Errorf("got %d underlying syncs for %d concurrent callers, want 1 <= n < %d", n, callers, callers)
	}
	if c := completed.Load(); c != n {
		t.Errorf("%d syncs started but %d completed", n, c)
	}
}

// TestGroupSyncerLateCallerWaitsForNextSync: a caller that arrives while a
// sync runs is not released by that sync (its commit may postdate the start
// of the sync), but by the next one.
func TestGroupSyncerLateCallerWaitsForNextSync(t *testing.T) {
	entered := make(chan int, 4) // sync number, when a sync starts
	gate := make(chan struct{})  // one receive lets one sync finish
	var calls atomic.Int64
	g := newGroupSyncer(func() error {
		entered <- int(calls.Add(1))
		<-gate
		return nil
	})
	defer g.close()

	first := make(chan error, 1)
	go func() { first <- g.sync() }()
	if n := recv(t, entered, "first sync to start"); n != 1 {
		t.Fatalf("first sync is number %d", n)
	}

	// Sync 1 is running and blocked. A second caller arrives now.
	second := make(chan error, 1)
	go func() { second <- g.sync() }()
	waitFor(t, "second caller to join the next round", func() bool { return waiters(g) == 1 })

	gate <- struct{}{} // let sync 1 finish
	if err := recv(t, first, "first caller to return"); err != nil {
		t.Fatalf("first caller: %v", err)
	}
	// Sync 2 must start for the second caller, and the second caller must
	// still be waiting while it runs.
	select {
	case n := <-entered:
		if n != 2 {
			t.Fatalf("second sync is number %d", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no second sync started for the caller that arrived during the first")
	}
	select {
	case err := <-second:
		t.Fatalf("second caller released by the sync that was running when it arrived (err %v)", err)
	default:
	}
	gate <- struct{}{} // let sync 2 finish
	if err := recv(t, second, "second caller to return"); err != nil {
		t.Fatalf("second caller: %v", err)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("%d syncs, want 2", n)
	}

	// Idle again: a new caller starts a fresh sync.
	third := make(chan error, 1)
	go func() { third <- g.sync() }()
	recv(t, entered, "third sync to start")
	gate <- struct{}{}
	if err := recv(t, third, "third caller to return"); err != nil {
		t.Fatalf("third caller: %v", err)
	}
}

// TestGroupSyncerLateCallersShareOneSync: everyone who arrives during a
// running sync is covered together by the single next one.
func TestGroupSyncerLateCallersShareOneSync(t *testing.T) {
	entered := make(chan struct{}, 8)
	gate := make(chan struct{})
	var calls atomic.Int64
	g := newGroupSyncer(func() error {
		calls.Add(1)
		entered <- struct{}{}
		<-gate
		return nil
	})
	defer g.close()

	first := make(chan error, 1)
	go func() { first <- g.sync() }()
	recv(t, entered, "first sync to start")

	const late = 10
	var registered sync.WaitGroup
	results := make(chan error, late)
	for range late {
		registered.Add(1)
		go func() {
			registered.Done()
			results <- g.sync()
		}()
	}
	registered.Wait()
	// All late callers must be in the waiting round before sync 1 ends.
	waitFor(t, "every late caller to join the next round", func() bool { return waiters(g) == late })

	gate <- struct{}{}
	if err := recv(t, first, "first caller to return"); err != nil {
		t.Fatal(err)
	}
	recv(t, entered, "second sync to start")
	close(gate) // let every further sync through
	for range late {
		if err := recv(t, results, "late caller to return"); err != nil {
			t.Fatal(err)
		}
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("%d syncs for 1 + %d late callers, want 2", n, late)
	}
}

func TestGroupSyncerError(t *testing.T) {
	errDisk := errors.New("disk on fire")
	var fail atomic.Bool
	fail.Store(true)
	g := newGroupSyncer(func() error {
		time.Sleep(time.Millisecond)
		if fail.Load() {
			return errDisk
		}
		return nil
	})
	defer g.close()

	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if err := g.sync(); !errors.Is(err, errDisk) {
				t.Errorf("sync() = %v, want an error wrapping %v", err, errDisk)
			}
		})
	}
	wg.Wait()

	// The error belongs to its round; the next round starts clean.
	fail.Store(false)
	if err := g.sync(); err != nil {
		t.Errorf("sync after recovery: %v", err)
	}
}

func TestGroupSyncerClosed(t *testing.T) {
	var calls atomic.Int64
	g := newGroupSyncer(func() error { calls.Add(1); return nil })
	if err := g.sync(); err != nil {
		t.Fatal(err)
	}
	g.close()
	if err := g.sync(); err == nil {
		t.Error("sync after close returned nil")
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("%d syncs, want 1 (none after close)", n)
	}
}

func TestOpenLocked(t *testing.T) {
	db, dir := openTemp(t, Options{})
	_, err := Open(dir, Options{})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open on %s: err = %v, want ErrLocked", dir, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	// Once the first is closed, the directory can be opened again.
	db2, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	if err := db2.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestOpenBadDir(t *testing.T) {
	file := t.TempDir() + "/not-a-dir"
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(file, Options{})
	if err == nil {
		t.Fatal("Open on a regular file succeeded")
	}
	if errors.Is(err, ErrLocked) {
		t.Errorf("Open on a regular file: %v, should not be ErrLocked", err)
	}
}

// TestSyncModes: every mode commits, syncs and finds the data after a reopen,
// also with concurrent writers.
func TestSyncModes(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode SyncMode
	}{
		{"group", SyncGroup},
		{"each", SyncEach},
		{"none", SyncNone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, dir := openTemp(t, Options{Sync: tc.mode})
			const writers = 8
			var wg sync.WaitGroup
			for i := range writers {
				wg.Go(func() {
					k := fmt.Appendf(nil, "t/%02d", i)
					if err := db.Update(func(txn *bdg.Txn) error { return txn.Set(k, k) }); err != nil {
						t.Error(err)
						return
					}
					if err := db.Sync(); err != nil {
						t.Errorf("Sync: %v", err)
					}
				})
			}
			wg.Wait()
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}

			db2, err := Open(dir, Options{Sync: tc.mode})
			if err != nil {
				t.Fatal(err)
			}
			defer db2.Close()
			for i := range writers {
				k := fmt.Appendf(nil, "t/%02d", i)
				err := db2.View(func(txn *bdg.Txn) error {
					_, err := txn.Get(k)
					return err
				})
				if err != nil {
					t.Errorf("key %s after reopen: %v", k, err)
				}
			}
		})
	}
}

func TestOpenInMemory(t *testing.T) {
	db, err := Open("", Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(txn *bdg.Txn) error { return txn.Set([]byte("k"), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	if err := db.Sync(); err != nil {
		t.Errorf("Sync in memory: %v", err)
	}
}

// TestCollectGarbageReturns: a collection ends once no file is worth
// rewriting, on disk and in memory (where there is no value log).
func TestCollectGarbageReturns(t *testing.T) {
	for _, inMemory := range []bool{false, true} {
		t.Run(fmt.Sprintf("inmemory=%v", inMemory), func(t *testing.T) {
			var db *DB
			if inMemory {
				var err error
				if db, err = Open("", Options{InMemory: true}); err != nil {
					t.Fatal(err)
				}
				defer db.Close()
			} else {
				db, _ = openTemp(t, Options{})
			}
			done := make(chan struct{})
			go func() {
				db.CollectGarbage()
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("CollectGarbage did not return")
			}
		})
	}
}

// TestCloseWithSyncInFlight: a Sync that is running (or queued) when Close is
// called must not run Badger's Sync on the closed database: Close waits for
// the running round, since badger.DB.Sync after badger.DB.Close dereferences
// the nil memtable and panics, killing the process during shutdown.
func TestCloseWithSyncInFlight(t *testing.T) {
	db, _ := openTemp(t, Options{})
	if err := db.Update(func(txn *bdg.Txn) error { return txn.Set([]byte("k"), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	// Hold the sync between "the round has started" and "bdg.DB.Sync
	// runs", so that Close lands exactly in that window.
	entered := make(chan struct{})
	gate := make(chan struct{})
	var panicked atomic.Value
	var once sync.Once
	bdb := db.DB
	db.syncer = newGroupSyncer(func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				panicked.Store(fmt.Sprint(r))
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		once.Do(func() { close(entered) })
		<-gate
		return bdb.Sync()
	})
	syncDone := make(chan error, 1)
	go func() { syncDone <- db.Sync() }()
	<-entered

	closeDone := make(chan error, 1)
	go func() { closeDone <- db.Close() }()
	// Close has begun once the syncer is marked closed; a correct one then
	// waits for the running sync. A wrong one returns: look for that for a
	// moment (a slow machine shortens the look, it never fails a correct
	// Close), then let the sync run, which panics on a closed Badger.
	syncer := db.syncer
	waitFor(t, "Close to reach the syncer", func() bool {
		syncer.mu.Lock()
		defer syncer.mu.Unlock()
		return syncer.closed
	})
	select {
	case err := <-closeDone:
		t.Fatalf("Close returned (%v) while a sync was still running", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(gate)
	<-syncDone
	if err := <-closeDone; err != nil {
		t.Errorf("Close: %v", err)
	}
	if p := panicked.Load(); p != nil {
		t.Errorf("bdg.DB.Sync ran after Close and panicked: %v", p)
	}
}

// TestSyncAfterClose: Sync on a closed DB returns (an error or nil) in every
// mode. SyncEach calls bdg.DB.Sync directly (store.go:108), which panics on
// a closed Badger (nil memtable, badger db.go:741).
func TestSyncAfterClose(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode SyncMode
		bug  bool
	}{
		{"group", SyncGroup, false},
		{"each", SyncEach, true},
		{"none", SyncNone, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db, _ := openTemp(t, Options{Sync: tc.mode})
			if err := db.Update(func(txn *bdg.Txn) error { return txn.Set([]byte("k"), []byte("v")) }); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Errorf("Sync after Close panicked: %v", r)
					}
				}()
				err := db.Sync()
				if tc.mode != SyncNone && err == nil {
					t.Errorf("Sync after Close = nil, want an error")
				}
			}()
		})
	}
}

func TestNumChunks(t *testing.T) {
	for _, tc := range []struct {
		size int64
		want uint32
	}{
		{0, 0},
		{1, 1},
		{BodyChunk - 1, 1},
		{BodyChunk, 1},
		{BodyChunk + 1, 2},
		{45 * BodyChunk, 45},
		{45*BodyChunk + 1, 46},
	} {
		if got := NumChunks(tc.size); got != tc.want {
			t.Errorf("NumChunks(%d) = %d, want %d", tc.size, got, tc.want)
		}
	}
}

// TestChunks: PutChunks, ChunkReader (in and out of a transaction) and
// DeleteChunks round-trip values of every interesting size, and leave
// neighbouring prefixes alone.
func TestChunks(t *testing.T) {
	db, _ := openTemp(t, Options{})
	neighbour := []byte("c/n")
	put := func(t *testing.T, prefix []byte, v []byte) int64 {
		t.Helper()
		var n int64
		err := db.Update(func(txn *bdg.Txn) error {
			var err error
			n, err = PutChunks(txn, prefix, iotest.HalfReader(bytes.NewReader(v)))
			return err
		})
		if err != nil {
			t.Fatalf("PutChunks: %v", err)
		}
		return n
	}
	countKeys := func(t *testing.T, prefix []byte) int {
		t.Helper()
		n := 0
		err := db.View(func(txn *bdg.Txn) error {
			it := txn.NewIterator(bdg.IteratorOptions{Prefix: prefix})
			defer it.Close()
			for it.Rewind(); it.Valid(); it.Next() {
				if len(it.Item().Key()) == len(prefix)+4 {
					n++
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	neighbourValue := bytes.Repeat([]byte("n"), 3*BodyChunk/2)
	put(t, neighbour, neighbourValue)

	for i, size := range []int{0, 1, ValueThreshold - 1, ValueThreshold, smallChunk - 1, smallChunk, smallChunk + 1,
		BodyChunk - 1, BodyChunk, BodyChunk + 1, 3*BodyChunk + 7} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			prefix := fmt.Appendf(nil, "c/%02d", i)
			v := make([]byte, size)
			for j := range v {
				v[j] = byte(j*7 + i)
			}
			if n := put(t, prefix, v); n != int64(size) {
				t.Errorf("PutChunks = %d bytes, want %d", n, size)
			}
			if n := countKeys(t, prefix); n != int(NumChunks(int64(size))) {
				t.Errorf("%d chunk keys, want %d", n, NumChunks(int64(size)))
			}
			if err := iotest.TestReader(ChunkReader(db, nil, prefix, int64(size)), v); err != nil {
				t.Errorf("ChunkReader(db): %v", err)
			}
			err := db.View(func(txn *bdg.Txn) error {
				got, err := io.ReadAll(ChunkReader(nil, txn, prefix, int64(size)))
				if err != nil {
					return err
				}
				if !bytes.Equal(got, v) {
					t.Errorf("ChunkReader(txn): %d bytes differ from %d written", len(got), len(v))
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(func(txn *bdg.Txn) error { return DeleteChunks(txn, prefix, int64(size)) }); err != nil {
				t.Fatalf("DeleteChunks: %v", err)
			}
			if n := countKeys(t, prefix); n != 0 {
				t.Errorf("%d chunk keys left after DeleteChunks", n)
			}
		})
	}
	got, err := io.ReadAll(ChunkReader(db, nil, neighbour, int64(len(neighbourValue))))
	if err != nil || !bytes.Equal(got, neighbourValue) {
		t.Errorf("neighbouring value damaged: %d bytes, err %v", len(got), err)
	}
}

func TestPutChunksReadError(t *testing.T) {
	db, _ := openTemp(t, Options{})
	errCut := errors.New("connection reset")
	r := io.MultiReader(bytes.NewReader(make([]byte, BodyChunk+10)), iotest.ErrReader(errCut))
	txn := db.NewTransaction(true)
	defer txn.Discard()
	n, err := PutChunks(txn, []byte("c/x"), r)
	if !errors.Is(err, errCut) {
		t.Errorf("PutChunks = %d, %v; want an error wrapping %v", n, err, errCut)
	}
}

// TestChunkReaderMissing: a chunk that is gone (value deleted under the
// reader) is an error, not a silent short read.
func TestChunkReaderMissing(t *testing.T) {
	db, _ := openTemp(t, Options{})
	prefix := []byte("c/m")
	err := db.Update(func(txn *bdg.Txn) error {
		_, err := PutChunks(txn, prefix, bytes.NewReader(make([]byte, 2*BodyChunk)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(txn *bdg.Txn) error { return txn.Delete(chunkKey(prefix, 1)) }); err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(ChunkReader(db, nil, prefix, 2*BodyChunk))
	if !errors.Is(err, bdg.ErrKeyNotFound) {
		t.Errorf("reading a value with a missing chunk: err = %v, want ErrKeyNotFound", err)
	}
}
