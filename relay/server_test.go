package relay

import (
	"sync/atomic"
	"testing"
	"time"
)

// every runs its function on each tick and returns once stop is closed.
func TestEvery(t *testing.T) {
	var n atomic.Int32
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		every(5*time.Millisecond, stop, func() { n.Add(1) })
		close(done)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for n.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("fn ran %d times in 5 s at a 5 ms interval", n.Load())
		}
		time.Sleep(time.Millisecond)
	}
	close(stop)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("every did not return after stop was closed")
	}
}
