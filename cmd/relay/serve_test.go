package main

import (
	"math"
	"runtime/debug"
	"testing"
)

// memory-limit sets the heap's soft limit; 0 and GOMEMLIMIT leave it alone.
// The collector runs at gcPercent unless GOGC is set.
func TestApplyMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	prevGC := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetMemoryLimit(prev); debug.SetGCPercent(prevGC) })
	for _, tc := range []struct {
		name   string
		env    string
		limit  int64
		before int64
		want   int64
	}{
		{"set", "", 200 << 20, math.MaxInt64, 200 << 20},
		{"zero keeps the runtime's", "", 0, math.MaxInt64, math.MaxInt64},
		{"GOMEMLIMIT wins", "1GiB", 200 << 20, 1 << 30, 1 << 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("GOMEMLIMIT", tc.env)
			debug.SetMemoryLimit(tc.before)
			applyMemoryLimit(tc.limit)
			if got := debug.SetMemoryLimit(-1); got != tc.want {
				t.Errorf("memory limit %d, want %d", got, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		env  string
		want int
	}{{"", gcPercent}, {"200", 100}} {
		t.Setenv("GOGC", tc.env)
		debug.SetGCPercent(100)
		applyMemoryLimit(0)
		if got := debug.SetGCPercent(100); got != tc.want {
			t.Errorf("GOGC=%q: GC percent %d, want %d", tc.env, got, tc.want)
		}
	}
}
