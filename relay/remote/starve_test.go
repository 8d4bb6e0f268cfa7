package remote_test

import (
	"context"
	"testing"
	"time"

	"github.com/relaymail/relay/relay/deliver"
	"github.com/relaymail/relay/relay/remote"
	"github.com/relaymail/relay/spool"
)

// TestSlowDestinationDoesNotStarve guards the per-destination limit: a
// destination that hangs holds its own connections, never every worker of
// the delivery loop, so mail for another destination still goes out.
func TestSlowDestinationDoesNotStarve(t *testing.T) {
	t.Parallel()
	q := newQueue(t)
	slow := newScripted(t, script{hangRcpt: true})
	fast := newScripted(t, script{})
	tr := newTransport(t, q, remote.Config{
		Transports:     map[string]string{"slow.test": slow.addr, "fast.test": fast.addr},
		PerDestination: 2,
		SlotWait:       100 * time.Millisecond,
		CommandTimeout: time.Minute, // the slow server is never given up on here
	})
	// Four workers, eight messages for the slow destination, queued first.
	for range 8 {
		q.add(t, sample, nil, "bob@slow.test")
	}
	m := q.add(t, sample, nil, "carol@fast.test")
	l := deliver.New(deliver.Config{Workers: 4}, q.sp, nil, tr, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done }) // cancelling closes the hanging connections

	deadline := time.Now().Add(10 * time.Second)
	for len(fast.delivered()) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("mail for a healthy destination not delivered in 10s while another hangs (slow server has %d connections)", slow.connections())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The messages that waited for the slow destination were not charged
	// an attempt.
	ms, err := q.sp.List()
	if err != nil {
		t.Fatal(err)
	}
	waiting := 0
	for _, x := range ms {
		if x.ID == m.ID {
			continue
		}
		if r := x.Rcpts[0]; r.State == spool.Pending && r.Attempts == 0 {
			waiting++
		}
	}
	if waiting < 6 {
		t.Errorf("%d slow-destination messages waiting uncharged, want at least 6 of 8", waiting)
	}
}
