// Package throttle slows down repeated authentication failures. Each key (a
// client IP, an account) collects failures; from the second one on, the
// answer to a failed attempt is delayed, doubling each time up to a cap, so a
// password guesser gets a handful of tries a minute instead of thousands.
// Failures are forgotten after a quiet period or a success.
package throttle

import (
	"context"
	"sync"
	"time"
)

// Throttle tracks failures per key. The zero value is not usable; use New.
type Throttle struct {
	// Base is the delay after the second failure; Max caps the delay;
	// Forget is how long a key stays remembered after its last failure.
	Base, Max, Forget time.Duration
	// Now and Sleep are the clock and the waiting, replaceable in tests.
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration)

	mu sync.Mutex
	m  map[string]*entry
}

type entry struct {
	fails int
	last  time.Time
}

// New returns a throttle with base delay base and cap max.
func New(base, max time.Duration) *Throttle {
	return &Throttle{
		Base: base, Max: max, Forget: 15 * time.Minute,
		Now:   time.Now,
		Sleep: sleep,
		m:     map[string]*entry{},
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Failures returns the failures recorded for key.
func (t *Throttle) Failures(key string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.get(key)
	if e == nil {
		return 0
	}
	return e.fails
}

func (t *Throttle) get(key string) *entry {
	e := t.m[key]
	if e != nil && t.Now().Sub(e.last) > t.Forget {
		delete(t.m, key)
		return nil
	}
	return e
}

// Fail records a failure for each key and waits the delay the worst of them
// has earned before returning, so the failure reply comes late.
func (t *Throttle) Fail(ctx context.Context, keys ...string) {
	var d time.Duration
	t.mu.Lock()
	now := t.Now()
	if len(t.m) > 100000 {
		t.sweep(now)
	}
	for _, k := range keys {
		e := t.get(k)
		if e == nil {
			e = &entry{}
			t.m[k] = e
		}
		e.fails++
		e.last = now
		d = max(d, t.delay(e.fails))
	}
	t.mu.Unlock()
	if d > 0 {
		t.Sleep(ctx, d)
	}
}

// Succeed forgets key's failures.
func (t *Throttle) Succeed(key string) {
	t.mu.Lock()
	delete(t.m, key)
	t.mu.Unlock()
}

func (t *Throttle) delay(fails int) time.Duration {
	if fails < 2 {
		return 0
	}
	d := t.Base
	for i := 2; i < fails && d < t.Max; i++ {
		d *= 2
	}
	return min(d, t.Max)
}

// sweep drops forgotten keys so a scan from many addresses cannot grow the
// map without bound.
func (t *Throttle) sweep(now time.Time) {
	for k, e := range t.m {
		if now.Sub(e.last) > t.Forget {
			delete(t.m, k)
		}
	}
}
