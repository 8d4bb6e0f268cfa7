package throttle

import (
	"context"
	"testing"
	"time"
)

// fake records the delays a throttle asks for and drives its clock.
type fake struct {
	now    time.Time
	delays []time.Duration
}

func newFake() (*Throttle, *fake) {
	f := &fake{now: time.Unix(1_700_000_000, 0)}
	t := New(time.Second, 8*time.Second)
	t.Now = func() time.Time { return f.now }
	t.Sleep = func(_ context.Context, d time.Duration) { f.delays = append(f.delays, d) }
	return t, f
}

func TestDelaysGrowAndCap(t *testing.T) {
	th, f := newFake()
	for range 7 {
		th.Fail(context.Background(), "ip:192.0.2.1")
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second, 8 * time.Second}
	if len(f.delays) != len(want) {
		t.Fatalf("delays %v, want %v (the first failure is free)", f.delays, want)
	}
	for i := range want {
		if f.delays[i] != want[i] {
			t.Fatalf("delays %v, want %v", f.delays, want)
		}
	}
	if n := th.Failures("ip:192.0.2.1"); n != 7 {
		t.Errorf("Failures = %d, want 7", n)
	}
}

// TestWorstKeyCounts: an account guessed from many addresses is slowed
// down by the account's count, not each address's.
func TestWorstKeyCounts(t *testing.T) {
	th, f := newFake()
	for i := range 4 {
		th.Fail(context.Background(), "ip:198.51.100."+string(rune('1'+i)), "user:bob@example.org")
	}
	if got := f.delays[len(f.delays)-1]; got != 4*time.Second {
		t.Fatalf("last delay %v, want 4s from the account's 4 failures (delays %v)", got, f.delays)
	}
}

func TestSucceedAndForget(t *testing.T) {
	th, f := newFake()
	th.Fail(context.Background(), "k")
	th.Fail(context.Background(), "k")
	th.Succeed("k")
	if th.Failures("k") != 0 {
		t.Fatal("Succeed did not clear the failures")
	}
	th.Fail(context.Background(), "j")
	th.Fail(context.Background(), "j")
	f.now = f.now.Add(th.Forget + time.Second)
	if th.Failures("j") != 0 {
		t.Fatal("failures not forgotten after the quiet period")
	}
	f.delays = nil
	th.Fail(context.Background(), "j")
	if len(f.delays) != 0 {
		t.Fatalf("a first failure after forgetting waited %v", f.delays)
	}
}
