// Package deliver is the delivery loop: it claims due messages from the
// spool and delivers each pending recipient, local ones into their mailbox
// and remote ones through a Remote transport.
//
// Work is claimed with a lease (spool.Claim), so several nodes sharing a
// store never work on one message at once; every write of an outcome carries
// the lease, and a node whose lease was taken over meanwhile (it stalled past
// it) has its write refused rather than overwrite newer state. A long remote
// delivery renews its lease as it goes.
//
// Local delivery is exactly-once: the mailbox insert and the recipients'
// new state are one operation of the store (a spool update with a filing),
// so a crash before its commit leaves the message pending and one after
// leaves it delivered, never both.
//
// Every attempt, local or remote, ends in one spool.Reply per recipient,
// and one function (fate) decides from it and the clock what becomes of
// the recipient: delivered; failed at once on a permanent reply; failed
// with 5.4.7 once a temporary failure outlives Lifetime; otherwise retried
// with exponential backoff (computed in float seconds, with a little
// jitter) up to RetryMax apart, the sender told of the delay once past
// DelayNotice. A failure of the relay's own storage is the fixed reply
// spool.LocalTrouble; its error goes to the log, never into a notice.
// While the disk is below the store's reserve (Config.LocalPaused), local
// delivery waits without writing or counting anything, and goes on by
// itself when space is back.
package deliver

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/relaymail/relay/internal/store"
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
	// Lease is how long a claim holds a message for this node; a
	// delivery that runs longer renews it every Lease/3. A node that
	// dies holds its messages this long at most (on a shared store).
	Lease time.Duration
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
	// Reply is the failure's reply, the zero Reply on success; its
	// Permanent says whether to give up.
	Reply spool.Reply
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

// defaultLease is how long a claim holds a message unless Config.Lease
// says otherwise.
const defaultLease = 2 * time.Minute

// pausedWait is how often the loop looks again while local delivery is
// paused; idleWait how often it looks when nothing is due (other nodes'
// leases run out without a notice).
const (
	pausedWait = time.Second
	idleWait   = time.Minute
)

// Loop is the delivery loop.
type Loop struct {
	cfg    Config
	spool  *spool.Spool
	boxes  *mailbox.Store
	remote Remote
	log    *slog.Logger

	// beforeCommit, when set, runs inside the local-delivery update
	// after the recipients' new state is decided and before the commit:
	// the one point where exactly-once delivery could break, where tests
	// inject a failure or a crash (export_test.go).
	beforeCommit func(id string) error

	// rounds counts the loop's passes over the queue, so that a test
	// asserting that a pass claimed nothing knows a pass has happened
	// (export_test.go).
	rounds struct {
		sync.Mutex
		started, done uint64
		claimed       int
	}

	kick chan struct{}
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
	if cfg.Lease <= 0 {
		cfg.Lease = defaultLease
	}
	for i, d := range cfg.Domains {
		cfg.Domains[i] = strings.ToLower(d)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Loop{cfg: cfg, spool: sp, boxes: boxes, remote: remote, log: log, kick: make(chan struct{}, 1)}
}

// Kick wakes the loop to look for due work now (after a clock change in
// tests, or a flush).
func (l *Loop) Kick() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// Run delivers until ctx is cancelled, then waits for deliveries in flight.
// Each round claims as many due messages as workers are free, earliest
// first, and hands each to a worker; it sleeps until the queue changes on
// any node, a worker is done, or the next message falls due.
func (l *Loop) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, l.cfg.Workers)
	for {
		// Take the change signal before the claim, so a message queued
		// meanwhile still wakes the loop.
		changed := l.spool.Changed()
		l.rounds.Lock()
		l.rounds.started++
		l.rounds.Unlock()
		free := cap(sem) - len(sem)
		var leases []spool.Lease
		if free > 0 {
			var err error
			leases, err = l.spool.Claim(free, l.cfg.Lease)
			if err != nil {
				l.log.Error("claim due messages", "error", err)
			}
		}
		for _, lease := range leases {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				l.spool.ReleaseLease(lease)
				return
			}
			wg.Go(func() {
				defer func() {
					<-sem
					l.Kick()
				}()
				l.process(ctx, lease)
			})
		}
		l.rounds.Lock()
		l.rounds.done++
		l.rounds.claimed += len(leases)
		l.rounds.Unlock()
		wait := idleWait
		if next, ok, err := l.spool.NextDue(); err == nil && ok {
			wait = min(wait, max(next.Sub(l.spool.Now()), 10*time.Millisecond))
		}
		kick := l.kick
		if l.localPaused() {
			// The paused messages stay due and would be handed out
			// again as soon as a worker is done with them: look once
			// a second instead, until the pause ends.
			wait, kick = pausedWait, nil
		}
		if len(leases) == free && free > 0 {
			// All workers were taken: more may be due already.
			wait = min(wait, pausedWait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-changed:
		case <-kick:
		case <-t.C:
		}
		t.Stop()
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

// process delivers the due recipients of one claimed message: the local
// ones first, keeping the lease, then the remote ones; the last write gives
// the lease back (so does process itself when it writes nothing).
func (l *Loop) process(ctx context.Context, lease spool.Lease) {
	held := true
	defer func() {
		if held {
			if err := l.spool.ReleaseLease(lease); err != nil && !errors.Is(err, store.ErrLeaseLost) {
				l.log.Warn("give back a claim", "id", lease.ID, "error", err)
			}
		}
	}()
	m, err := l.spool.Get(lease.ID)
	if err != nil {
		if !errors.Is(err, spool.ErrNotFound) {
			l.log.Error("read queued message", "id", lease.ID, "error", err)
		}
		return
	}
	now := l.spool.Now()
	local, remote := false, false
	for _, r := range m.Rcpts {
		switch {
		case !isDue(r, now):
		case l.IsLocal(r.Address):
			local = true
		default:
			remote = true
		}
	}
	if local && l.localPaused() {
		// Nothing is written, not even a new retry time (the disk has
		// no room to spare): the recipients stay due, without an
		// attempt counted, until the pause ends.
		local = false
	}
	if local {
		err := l.deliverLocal(lease, m, remote)
		switch {
		case err == nil:
			held = remote
		case errors.Is(err, spool.ErrNotFound), errors.Is(err, store.ErrLeaseLost):
			l.log.Info("local delivery abandoned", "id", m.ID, "reason", err)
			held = false
			return
		default:
			l.log.Error("local delivery failed", "id", m.ID, "error", err)
			if l.failLocal(lease, m.ID, remote) == nil {
				held = remote
			}
		}
		if !remote {
			return
		}
		if m, err = l.spool.Get(m.ID); err != nil {
			return
		}
	}
	if remote {
		if l.deliverRemote(ctx, lease, m) {
			held = false
		}
	}
}

// deliverLocal files every due local recipient of m in one operation of
// the store: one blob, one INBOX entry per distinct account, and the
// recipients' final state, with the notices they call for. A recipient
// whose account went away after RCPT was accepted makes the store refuse
// the filing (spool.ErrNoAccount); the update is planned again with that
// recipient failed, 5.1.1.
func (l *Loop) deliverLocal(lease spool.Lease, m *spool.Message, keep bool) error {
	// Every account is taken to exist (RCPT checked it): the store
	// refuses a filing for one that went away since, and the update is
	// planned again without it, so the common case costs no lookup.
	gone := map[string]bool{}
	for range len(m.Rcpts) + 1 {
		now := l.spool.Now()
		exists := map[string]bool{}
		for _, r := range m.Rcpts {
			if isDue(r, now) && l.IsLocal(r.Address) {
				u := mailbox.Resolve(r.Address)
				exists[u] = !gone[u]
			}
		}
		err := l.spool.Update(m.ID, &lease, func(m *spool.Message) (spool.Effects, error) {
			var users []string
			var reports []report
			for i, r := range m.Rcpts {
				if !isDue(r, now) || !l.IsLocal(r.Address) {
					continue
				}
				u := mailbox.Resolve(r.Address)
				if ok, known := exists[u]; known && !ok {
					reports = l.fate(m, i, now, Outcome{Reply: noSuchUser}, reports)
					continue
				}
				if !known(exists, u) {
					continue // due only since the plan: next round
				}
				if !slices.Contains(users, u) {
					users = append(users, u)
				}
				reports = l.fate(m, i, now, Outcome{}, reports)
			}
			eff := spool.Effects{KeepLease: keep}
			if len(users) > 0 {
				eff.File = &spool.Filing{Accounts: users, Date: m.Arrived}
			}
			if l.beforeCommit != nil && len(users) > 0 {
				if err := l.beforeCommit(m.ID); err != nil {
					return eff, err
				}
			}
			eff.Notices = l.notices(m, reports, now)
			return eff, nil
		})
		var na *spool.NoAccountError
		if !errors.As(err, &na) {
			return err
		}
		gone[na.Account] = true
	}
	return errors.New("accounts kept disappearing during delivery")
}

func known(m map[string]bool, k string) bool { _, ok := m[k]; return ok }

// noSuchUser is the reply for a local recipient whose account is gone.
var noSuchUser = spool.NewReply(550, "5.1.1", "no such user")

// failLocal records a failed local attempt for every due local recipient
// of message id: the store failed, so the reply is spool.LocalTrouble,
// and the caller has logged the error behind it.
func (l *Loop) failLocal(lease spool.Lease, id string, keep bool) error {
	now := l.spool.Now()
	err := l.spool.Update(id, &lease, func(m *spool.Message) (spool.Effects, error) {
		var reports []report
		for i, r := range m.Rcpts {
			if isDue(r, now) && l.IsLocal(r.Address) {
				reports = l.fate(m, i, now, Outcome{Reply: spool.LocalTrouble}, reports)
			}
		}
		return spool.Effects{KeepLease: keep, Notices: l.notices(m, reports, now)}, nil
	})
	if err != nil && !errors.Is(err, spool.ErrNotFound) {
		l.log.Error("record local failure", "id", id, "error", err)
	}
	return err
}

// deliverRemote hands the due remote recipients of m to the transport,
// renewing the lease while it runs, and records the outcomes with the
// lease; it reports whether that write gave the lease back.
func (l *Loop) deliverRemote(ctx context.Context, lease spool.Lease, m *spool.Message) bool {
	now := l.spool.Now()
	id := m.ID
	var idx []int
	for i, r := range m.Rcpts {
		if isDue(r, now) && !l.IsLocal(r.Address) {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return false
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
			outcomes[i] = Outcome{Reply: notConfigured}
		}
	} else {
		stop := l.renew(ctx, lease)
		outcomes = l.remote.Deliver(ctx, m, idx, started)
		stop()
	}
	err := l.spool.Update(id, &lease, func(m *spool.Message) (spool.Effects, error) {
		var reports []report
		for j, i := range idx {
			reports = l.fate(m, i, now, outcomes[j], reports)
		}
		return spool.Effects{Notices: l.notices(m, reports, now)}, nil
	})
	switch {
	case err == nil:
		return true
	case errors.Is(err, store.ErrLeaseLost):
		// Another node took the message over while this delivery ran
		// (this node stalled past the lease): its state wins. The
		// remote side may have the message twice, which remote
		// delivery (at-least-once) allows.
		l.log.Warn("remote outcome not recorded: the claim was taken over", "id", id)
		return true
	case errors.Is(err, spool.ErrNotFound):
		l.log.Warn("remote outcome not recorded: the message left the queue meanwhile (settled by another node, or deleted)", "id", id)
		return true
	}
	l.log.Error("record remote outcome", "id", id, "error", err)
	return false
}

// renew extends lease every Config.Lease/3 until the returned function is
// called.
func (l *Loop) renew(ctx context.Context, lease spool.Lease) func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(l.cfg.Lease / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				if err := l.spool.Renew(lease, l.cfg.Lease); err != nil {
					l.log.Warn("renew a claim", "id", lease.ID, "error", err)
					return
				}
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// notConfigured is the reply for a remote recipient while the relay has no
// remote transport: temporary, since one may be configured before the
// message expires.
var notConfigured = spool.TempReply("4.4.0", "remote delivery is not configured")

// report asks for a notice about recipient i of a message.
type report struct {
	i       int
	expired bool // failed because its time ran out (5.4.7)
}

// fate applies the outcome of one attempt to recipient i of m at now,
// local and remote alike, and appends to reports the notice the sender is
// due, if any:
//   - busy: no attempt was made; tried again after busyRetry.
//   - success: delivered; a notice if NOTIFY asked for SUCCESS and the
//     next hop did not take the request over (RFC 3461 §4.1: without DSN
//     support there, the notice says "relayed").
//   - a permanent reply: failed, with a failure notice.
//   - a temporary reply once the message is Lifetime old: failed, the
//     reply kept, with a failure notice saying 5.4.7 (RFC 3463 X.4.7).
//   - a temporary reply before: retried after Backoff; the first attempt
//     past DelayNotice brings the one delay notice, if NOTIFY allows it.
//
// A recipient no longer pending (settled by a concurrent change) is left
// alone.
func (l *Loop) fate(m *spool.Message, i int, now time.Time, o Outcome, reports []report) []report {
	rc := &m.Rcpts[i]
	switch {
	case rc.State != spool.Pending:
		return reports
	case o.Busy:
		rc.NextAttempt = now.Add(busyRetry)
		return reports
	}
	rc.Attempts++
	rc.Reply, rc.RemoteMTA = o.Reply, o.RemoteMTA
	switch {
	case o.Reply.IsZero():
		rc.State = spool.Delivered
		if wants(*rc, "SUCCESS") && !o.RemoteDSN {
			reports = append(reports, report{i: i})
		}
	case o.Reply.Permanent:
		rc.State = spool.Failed
		reports = append(reports, report{i: i})
	case now.Sub(m.Arrived) >= l.cfg.Lifetime:
		rc.State = spool.Failed
		reports = append(reports, report{i: i, expired: true})
	default:
		rc.NextAttempt = now.Add(Backoff(rc.Attempts, l.cfg.RetryFirst, l.cfg.RetryMax, rand.Float64()))
		if !rc.DelayNotified && now.Sub(m.Arrived) >= l.cfg.DelayNotice && wants(*rc, "DELAY") {
			rc.DelayNotified = true
			reports = append(reports, report{i: i})
		}
	}
	return reports
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

// operatorBounce is the reply of a recipient bounced by `relay queue
// bounce`, as its DSN gives it.
var operatorBounce = spool.NewReply(550, "5.0.0", "message returned to the sender by the mail system administrator")

// Bounce fails every pending recipient of message id now and sends the
// sender a failure notice for them, as if the queue lifetime had ended.
func (l *Loop) Bounce(id string) error {
	now := l.spool.Now()
	return l.spool.Update(id, nil, func(m *spool.Message) (spool.Effects, error) {
		var reports []report
		for i := range m.Rcpts {
			rc := &m.Rcpts[i]
			if rc.State != spool.Pending {
				continue
			}
			rc.State, rc.Reply, rc.RemoteMTA = spool.Failed, operatorBounce, ""
			reports = append(reports, report{i: i})
		}
		return spool.Effects{Notices: l.notices(m, reports, now)}, nil
	})
}
