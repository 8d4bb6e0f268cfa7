package spool_test

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	storebadger "github.com/relaymail/relay/internal/store/badger"
	"github.com/relaymail/relay/spool"
)

// BenchmarkEnqueue measures durable enqueues (commit + sync) of 4 KiB
// messages on a real disk, with 1 or 32 concurrent writers, under group
// commit and one fsync per caller. Compare msgs/s across sync modes: with 32
// writers group commit should win by a large factor.
func BenchmarkEnqueue(b *testing.B) {
	body := randBytes(4<<10, 42)
	for _, writers := range []int{1, 32} {
		for _, mode := range []struct {
			name string
			sync storebadger.SyncMode
		}{
			{"group", storebadger.SyncGroup},
			{"each", storebadger.SyncEach},
		} {
			b.Run(fmt.Sprintf("writers=%d/sync=%s", writers, mode.name), func(b *testing.B) {
				dir := b.TempDir()
				db, err := storebadger.Open(dir, storebadger.Options{Sync: mode.sync})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { db.Close() })
				s := spool.New(storebadger.New(db, nil), nil)
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()

				// Exactly `writers` goroutines share b.N enqueues.
				var next atomic.Int64
				var wg sync.WaitGroup
				start := make(chan struct{})
				for range writers {
					wg.Go(func() {
						<-start
						for next.Add(1) <= int64(b.N) {
							m := &spool.Message{
								ID:    s.NewID(),
								From:  "sender@example.org",
								Rcpts: []spool.Recipient{{Address: "rcpt@example.net"}},
							}
							if err := s.Enqueue(m, bytes.NewReader(body)); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				b.ResetTimer()
				close(start)
				wg.Wait()
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}
