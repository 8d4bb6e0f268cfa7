package deliver_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/relaymail/relay/internal/testkit"
	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/relay/deliver"
	"github.com/relaymail/relay/spool"
)

// BenchmarkLocalDelivery measures the delivery loop filing queued 4 KiB
// messages into mailboxes on a real Badger database, from the queue to
// committed INBOX entries: with every message to one account (the worst
// case for contention on one mailbox) and spread over ten.
func BenchmarkLocalDelivery(b *testing.B) {
	for _, accounts := range []int{1, 10} {
		b.Run(fmt.Sprintf("accounts=%d", accounts), func(b *testing.B) {
			engine, _ := testkit.Badger(b, nil)
			sp := spool.New(engine, time.Now)
			boxes := mailbox.New(engine, time.Now)
			users := make([]string, accounts)
			for i := range users {
				users[i] = fmt.Sprintf("user%d@example.test", i)
				if err := boxes.AddUser(users[i], "pw"); err != nil {
					b.Fatal(err)
				}
			}
			// About 4 KiB: a header, then text.
			body := append([]byte("From: <sender@example.org>\r\nTo: <user@example.test>\r\nSubject: bench\r\n"+
				"Date: Tue, 01 Dec 2026 22:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n"),
				bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n"), 62)...)
			for i := range b.N {
				m := &spool.Message{ID: sp.NewID(), From: "sender@example.org",
					Rcpts: []spool.Recipient{{Address: users[i%accounts]}}}
				if err := sp.Enqueue(m, bytes.NewReader(body)); err != nil {
					b.Fatal(err)
				}
			}
			l := deliver.New(deliver.Config{Domains: []string{"example.test"}, Workers: 32}, sp, boxes, nil, nil)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			b.ReportAllocs()
			b.ResetTimer()
			go func() {
				defer close(done)
				l.Run(ctx)
			}()
			for {
				n, err := sp.Count()
				if err != nil {
					b.Fatal(err)
				}
				if n == 0 {
					break
				}
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			cancel()
			<-done
		})
	}
}
