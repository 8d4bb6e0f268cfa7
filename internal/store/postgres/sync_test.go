package postgres

import (
	"context"
	"sync"
	"testing"

	"github.com/relaymail/relay/internal/testkit/pgtest"
)

// TestSynchronousCommit: every connection the store commits on has
// synchronous_commit on, so a commit that returned is on disk, which the
// relay's 250 promises; the server it runs against has fsync on.
func TestSynchronousCommit(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, pgtest.URL(t), Options{MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Hold several connections at once, so that each is asked.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			tx, err := s.pool.Begin(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			defer tx.Rollback(ctx)
			for setting, want := range map[string]string{"synchronous_commit": "on", "fsync": "on"} {
				var got string
				if err := tx.QueryRow(ctx, "SHOW "+setting).Scan(&got); err != nil || got != want {
					t.Errorf("%s = %q, %v; want %q", setting, got, err, want)
				}
			}
		})
	}
	wg.Wait()
}
