package connlimit

import (
	"errors"
	"net/netip"
	"testing"
)

func TestAcquire(t *testing.T) {
	l := New(3, 2)
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	r1, err := l.Acquire(a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(a); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(a); !errors.Is(err, ErrPerIP) {
		t.Errorf("third from one address: %v, want ErrPerIP", err)
	}
	if _, err := l.Acquire(b); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(netip.MustParseAddr("192.0.2.3")); !errors.Is(err, ErrTotal) {
		t.Errorf("fourth in all: %v, want ErrTotal", err)
	}
	r1()
	r1() // a second release gives nothing back twice
	if n := l.Open(); n != 2 {
		t.Errorf("Open = %d after one release, want 2", n)
	}
	if _, err := l.Acquire(a); err != nil {
		t.Errorf("after a release: %v", err)
	}
	if _, err := l.Acquire(b); !errors.Is(err, ErrTotal) {
		t.Errorf("full again: %v, want ErrTotal", err)
	}
}

// TestIPv6PerPrefix: addresses of one /64 share the per-address limit, and
// an IPv4-mapped address counts as the IPv4 one.
func TestIPv6PerPrefix(t *testing.T) {
	l := New(0, 1)
	if _, err := l.Acquire(netip.MustParseAddr("2001:db8:1:2::1")); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(netip.MustParseAddr("2001:db8:1:2:ffff::9")); !errors.Is(err, ErrPerIP) {
		t.Errorf("same /64: %v, want ErrPerIP", err)
	}
	if _, err := l.Acquire(netip.MustParseAddr("2001:db8:1:3::1")); err != nil {
		t.Errorf("another /64: %v", err)
	}
	if _, err := l.Acquire(netip.MustParseAddr("192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(netip.MustParseAddr("::ffff:192.0.2.1")); !errors.Is(err, ErrPerIP) {
		t.Errorf("IPv4-mapped: %v, want ErrPerIP", err)
	}
}

func TestNoLimit(t *testing.T) {
	l := New(0, 0)
	for range 1000 {
		if _, err := l.Acquire(netip.MustParseAddr("192.0.2.1")); err != nil {
			t.Fatal(err)
		}
	}
}
