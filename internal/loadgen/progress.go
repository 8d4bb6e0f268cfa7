package loadgen

import (
	"sync"
	"time"
)

// startTicker calls tick about once a second with the value it returned
// last time and the time since then, until the returned function is called.
func startTicker(tick func(last int64, dt time.Duration) int64) func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		var last int64
		prev := time.Now()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				last = tick(last, now.Sub(prev))
				prev = now
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }
