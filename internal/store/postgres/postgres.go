// Package postgres is the storage engine for several relay nodes sharing one
// PostgreSQL database. It implements spool.Backend and mailbox.Backend on
// relational tables (schema.go), migrated at open.
//
// Invariants:
//   - Every operation is one transaction at READ COMMITTED; rows that an
//     operation reads to change are locked (SELECT ... FOR UPDATE, or an
//     UPDATE that returns), so concurrent nodes serialize on the records they
//     share, and serialization failures or deadlocks are retried
//     (store.Retry).
//   - A commit is durable when it returns: the server runs with
//     synchronous_commit on, so an enqueue that returned may be acknowledged.
//   - Queued work is claimed with FOR UPDATE SKIP LOCKED and a lease (node,
//     epoch, until); a claim moves the message's due time to the lease's end,
//     so claimers never scan what others hold, and a node that dies loses
//     its leases when they run out. Each claim increments the epoch, and every
//     write that carries a lease checks it (fencing): a node that wakes up
//     after its lease was taken over cannot overwrite newer state.
//   - UIDNEXT is advanced in the transaction of the insert that uses it, under
//     the mailbox row's lock, so UIDs are exact and never reused across nodes.
//   - Change notifications go through LISTEN/NOTIFY, right after the commit,
//     coalesced (notify.go); every node listens and wakes its delivery loop,
//     its `queue tail -f` followers and its IMAP sessions.
package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relaymail/relay/internal/store"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

// Store is an open PostgreSQL store.
type Store struct {
	pool *pgxpool.Pool
	url  string
	node string
	log  *slog.Logger
	now  func() time.Time

	mu       sync.Mutex
	queueCh  chan struct{}
	eventsCh chan struct{}
	onChange func(user string, ev mailbox.Event)

	noteMu       sync.Mutex
	pending      notes // guarded by noteMu
	notifyKick   chan struct{}
	notifierDone chan struct{}

	stop    context.CancelFunc
	stopped chan struct{}
}

// Options tune Open.
type Options struct {
	// Node names this node in leases; empty makes one from the host name
	// and process ID.
	Node string
	// Logger receives the engine's warnings (lost listener connection).
	Logger *slog.Logger
	// NoMigrate leaves the schema as it is (relay store migrate does it
	// by hand); Open then fails on a schema that is not current.
	NoMigrate bool
	// SkipSchemaCheck opens with NoMigrate without checking the schema's
	// version (relay store migrate, which migrates it next).
	SkipSchemaCheck bool
	// MaxConns bounds the connection pool (default 20).
	MaxConns int32
	// Now is the clock of lease renewals and event expiry (nil for
	// time.Now); tests pass a fake one.
	Now func() time.Time
}

// Open connects to the database at url (postgres://...), migrates its schema
// and starts listening for other nodes' changes.
func Open(ctx context.Context, url string, o Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("store URL: %w", err)
	}
	cfg.MaxConns = o.MaxConns
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 20
	}
	// A 250 means committed: never let a session weaken it.
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	cfg.ConnConfig.RuntimeParams["application_name"] = "relay"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", redact(url), err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to %s: %w", redact(url), mapErr(err))
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Store{pool: pool, url: url, node: o.Node, log: log, now: o.Now,
		queueCh: make(chan struct{}), eventsCh: make(chan struct{}), stopped: make(chan struct{}),
		notifyKick: make(chan struct{}, 1), notifierDone: make(chan struct{})}
	if s.node == "" {
		s.node = nodeName()
	}
	if o.NoMigrate {
		if err := s.checkSchema(ctx); err != nil && !o.SkipSchemaCheck {
			pool.Close()
			return nil, err
		}
	} else if _, _, err := s.Migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("migrate schema: %w", err)
	}
	lctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	ready := make(chan struct{})
	go s.listen(lctx, ready)
	go s.notifier(lctx)
	select {
	case <-ready:
	case <-ctx.Done():
	}
	return s, nil
}

// Node is the name this node claims work under.
func (s *Store) Node() string { return s.node }

// Close stops listening and closes the connections.
func (s *Store) Close() error {
	// What is still pending goes out first: other nodes may wait on it.
	s.noteMu.Lock()
	n := s.pending
	s.pending = notes{}
	s.noteMu.Unlock()
	s.send(context.Background(), n)
	s.stop()
	<-s.stopped
	<-s.notifierDone
	s.pool.Close()
	return nil
}

// Sync is a no-op: every commit is already durable.
func (s *Store) Sync() error { return nil }

func (s *Store) checkSchema(ctx context.Context) error {
	var v int
	err := s.pool.QueryRow(ctx, "SELECT version FROM schema_version").Scan(&v)
	if err != nil || v != len(migrations) {
		return fmt.Errorf("the database's schema is not current (version %d, want %d): run relay store migrate", v, len(migrations))
	}
	return nil
}

func nodeName() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b))
}

// redact drops a password from a URL for messages.
func redact(url string) string {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil || cfg.Password == "" {
		return url
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}

// tx runs fn in a transaction, retrying serialization failures and
// deadlocks.
func (s *Store) tx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return store.Retry(ctx, func() error {
		return mapErr(pgx.BeginFunc(ctx, s.pool, fn))
	})
}

// mapErr turns PostgreSQL's errors into the seam's neutral ones, keeping the
// original in the chain for the log.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "40001", pe.Code == "40P01":
			return errors.Join(store.ErrConflict, err)
		case pe.Code == "53100":
			return errors.Join(store.ErrNoSpace, err)
		case pe.Code == "54000":
			return errors.Join(store.ErrTooBig, err)
		case pe.Code[:2] == "08", pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03", pe.Code[:2] == "53":
			return errors.Join(store.ErrUnavailable, err)
		}
		return err
	}
	var ne net.Error
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) || errors.As(err, &ne) || pgconn.SafeToRetry(err) {
		return errors.Join(store.ErrUnavailable, err)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return err
	}
	if pgconn.Timeout(err) {
		return errors.Join(store.ErrUnavailable, err)
	}
	return err
}

// signal closes *ch and replaces it, waking its waiters.
func (s *Store) signal(ch *chan struct{}) {
	s.mu.Lock()
	close(*ch)
	*ch = make(chan struct{})
	s.mu.Unlock()
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

var (
	_ spool.Backend   = (*Store)(nil)
	_ mailbox.Backend = (*Store)(nil)
)
