// Package ratelimit limits how often each key (a client address, an account)
// may do something, such as send a message: a token bucket per key from
// golang.org/x/time/rate, with idle keys forgotten so that a flood of
// addresses cannot grow memory without bound.
package ratelimit

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// maxKeys bounds the keys remembered; past it, the idlest half is dropped
// (a dropped key starts again with a full bucket, which errs on the side of
// the client).
const maxKeys = 100000

// Keyed is a set of per-key limits. The zero value allows everything.
type Keyed struct {
	perMinute int
	burst     int
	now       func() time.Time

	mu   sync.Mutex
	keys map[string]*entry
}

type entry struct {
	lim  *rate.Limiter
	last time.Time
}

// New allows each key perMinute events a minute on average, and up to burst
// at once (burst 0 means perMinute). perMinute 0 or less allows everything.
func New(perMinute, burst int) *Keyed {
	if burst <= 0 {
		burst = perMinute
	}
	return &Keyed{perMinute: perMinute, burst: burst, now: time.Now, keys: map[string]*entry{}}
}

// SetClock replaces the clock (tests).
func (k *Keyed) SetClock(now func() time.Time) { k.now = now }

// Allow reports whether key may act now, and takes a token if so.
func (k *Keyed) Allow(key string) bool {
	if k == nil || k.perMinute <= 0 {
		return true
	}
	now := k.now()
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.keys[key]
	if e == nil {
		if len(k.keys) >= maxKeys {
			k.forget(now)
		}
		e = &entry{lim: rate.NewLimiter(rate.Limit(float64(k.perMinute)/60), k.burst)}
		k.keys[key] = e
	}
	e.last = now
	return e.lim.AllowN(now, 1)
}

// forget shrinks the map to half: first the keys idle for a whole refill
// period, whose buckets are full again so that dropping them changes
// nothing, then arbitrary ones.
func (k *Keyed) forget(now time.Time) {
	full := time.Duration(float64(k.burst) / float64(k.perMinute) * float64(time.Minute))
	for key, e := range k.keys {
		if now.Sub(e.last) >= full {
			delete(k.keys, key)
		}
	}
	for key := range k.keys {
		if len(k.keys) <= maxKeys/2 {
			break
		}
		delete(k.keys, key)
	}
}
