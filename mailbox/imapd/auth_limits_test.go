package imapd_test

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaymail/relay/internal/throttle"
	"github.com/relaymail/relay/mailbox/imapd"
)

// fakeThrottle is a throttle that never sleeps, on a clock the test moves.
type fakeThrottle struct {
	*throttle.Throttle
	mu  sync.Mutex
	now time.Time
}

func newFakeThrottle(limit int, lockout time.Duration) *fakeThrottle {
	f := &fakeThrottle{Throttle: throttle.New(time.Second, 8*time.Second), now: time.Unix(1_700_000_000, 0)}
	f.Limit, f.Lockout = limit, lockout
	f.Now = func() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.now }
	f.Sleep = func(context.Context, time.Duration) {}
	return f
}

func (f *fakeThrottle) advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

// TestLoginBlockedAfterFailures guards the temporary refusal: after the
// throttle's limit of failures, even the right password is refused with
// NO [UNAVAILABLE] until the lockout ends, and the refusal reads the same
// for a real and an unknown account.
func TestLoginBlockedAfterFailures(t *testing.T) {
	t.Parallel()
	th := newFakeThrottle(3, time.Minute)
	ts := startServer(t, imapd.Config{Throttle: th.Throttle})
	rc := dialRaw(t, ts.addr)
	for range 3 {
		if _, st := rc.run("LOGIN " + testUser + " wrong"); !strings.HasPrefix(st, "NO [AUTHENTICATIONFAILED]") {
			t.Fatalf("bad login: %q", st)
		}
	}
	_, right := rc.run("LOGIN " + testUser + " " + testPass)
	if !strings.HasPrefix(right, "NO [UNAVAILABLE]") {
		t.Fatalf("right password after 3 failures (limit 3): %q, want NO [UNAVAILABLE]", right)
	}
	// The address is blocked too: any account, existing or not, gets the
	// same answer, before its password is looked at.
	_, unknown := rc.run("LOGIN nobody@example.test whatever")
	if unknown != right {
		t.Errorf("blocked unknown user %q, blocked real user %q: the replies differ", unknown, right)
	}
	th.advance(61 * time.Second)
	rc.ok("LOGIN " + testUser + " " + testPass)
}

// TestLoginBlockedPerAccount: failures against one account from many
// addresses block that account (but not others) even from a fresh
// address.
func TestLoginBlockedPerAccount(t *testing.T) {
	t.Parallel()
	th := newFakeThrottle(3, time.Minute)
	ts := startServer(t, imapd.Config{Throttle: th.Throttle})
	if err := ts.boxes.AddUser("bob@example.test", "pw2"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		rc := newRaw(t, dialFrom(t, "127.0.0."+string(rune('2'+i)), ts.addr))
		rc.run("LOGIN " + testUser + " wrong")
	}
	rc := newRaw(t, dialFrom(t, "127.0.0.9", ts.addr))
	if _, st := rc.run("LOGIN " + testUser + " " + testPass); !strings.HasPrefix(st, "NO [UNAVAILABLE]") {
		t.Errorf("account guessed from three addresses: %q, want NO [UNAVAILABLE]", st)
	}
	rc.ok("LOGIN bob@example.test pw2")
}

// TestAuthenticateUnknownUserCostsAHash guards the timing defence: a login
// for an account that does not exist must still run bcrypt (against a
// dummy hash), or its quick answer tells a guesser which names exist. A
// bcrypt check allocates its Blowfish state (over 4 KiB); the lookup
// alone allocates a few hundred bytes. Allocation is measured instead of
// time, which a loaded machine distorts; other goroutines can only add to
// it, so the bound cannot fail spuriously.
func TestAuthenticateUnknownUserCostsAHash(t *testing.T) {
	ts := startServer(t, imapd.Config{})
	measure := func(user string) uint64 {
		var a, b runtime.MemStats
		runtime.ReadMemStats(&a)
		if _, err := ts.boxes.Authenticate(user, "wrong"); err == nil {
			t.Fatalf("Authenticate(%s, wrong) succeeded", user)
		}
		runtime.ReadMemStats(&b)
		return b.TotalAlloc - a.TotalAlloc
	}
	if n := min(measure("nobody@example.test"), measure("nobody@example.test")); n < 4096 {
		t.Errorf("Authenticate for an unknown user allocated %d bytes: no bcrypt check was made", n)
	}
	if n := measure(testUser); n < 4096 {
		t.Errorf("Authenticate with a wrong password allocated %d bytes", n)
	}
}
