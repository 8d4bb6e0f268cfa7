package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/relaymail/relay/internal/diskspace"
	"github.com/relaymail/relay/internal/store/badger"
	"github.com/relaymail/relay/internal/store/postgres"
	"github.com/relaymail/relay/internal/store/snapshot"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

// Storage is an open storage engine: the one place that knows which engine
// runs. Everything else uses it through spool.Backend and mailbox.Backend.
type Storage struct {
	Engine
	// Badger is the embedded engine's database, nil on PostgreSQL: the
	// server's housekeeping (garbage collection, page release, free
	// space) applies to it only.
	Badger *badger.DB
	// Postgres is the shared engine, nil on Badger.
	Postgres *postgres.Store
}

// Engine is what both engines provide.
type Engine interface {
	spool.Backend
	mailbox.Backend
	snapshot.Source
	snapshot.Target
	Close() error
}

// EngineName names the engine that runs ("badger" or "postgres").
func (s *Storage) EngineName() string {
	if s.Postgres != nil {
		return "postgres"
	}
	return "badger"
}

// IsPostgres reports whether a --store value names a PostgreSQL database.
func IsPostgres(store string) bool {
	return strings.HasPrefix(store, "postgres://") || strings.HasPrefix(store, "postgresql://")
}

// StoreOptions tune OpenStorage.
type StoreOptions struct {
	// Create makes the store when there is none: the Badger database in
	// the data directory, or a PostgreSQL store's schema. Without it a
	// missing database is an error that names the directory (a relative
	// --data run from the wrong place).
	Create bool
	// Migrate brings a PostgreSQL schema to the current version (serve
	// does; the other subcommands refuse an old one).
	Migrate bool
	Logger  *slog.Logger
}

// ErrNoData is returned by OpenStorage for a data directory without a
// database, when it was not to be created.
var ErrNoData = errors.New("no relay data")

// OpenStorage opens the store that the store setting names: "badger" (or
// empty) for the embedded database in dataDir, a postgres:// URL for a
// shared one.
func OpenStorage(ctx context.Context, store, dataDir string, o StoreOptions) (*Storage, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if IsPostgres(store) {
		pg, err := postgres.Open(ctx, store, postgres.Options{Logger: log, NoMigrate: !o.Migrate && !o.Create})
		if err != nil {
			return nil, err
		}
		return &Storage{Engine: pg, Postgres: pg}, nil
	}
	if store != "" && store != "badger" {
		return nil, fmt.Errorf("store: %q is neither badger nor a postgres:// URL", store)
	}
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, fmt.Errorf("data directory %s: %w", dataDir, err)
	}
	if _, err := os.Stat(filepath.Join(abs, "MANIFEST")); err != nil && !o.Create {
		return nil, fmt.Errorf("%w in %s: point --data (or RELAY_DATA) at the data directory relay serve uses", ErrNoData, abs)
	}
	if _, err := os.Stat(abs); err == nil {
		if err := CheckSpace(abs); err != nil {
			return nil, err
		}
	}
	db, err := badger.Open(abs, badger.Options{Logger: log})
	if errors.Is(err, badger.ErrLocked) {
		return nil, fmt.Errorf("the database in %s is in use by another process: is a relay serve running there?", abs)
	}
	if err != nil {
		return nil, err
	}
	return &Storage{Engine: badger.New(db, nil), Badger: db}, nil
}

// Reserve is the free space the store needs on the data directory's
// filesystem to keep writing safely: Badger's, or nothing for PostgreSQL,
// whose data is elsewhere.
func (s *Storage) Reserve() uint64 {
	if s.Badger == nil {
		return 0
	}
	return badger.Reserve
}

// CheckSpace refuses to open the database in dir when its filesystem has
// less free than the store's reserve, with a message that says what to do.
// Badger writes into the files it makes at open before anything can back
// them, which on a full disk faults (SIGBUS) instead of failing; whatever
// opens the database checks this first.
func CheckSpace(dir string) error {
	if err := diskspace.Need(dir, badger.Reserve); err != nil {
		return fmt.Errorf("not enough free disk space to open the database: %w; free space on that filesystem, or move the data directory to one with room (--data)", err)
	}
	return nil
}

// pruneEvery is how often the server deletes expired events from a
// PostgreSQL store (Badger expires them by itself).
const pruneEvery = time.Hour

// Backup writes a consistent, engine-neutral snapshot of st to w (relay
// store backup), while the server runs.
func Backup(ctx context.Context, st *Storage, w io.Writer) error {
	return st.Snapshot(ctx, func(r snapshot.Reader) error {
		_, err := snapshot.Write(w, r, st.EngineName(), time.Now())
		return err
	})
}
