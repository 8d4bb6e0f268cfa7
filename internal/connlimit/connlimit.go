// Package connlimit caps concurrent client connections, in total and per
// client address, as Postfix's anvil does for smtpd: past a limit a new
// connection is refused with the protocol's own "try later" (SMTP 421
// 4.7.0, IMAP BYE) and closed, and the listener keeps accepting.
//
// IPv6 clients are counted per /64, since one host is given a whole /64 and
// could otherwise step around the per-address limit.
package connlimit

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Errors naming the limit a connection ran into.
var (
	ErrTotal = errors.New("too many connections")
	ErrPerIP = errors.New("too many connections from your address")
)

// Limiter counts open connections. A limit of 0 or less is no limit. It is
// safe for concurrent use and may be shared by several listeners.
type Limiter struct {
	total, perIP int

	mu  sync.Mutex
	n   int
	per map[netip.Addr]int
}

// New returns a limiter allowing total connections in all and perIP from
// one client.
func New(total, perIP int) *Limiter {
	return &Limiter{total: total, perIP: perIP, per: map[netip.Addr]int{}}
}

// Key is the address a client is counted under: itself, or its /64 for
// IPv6.
func Key(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// Acquire takes a slot for a client at addr. On success, release gives it
// back and must be called once.
func (l *Limiter) Acquire(addr netip.Addr) (release func(), err error) {
	k := Key(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total > 0 && l.n >= l.total {
		return nil, ErrTotal
	}
	if l.perIP > 0 && l.per[k] >= l.perIP {
		return nil, ErrPerIP
	}
	l.n++
	l.per[k]++
	var once sync.Once
	return func() { once.Do(func() { l.release(k) }) }, nil
}

func (l *Limiter) release(k netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	if l.per[k]--; l.per[k] <= 0 {
		delete(l.per, k)
	}
}

// Open returns the number of connections held.
func (l *Limiter) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// Listen wraps ln so that each accepted connection takes a slot of l, given
// back when the connection is closed. A connection over the limit is handed
// to refuse (in its own goroutine, so a slow client cannot stall accepting),
// which writes the protocol's refusal; the connection is closed after it.
func Listen(ln net.Listener, l *Limiter, refuse func(c net.Conn, err error)) net.Listener {
	return &listener{Listener: ln, l: l, refuse: refuse}
}

type listener struct {
	net.Listener
	l      *Limiter
	refuse func(net.Conn, error)
}

func (ln *listener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		var addr netip.Addr
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			addr = ap.Addr()
		}
		release, err := ln.l.Acquire(addr)
		if err == nil {
			return &conn{Conn: c, release: release}, nil
		}
		go func() {
			c.SetDeadline(time.Now().Add(2 * time.Second))
			ln.refuse(c, err)
			c.Close()
		}()
	}
}

type conn struct {
	net.Conn
	release func()
}

func (c *conn) Close() error {
	c.release()
	return c.Conn.Close()
}

// NetConn returns the connection underneath, for code that looks for a
// particular connection type below the wrappers.
func (c *conn) NetConn() net.Conn { return c.Conn }
