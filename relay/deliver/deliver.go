// Package deliver is the delivery loop: it takes due messages from the
// spool's due index and delivers each pending recipient, local ones into
// their mailbox and remote ones through a Remote transport.
//
// Local delivery is exactly-once: the mailbox insert and the recipients'
// new state commit in one Badger transaction (spool.Update), so a crash
// before the commit leaves the message pending and one after leaves it
// delivered, never both. Temporary failures are retried with exponential
// backoff (computed in float seconds, with a little jitter) up to RetryMax
// apart. While the disk is below the store's reserve (Config.LocalPaused),
// local delivery, which copies each body into a mailbox, waits without
// writing or counting anything, and goes on by itself when space is back.
package deliver

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/relaymail/relay/mailbox"
	"github.com/relaymail/relay/spool"
)

// Config tunes the loop.
type Config struct {
	// Domains are the local domains; recipients there go to mailboxes.
	Domains []string
	// Workers bounds how many messages are delivered at once.
	Workers int
	// RetryFirst is the delay before the first retry; it doubles with each
	// attempt up to RetryMax.
	RetryFirst, RetryMax time.Duration
	// Lifetime is how long a message is retried before it bounces;
	// DelayNotice is when the sender hears of the delay (once).
	Lifetime, DelayNotice time.Duration
	// Hostname names this relay in DSNs.
	Hostname string
	// LocalPaused reports whether local delivery must wait: it copies a
	// body into a mailbox, which the disk may have no room for (below
	// the store's reserve). Nil never pauses.
	LocalPaused func() bool
}

// Remote delivers recipients outside the local domains. Deliver returns one
// outcome per index in rcpts; when an attempt for some of them begins, it
// calls started (if not nil) with their positions in rcpts and the host.
type Remote interface {
	Deliver(ctx context.Context, m *spool.Message, rcpts []int, started func(pos []int, host string)) []Outcome
}

// Outcome is the result of one delivery attempt for one recipient.
type Outcome struct {
	// Err is nil on success; otherwise Permanent says whether to give up.
	// Its text is the reply, e.g. "550 5.1.1 no such user".
	Err       error
	Permanent bool
	// RemoteMTA is the host that answered.
	RemoteMTA string
	// RemoteDSN says the next hop took the DSN request over (RFC 3461
	// §4.1), so no "relayed" notice is due from here.
	RemoteDSN bool
	// Busy says no attempt was made: every connection to the destination
	// was in use. The recipient is tried again soon, not counted as an
	// attempt, so that a slow destination holds its own connections and
	// no worker of the loop.
	Busy bool
}

// busyRetry is how soon a recipient whose destination was busy is tried
// again.
const busyRetry = 2 * time.Second

// pausedWait is how often the loop looks again while local delivery is
// paused.
const pausedWait = time.Second

// Loop is the delivery loop.
type Loop struct {
	cfg    Config
	spool  *spool.Spool
	boxes  *mailbox.Store
	remote Remote
	log    *slog.Logger

	// BeforeCommit, when set, runs inside the local-delivery transaction
	// after the mailbox insert and before the commit. Tests use it to
	// inject a failure or a crash at the one point where exactly-once
	// delivery could break.
	BeforeCommit func(id string) error

	mu       sync.Mutex
	inflight map[string]bool
	idle     chan struct{}

	// boxLocks serialize deliveries into the same account. Two of them
	// touch the same mailbox counters, so under Badger's optimistic
	// transactions all but one would conflict and redo their work; with
	// 32 workers on one busy INBOX that halved the delivery rate.
	boxLocks [64]sync.Mutex
}

// lockBoxes takes the delivery locks of users in a fixed order, so that two
// messages with overlapping recipients cannot deadlock, and returns the
// function that releases them.
func (l *Loop) lockBoxes(users []string) func() {
	var idx []int
	for _, u := range users {
		h := fnv.New32a()
		h.Write([]byte(u))
		i := int(h.Sum32() % uint32(len(l.boxLocks)))
		if !slices.Contains(idx, i) {
			idx = append(idx, i)
		}
	}
	slices.Sort(idx)
	for _, i := range idx {
		l.boxLocks[i].Lock()
	}
	return func() {
		for _, i := range idx {
			l.boxLocks[i].Unlock()
		}
	}
}

// New returns a loop. remote may be nil: remote recipients then wait in the
// queue, retried with backoff, until a transport is configured.
func New(cfg Config, sp *spool.Spool, boxes *mailbox.Store, remote Remote, log *slog.Logger) *Loop {
	if cfg.Workers <= 0 {
		cfg.Workers = 8
	}
	if cfg.RetryFirst <= 0 {
		cfg.RetryFirst = 5 * time.Minute
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = time.Hour
	}
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = 5 * 24 * time.Hour
	}
	if cfg.DelayNotice <= 0 {
		cfg.DelayNotice = 4 * time.Hour
	}
	if cfg.Hostname == "" {
		cfg.Hostname = "localhost"
	}
	for i, d := range cfg.Domains {
		cfg.Domains[i] = strings.ToLower(d)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Loop{cfg: cfg, spool: sp, boxes: boxes, remote: remote, log: log,
		inflight: map[string]bool{}, idle: make(chan struct{}, 1)}
}

// Kick wakes the loop to look at the due index now (after a clock change in
// tests, or a flush).
func (l *Loop) Kick() {
	select {
	case l.idle <- struct{}{}:
	default:
	}
}

// Run delivers until ctx is cancelled, then waits for deliveries in flight.
//
// Each round scans the due index from low, the first entry the previous
// round found (everything before it was deleted), or from an earlier entry
// written since (spool.ScanFrom): a scan from the start would step over the
// tombstones of every message delivered lately, on every round.
func (l *Loop) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, l.cfg.Workers)
	var low time.Time
	for {
		// Take the change signal before the scan, so a message queued
		// during the scan still wakes the loop.
		changed := l.spool.Changed()
		now := l.spool.Now()
		from := l.spool.ScanFrom(low)
		ids, first, next, err := l.spool.ScanDue(from, now, 4*l.cfg.Workers+l.inflightCount())
		if err != nil {
			l.log.Error("scan due index", "error", err)
			low = time.Time{} // what ScanFrom handed out is lost: start over
		} else {
			low = first
			if low.IsZero() {
				low = from
			}
		}
		for _, id := range ids {
			if !l.claim(id) {
				continue
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				l.release(id)
				return
			}
			wg.Go(func() {
				defer func() { <-sem }()
				defer l.release(id)
				l.process(ctx, id)
			})
		}
		wait := time.Minute
		if !next.IsZero() {
			wait = min(wait, max(next.Sub(now), 10*time.Millisecond))
		}
		idle := l.idle
		if l.localPaused() {
			// The paused messages stay due and would be handed out
			// again as soon as a worker is done with them: look once
			// a second instead, until the pause ends.
			wait, idle = pausedWait, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-changed:
		case <-idle:
		case <-t.C:
		}
		t.Stop()
	}
}

func (l *Loop) inflightCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.inflight)
}

func (l *Loop) claim(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inflight[id] {
		return false
	}
	l.inflight[id] = true
	return true
}

func (l *Loop) release(id string) {
	l.mu.Lock()
	delete(l.inflight, id)
	l.mu.Unlock()
	select {
	case l.idle <- struct{}{}:
	default:
	}
}

func (l *Loop) localPaused() bool { return l.cfg.LocalPaused != nil && l.cfg.LocalPaused() }

// IsLocal reports whether a recipient address is in a local domain.
func (l *Loop) IsLocal(rcpt string) bool {
	at := strings.LastIndexByte(rcpt, '@')
	return at >= 0 && slices.Contains(l.cfg.Domains, strings.ToLower(rcpt[at+1:]))
}

// isDue reports whether a recipient waits for an attempt at now.
func isDue(r spool.Recipient, now time.Time) bool {
	return r.State == spool.Pending && !r.NextAttempt.After(now)
}

// process delivers the due recipients of one message. It reads the message
// once to see which deliveries it needs, and again before the remote one
// only if a local delivery changed it in between.
func (l *Loop) process(ctx context.Context, id string) {
	m, err := l.spool.Get(id)
	if err != nil {
		if !errors.Is(err, spool.ErrNotFound) {
			l.log.Error("read queued message", "id", id, "error", err)
		}
		return
	}
	now := l.spool.Now()
	var accounts []string
	remote := false
	for _, r := range m.Rcpts {
		switch {
		case !isDue(r, now):
		case l.IsLocal(r.Address):
			accounts = append(accounts, mailbox.Resolve(r.Address))
		default:
			remote = true
		}
	}
	if len(accounts) > 0 && l.localPaused() {
		// Nothing is written, not even a new retry time (the disk has
		// no room to spare): the recipients stay due, without an
		// attempt counted, until the pause ends.
		accounts = nil
	}
	if len(accounts) > 0 {
		err := l.deliverLocal(id, accounts)
		// A conflict is contention with another writer of the same
		// mailbox, not a failure: try again soon, without counting an
		// attempt.
		for try := 1; errors.Is(err, badger.ErrConflict) && try <= 20; try++ {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(try) * time.Duration(1+rand.IntN(5)) * time.Millisecond):
			}
			err = l.deliverLocal(id, accounts)
		}
		if err != nil && !errors.Is(err, spool.ErrNotFound) {
			l.log.Error("local delivery failed", "id", id, "error", err)
			l.deferLocal(id, err)
		}
	}
	if !remote {
		return
	}
	if len(accounts) > 0 {
		if m, err = l.spool.Get(id); err != nil {
			return
		}
	}
	l.deliverRemote(ctx, m)
}

// deliverLocal files every due local recipient of message id in one
// transaction: one blob, one INBOX entry per distinct account, and the
// recipients' final state. accounts are those the caller saw due; their
// delivery locks are taken before the transaction begins, since its
// snapshot must already hold the previous delivery into the same mailbox.
func (l *Loop) deliverLocal(id string, accounts []string) error {
	now := l.spool.Now()
	defer l.lockBoxes(accounts)()
	var users []string
	err := l.spool.Update(id, func(tx *spool.Tx, m *spool.Message) error {
		users = users[:0]
		var idx, report []int
		defer func() {
			if len(report) > 0 {
				l.notifyTxn(tx, m, report, now)
			}
		}()
		for i, r := range m.Rcpts {
			if !isDue(r, now) || !l.IsLocal(r.Address) {
				continue
			}
			u := mailbox.Resolve(r.Address)
			ok, err := mailbox.UserExistsTxn(tx.Txn, u)
			if err != nil {
				return err
			}
			rc := &m.Rcpts[i]
			if !ok {
				// The account went away after RCPT was accepted.
				rc.Attempts++
				rc.State, rc.LastError, rc.RemoteMTA = spool.Failed, "550 5.1.1 no such user", ""
				report = append(report, i)
				continue
			}
			idx = append(idx, i)
			if !slices.Contains(users, u) {
				users = append(users, u)
			}
		}
		if len(users) == 0 {
			return nil
		}
		body := spool.BodyTxn(tx.Txn, m)
		if err := mailbox.DeliverTxn(tx.Txn, mailbox.NewBlobID(), body, users, m.Arrived); err != nil {
			return err
		}
		if l.BeforeCommit != nil {
			if err := l.BeforeCommit(m.ID); err != nil {
				return err
			}
		}
		for _, i := range idx {
			m.Rcpts[i].Attempts++
			m.Rcpts[i].State, m.Rcpts[i].LastError, m.Rcpts[i].RemoteMTA = spool.Delivered, "", ""
			if wants(m.Rcpts[i], "SUCCESS") {
				report = append(report, i)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, u := range users {
		l.boxes.Notify(u)
	}
	return nil
}

// deferLocal records a failed local attempt so it is retried later instead
// of at once.
func (l *Loop) deferLocal(id string, cause error) {
	now := l.spool.Now()
	err := l.spool.Update(id, func(_ *spool.Tx, m *spool.Message) error {
		for i, r := range m.Rcpts {
			if isDue(r, now) && l.IsLocal(r.Address) {
				l.retryLater(&m.Rcpts[i], now, fmt.Sprintf("451 4.3.0 local delivery failed: %v", cause))
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, spool.ErrNotFound) {
		l.log.Error("defer failed", "id", id, "error", err)
	}
}

// deliverRemote hands the due remote recipients of m to the transport.
func (l *Loop) deliverRemote(ctx context.Context, m *spool.Message) {
	now := l.spool.Now()
	id := m.ID
	var idx []int
	for i, r := range m.Rcpts {
		if isDue(r, now) && !l.IsLocal(r.Address) {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return
	}
	started := func(pos []int, host string) {
		evs := make([]spool.Event, len(pos))
		for k, p := range pos {
			rc := m.Rcpts[idx[p]]
			evs[k] = spool.Event{Event: spool.EventAttempt, ID: m.ID, Rcpt: rc.Address, Attempt: rc.Attempts + 1, Relay: host}
		}
		if err := l.spool.Record(evs...); err != nil {
			l.log.Warn("log attempt", "id", id, "error", err)
		}
	}
	outcomes := make([]Outcome, len(idx))
	if l.remote == nil {
		for i := range outcomes {
			outcomes[i] = Outcome{Err: errors.New("451 4.4.0 remote delivery is not configured")}
		}
	} else {
		outcomes = l.remote.Deliver(ctx, m, idx, started)
	}
	err := l.spool.Update(id, func(tx *spool.Tx, m *spool.Message) error {
		var report []int
		for j, i := range idx {
			rc, o := &m.Rcpts[i], outcomes[j]
			if rc.State != spool.Pending {
				continue
			}
			if o.Busy {
				rc.NextAttempt = now.Add(busyRetry)
				continue
			}
			rc.RemoteMTA = o.RemoteMTA
			switch {
			case o.Err == nil:
				rc.Attempts++
				rc.State, rc.LastError = spool.Delivered, ""
				// RFC 3461 §4.1: without DSN support at the next hop,
				// a requested success notice becomes "relayed" here.
				if wants(*rc, "SUCCESS") && !o.RemoteDSN {
					report = append(report, i)
				}
			case o.Permanent:
				rc.Attempts++
				rc.State, rc.LastError = spool.Failed, o.Err.Error()
				report = append(report, i)
			case now.Sub(m.Arrived) >= l.cfg.Lifetime:
				rc.Attempts++
				rc.State = spool.Failed
				rc.LastError = "4.4.7 message expired after " + l.cfg.Lifetime.String() + "; last error: " + o.Err.Error()
				report = append(report, i)
			default:
				l.retryLater(rc, now, o.Err.Error())
				if !rc.DelayNotified && now.Sub(m.Arrived) >= l.cfg.DelayNotice && wants(*rc, "DELAY") {
					rc.DelayNotified = true
					report = append(report, i)
				}
			}
		}
		l.notifyTxn(tx, m, report, now)
		return nil
	})
	if err != nil && !errors.Is(err, spool.ErrNotFound) {
		l.log.Error("record remote outcome", "id", id, "error", err)
	}
}

// retryLater counts an attempt and schedules the next one.
func (l *Loop) retryLater(rc *spool.Recipient, now time.Time, reason string) {
	rc.Attempts++
	rc.LastError = reason
	rc.NextAttempt = now.Add(Backoff(rc.Attempts, l.cfg.RetryFirst, l.cfg.RetryMax, rand.Float64()))
}

// Backoff is the wait after the n-th failed attempt: first, doubling with
// each attempt, computed in float seconds so large n cannot overflow,
// spread by up to ±10% (jitter in [0,1)) so that messages deferred together
// do not retry in lockstep, and capped at most, so that attempts are never
// further apart than most (at the cap the spread is 90-100% of it).
func Backoff(n int, first, most time.Duration, jitter float64) time.Duration {
	s := first.Seconds() * math.Pow(2, float64(max(n-1, 0)))
	s = math.Min(s, most.Seconds())
	s = math.Min(s*(0.9+0.2*jitter), most.Seconds())
	return time.Duration(s * float64(time.Second))
}

// operatorBounce is the reason a recipient bounced by `relay queue bounce`
// gives in its DSN.
const operatorBounce = "550 5.0.0 message returned to the sender by the mail system administrator"

// Bounce fails every pending recipient of message id now and sends the
// sender a failure notice for them, as if the queue lifetime had ended.
func (l *Loop) Bounce(id string) error {
	now := l.spool.Now()
	return l.spool.Update(id, func(tx *spool.Tx, m *spool.Message) error {
		var report []int
		for i := range m.Rcpts {
			rc := &m.Rcpts[i]
			if rc.State != spool.Pending {
				continue
			}
			rc.State, rc.LastError, rc.RemoteMTA = spool.Failed, operatorBounce, ""
			report = append(report, i)
		}
		l.notifyTxn(tx, m, report, now)
		return nil
	})
}
