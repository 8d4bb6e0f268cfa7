package main

import (
	"math"
	"runtime/debug"
	"testing"
)

// memory-limit sets the heap's soft limit; 0 and GOMEMLIMIT leave it alone.
func TestApplyMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
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
}
