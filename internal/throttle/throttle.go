// Package throttle slows down repeated authentication failures. Each key (a
// client IP, an account) collects failures; from the second one on, the
// answer to a failed attempt is delayed, doubling each time up to a cap, so a
// password guesser gets a handful of tries a minute instead of thousands.
// After Limit failures a key is blocked outright for Lockout: the caller
// refuses the attempt without checking the password (Blocked). Failures are
// forgotten after a quiet period or a success.
package throttle

import (
	"context"
	"net/netip"
	"sync"
	"time"
)

// Defaults of New for the temporary refusal.
const (
	DefaultLimit   = 10
	DefaultLockout = 5 * time.Minute
)

// maxKeys bounds the keys remembered at once. A guesser cycling through
// addresses or user names could otherwise grow the map without end between
// two sweeps; beyond the bound arbitrary keys are dropped, which can only
// shorten someone's delay, never lengthen it.
const maxKeys = 100_000

// maxKeyLen bounds one key: user names come from the network (a 4 KiB IMAP
// literal), and no account address is longer than 320 bytes (RFC 5321
// §4.5.3.1: 64-byte local part, 255-byte domain).
const maxKeyLen = 5 + 320

// Throttle tracks failures per key. The zero value is not usable; use New.
type Throttle struct {
	// Base is the delay after the second failure; Max caps the delay;
	// Forget is how long a key stays remembered after its last failure.
	Base, Max, Forget time.Duration
	// Limit is the number of failures, each less than Forget after the
	// previous one, from which on a key is Blocked; 0 never blocks.
	// Lockout is how long a block lasts after the key's last failure.
	Limit   int
	Lockout time.Duration
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

// New returns a throttle with base delay base and cap max, which blocks a
// key for DefaultLockout after DefaultLimit failures.
func New(base, max time.Duration) *Throttle {
	return &Throttle{
		Base: base, Max: max, Forget: 15 * time.Minute,
		Limit: DefaultLimit, Lockout: DefaultLockout,
		Now:   time.Now,
		Sleep: sleep,
		m:     map[string]*entry{},
	}
}

// IPKey is the key of a client address: "ip:" and the IPv4 address, or the
// IPv6 /64 it is in, since one IPv6 subscriber usually holds a whole /64
// and could otherwise take a fresh key for every attempt.
func IPKey(ip netip.Addr) string {
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.WithZone("").Prefix(64)
		return "ip:" + p.String()
	}
	return "ip:" + ip.String()
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
	e := t.get(clip(key))
	if e == nil || t.Now().Sub(e.last) > t.Forget {
		return 0
	}
	return e.fails
}

// keep is how long an entry matters: for its delay and for its block.
func (t *Throttle) keep() time.Duration { return max(t.Forget, t.Lockout) }

func (t *Throttle) get(key string) *entry {
	e := t.m[key]
	if e != nil && t.Now().Sub(e.last) > t.keep() {
		delete(t.m, key)
		return nil
	}
	return e
}

func clip(key string) string {
	if len(key) > maxKeyLen {
		return key[:maxKeyLen]
	}
	return key
}

// Fail records a failure for each key and waits the delay the worst of them
// has earned before returning, so the failure reply comes late.
func (t *Throttle) Fail(ctx context.Context, keys ...string) {
	var d time.Duration
	t.mu.Lock()
	now := t.Now()
	if len(t.m) >= maxKeys {
		t.sweep(now)
	}
	for _, k := range keys {
		k = clip(k)
		e := t.get(k)
		if e == nil {
			e = &entry{}
			t.m[k] = e
		} else if now.Sub(e.last) > t.Forget {
			// Remembered only for its block: the count starts over.
			e.fails = 0
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

// Blocked reports whether any of keys has reached Limit failures and had
// its last one less than Lockout ago; retryAfter is when the longest of
// those blocks ends. A caller refuses a blocked attempt without looking at
// the credentials, so that a guesser learns nothing more until then.
func (t *Throttle) Blocked(keys ...string) (blocked bool, retryAfter time.Duration) {
	if t.Limit <= 0 {
		return false, 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.Now()
	for _, k := range keys {
		e := t.get(clip(k))
		if e == nil || e.fails < t.Limit {
			continue
		}
		if left := e.last.Add(t.Lockout).Sub(now); left > 0 {
			blocked = true
			retryAfter = max(retryAfter, left)
		}
	}
	return blocked, retryAfter
}

// Succeed forgets key's failures.
func (t *Throttle) Succeed(key string) {
	t.mu.Lock()
	delete(t.m, clip(key))
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

// sweep drops forgotten keys, and arbitrary others while the map is still
// at its bound, so a scan from many addresses cannot grow it without end.
func (t *Throttle) sweep(now time.Time) {
	for k, e := range t.m {
		if now.Sub(e.last) > t.keep() {
			delete(t.m, k)
		}
	}
	for k := range t.m {
		if len(t.m) < maxKeys*9/10 {
			break
		}
		delete(t.m, k)
	}
}

// Len returns the number of keys remembered.
func (t *Throttle) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}
