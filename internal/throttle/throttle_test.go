package throttle

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
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

// TestBlockedAfterLimit guards the temporary refusal: a key is not blocked
// before Limit failures, is blocked from the Limit-th on for Lockout after
// its last failure, and the block ends then.
func TestBlockedAfterLimit(t *testing.T) {
	th, f := newFake()
	th.Limit, th.Lockout = 3, time.Minute
	for i := range 3 {
		if b, _ := th.Blocked("ip:192.0.2.1"); b {
			t.Fatalf("blocked after %d failures, limit 3", i)
		}
		th.Fail(context.Background(), "ip:192.0.2.1")
	}
	b, retry := th.Blocked("ip:192.0.2.1")
	if !b || retry != time.Minute {
		t.Fatalf("after 3 failures: Blocked = %v, %v; want true, 1m", b, retry)
	}
	f.now = f.now.Add(40 * time.Second)
	if b, retry := th.Blocked("ip:192.0.2.1"); !b || retry != 20*time.Second {
		t.Fatalf("40s later: Blocked = %v, %v; want true, 20s", b, retry)
	}
	f.now = f.now.Add(21 * time.Second)
	if b, _ := th.Blocked("ip:192.0.2.1"); b {
		t.Fatal("still blocked after the lockout")
	}
	// The count is still there (no quiet period of Forget): the next
	// failure blocks again at once.
	th.Fail(context.Background(), "ip:192.0.2.1")
	if b, _ := th.Blocked("ip:192.0.2.1"); !b {
		t.Fatal("a failure right after a lockout did not block again")
	}
}

// TestBlockedWorstKey: one blocked key blocks the attempt, whichever it
// is, and retryAfter is the longest block among the keys.
func TestBlockedWorstKey(t *testing.T) {
	th, f := newFake()
	th.Limit, th.Lockout = 2, time.Minute
	th.Fail(context.Background(), "user:bob@example.org")
	th.Fail(context.Background(), "user:bob@example.org")
	f.now = f.now.Add(10 * time.Second)
	th.Fail(context.Background(), "ip:198.51.100.7")
	th.Fail(context.Background(), "ip:198.51.100.7")
	if b, _ := th.Blocked("ip:203.0.113.9", "user:carol@example.org"); b {
		t.Fatal("keys without failures are blocked")
	}
	b, retry := th.Blocked("ip:203.0.113.9", "user:bob@example.org")
	if !b || retry != 50*time.Second {
		t.Fatalf("Blocked(other ip, bob) = %v, %v; want true, 50s", b, retry)
	}
	if b, retry := th.Blocked("ip:198.51.100.7", "user:bob@example.org"); !b || retry != time.Minute {
		t.Fatalf("Blocked(both) = %v, %v; want the longer, 1m", b, retry)
	}
	th.Succeed("user:bob@example.org")
	if b, _ := th.Blocked("user:bob@example.org"); b {
		t.Fatal("Succeed did not lift the block")
	}
}

// TestBlockedCountStartsOver: failures spread out by more than Forget do
// not add up to a block.
func TestBlockedCountStartsOver(t *testing.T) {
	th, f := newFake()
	th.Limit, th.Lockout, th.Forget = 3, 30*time.Minute, 10*time.Minute
	for range 5 {
		th.Fail(context.Background(), "k")
		f.now = f.now.Add(11 * time.Minute)
	}
	if b, _ := th.Blocked("k"); b {
		t.Fatalf("blocked by failures 11 minutes apart (Forget 10m); count %d", th.Failures("k"))
	}
	th.Limit = 0
	for range 5 {
		th.Fail(context.Background(), "j")
	}
	if b, _ := th.Blocked("j"); b {
		t.Fatal("Limit 0 blocked")
	}
}

// TestKeysBounded guards the memory bound: failures under ever new keys
// (a scan of user names) keep the map at its bound, and very long keys are
// stored clipped.
func TestKeysBounded(t *testing.T) {
	th, _ := newFake()
	th.Base = 0
	for i := range maxKeys + 5000 {
		th.Fail(context.Background(), "user:"+strconv.Itoa(i))
	}
	if n := th.Len(); n > maxKeys {
		t.Fatalf("%d keys remembered, bound %d", n, maxKeys)
	}
	long := "user:" + strings.Repeat("x", 10000)
	th.Fail(context.Background(), long)
	th.mu.Lock()
	for k := range th.m {
		if len(k) > maxKeyLen {
			t.Errorf("a key of %d bytes is stored", len(k))
		}
	}
	th.mu.Unlock()
	if th.Failures(long) != 1 {
		t.Error("a long key's failure is not found again")
	}
}

// TestIPKey: IPv4 addresses are keys of their own, IPv6 ones share their
// /64, and IPv4-mapped IPv6 is IPv4.
func TestIPKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.1":            "ip:192.0.2.1",
		"::ffff:192.0.2.1":     "ip:192.0.2.1",
		"2001:db8:1:2:3:4:5:6": "ip:2001:db8:1:2::/64",
		"2001:db8:1:2::9":      "ip:2001:db8:1:2::/64",
		"fe80::1%eth0":         "ip:fe80::/64",
		"::1":                  "ip:::/64",
	} {
		if got := IPKey(netip.MustParseAddr(in)); got != want {
			t.Errorf("IPKey(%s) = %q, want %q", in, got, want)
		}
	}
}
