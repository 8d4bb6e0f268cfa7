// Package testkit opens stores for tests: the embedded engine in a
// temporary directory, and the PostgreSQL engine on a throwaway cluster
// (internal/testkit/pgtest), each closed when the test ends. Only tests
// import it.
package testkit

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaymail/relay/internal/store/badger"
	"github.com/relaymail/relay/internal/store/postgres"
	"github.com/relaymail/relay/internal/testkit/pgtest"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

// Engine is a store as tests use it.
type Engine interface {
	spool.Backend
	mailbox.Backend
	Close() error
}

// Badger opens the embedded engine on a fresh database in a temporary
// directory; now is its clock (nil for time.Now).
func Badger(tb testing.TB, now func() time.Time) (*badger.Store, *badger.DB) {
	tb.Helper()
	return BadgerAt(tb, tb.TempDir(), now)
}

// BadgerAt opens the embedded engine on the database in dir, closed when
// the test ends unless closed before.
func BadgerAt(tb testing.TB, dir string, now func() time.Time) (*badger.Store, *badger.DB) {
	tb.Helper()
	db, err := badger.Open(dir, badger.Options{})
	if err != nil {
		tb.Fatalf("open database %s: %v", dir, err)
	}
	tb.Cleanup(func() { db.Close() })
	return badger.New(db, now), db
}

// Postgres opens the shared engine on a fresh database of the test binary's
// throwaway cluster; it skips the test when PostgreSQL is not installed,
// unless RELAY_POSTGRES=1. Packages that use it call pgtest.Main from
// TestMain.
func Postgres(tb testing.TB, now func() time.Time) *postgres.Store {
	tb.Helper()
	s, err := postgres.Open(context.Background(), pgtest.URL(tb), postgres.Options{Now: now})
	if err != nil {
		tb.Fatalf("open PostgreSQL store: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// Engines are the engines a test runs on, by name, each opened fresh.
var Engines = []struct {
	Name string
	Open func(tb testing.TB, now func() time.Time) Engine
}{
	{"badger", func(tb testing.TB, now func() time.Time) Engine { s, _ := Badger(tb, now); return s }},
	{"postgres", func(tb testing.TB, now func() time.Time) Engine { return Postgres(tb, now) }},
}

var deliverSeq atomic.Int64

// Deliver files body into the INBOX of each of users as local delivery
// does: a queued message whose recipients are marked delivered with a
// filing, in one update of e.
func Deliver(e Engine, body []byte, date time.Time, users ...string) error {
	ctx := context.Background()
	m := &spool.Message{ID: fmt.Sprintf("01TESTKIT%08d%06d", os.Getpid()%1e8, deliverSeq.Add(1)), Arrived: date, From: "sender@example.org"}
	for _, u := range users {
		m.Rcpts = append(m.Rcpts, spool.Recipient{Address: u, State: spool.Pending, NextAttempt: date})
	}
	if err := e.Enqueue(ctx, m, bytes.NewReader(body), spool.Event{Time: date, Event: spool.EventAccepted, ID: m.ID}); err != nil {
		return err
	}
	return e.Update(ctx, m.ID, nil, func(m *spool.Message) (spool.Effects, error) {
		for i := range m.Rcpts {
			m.Rcpts[i].State = spool.Delivered
		}
		return spool.Effects{File: &spool.Filing{Accounts: users, Date: date}}, nil
	})
}
