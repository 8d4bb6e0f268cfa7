package ratelimit

import (
	"fmt"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestAllow(t *testing.T) {
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	k := New(60, 3) // one a second, three at once
	k.SetClock(c.now)
	for i := range 3 {
		if !k.Allow("a") {
			t.Fatalf("event %d of the burst refused", i)
		}
	}
	if k.Allow("a") {
		t.Error("fourth event at once allowed")
	}
	if !k.Allow("b") {
		t.Error("another key refused")
	}
	c.t = c.t.Add(time.Second)
	if !k.Allow("a") {
		t.Error("refused after the refill")
	}
	if k.Allow("a") {
		t.Error("two events after one second's refill")
	}
}

func TestZeroAllowsAll(t *testing.T) {
	var nilK *Keyed
	k := New(0, 0)
	for range 1000 {
		if !k.Allow("a") || !nilK.Allow("a") {
			t.Fatal("refused without a limit")
		}
	}
}

// TestBounded: a flood of keys does not grow the map past maxKeys.
func TestBounded(t *testing.T) {
	k := New(1, 1)
	for i := range maxKeys + 10 {
		k.Allow(fmt.Sprint(i))
	}
	if n := len(k.keys); n > maxKeys {
		t.Errorf("%d keys remembered, want at most %d", n, maxKeys)
	}
}
