package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
)

// IMAPConfig configures an IMAP load run.
type IMAPConfig struct {
	Addr            string
	Concurrency     int           // concurrent clients
	Duration        time.Duration // how long to run, when Ops is 0
	Ops             int64         // operations in all; 0 to run for Duration
	Logins          []string      // client i logs in as Logins[i % len(Logins)]
	Pass            string
	Mix             OpMix
	ExpungeAppended bool      // expunge each appended message again, so the mailbox keeps its size
	Progress        io.Writer // nil for no progress lines
}

func (c *IMAPConfig) check() error {
	switch {
	case c.Addr == "":
		return errors.New("no server address")
	case c.Concurrency < 1:
		return errors.New("concurrency must be at least 1")
	case c.Ops <= 0 && c.Duration <= 0:
		return errors.New("give a number of operations or a duration")
	case len(c.Logins) == 0:
		return errors.New("no users to log in as")
	case c.Mix.total == 0:
		return errors.New("no operations in the mix")
	}
	return nil
}

// IMAPSummary is the result of an IMAP run.
type IMAPSummary struct {
	Mode        string               `json:"mode"`
	Addr        string               `json:"addr"`
	Concurrency int                  `json:"concurrency"`
	Ops         int64                `json:"ops"` // completed without error
	Failed      int64                `json:"failed"`
	Seconds     float64              `json:"seconds"`
	OpsPerSec   float64              `json:"ops_per_sec"`
	Errors      map[string]int64     `json:"errors,omitempty"` // by "operation:status"
	PerOp       map[string]OpSummary `json:"per_op"`
}

// OpSummary is the figure for one operation.
type OpSummary struct {
	Ops       int64          `json:"ops"`
	Failed    int64          `json:"failed"`
	OpsPerSec float64        `json:"ops_per_sec"`
	Latency   LatencySummary `json:"latency"`
}

// opStats is what one operation collects.
type opStats struct {
	lat    Latencies
	failed atomic.Int64
}

type imapRun struct {
	cfg      IMAPConfig
	gen      *Generator
	stats    map[string]*opStats
	claimed  atomic.Int64
	done     atomic.Int64
	failed   atomic.Int64
	errs     Counter
	deadline time.Time
}

// smallMessage is the size of appended messages.
const smallMessage = 1 << 10

// RunIMAP runs the operation mix and returns the summary. It fails when no
// client can log in.
func RunIMAP(ctx context.Context, cfg IMAPConfig) (*IMAPSummary, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("imap: %w", err)
	}
	r := &imapRun{cfg: cfg, gen: NewGenerator(FixedMix(smallMessage)), stats: map[string]*opStats{}}
	for _, op := range append(allOps, OpExpunge) {
		r.stats[op] = &opStats{}
	}
	clients, err := r.connectAll(ctx)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	r.deadline = start.Add(cfg.Duration)
	stop := r.progress(start)
	var wg sync.WaitGroup
	for i, ic := range clients {
		wg.Go(func() { r.worker(ctx, i, ic) })
	}
	wg.Wait()
	stop()
	return r.summary(time.Since(start)), nil
}

// connectAll logs every client in and selects INBOX before the clock
// starts.
func (r *imapRun) connectAll(ctx context.Context) ([]*imapClient, error) {
	clients := make([]*imapClient, r.cfg.Concurrency)
	for i := range clients {
		ic, err := r.connect(i)
		if err != nil {
			for _, c := range clients[:i] {
				c.c.Close()
			}
			return nil, fmt.Errorf("imap: %w", err)
		}
		clients[i] = ic
	}
	return clients, nil
}

func (r *imapRun) connect(i int) (*imapClient, error) {
	login := r.cfg.Logins[i%len(r.cfg.Logins)]
	c, err := LoginIMAP(r.cfg.Addr, login, r.cfg.Pass)
	if err != nil {
		return nil, err
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		c.Close()
		return nil, fmt.Errorf("SELECT INBOX as %s: %w", login, err)
	}
	return &imapClient{
		c:      c,
		rnd:    rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano()))),
		gen:    r.gen,
		login:  login,
		margin: uint32(r.cfg.Concurrency),
	}, nil
}

// next claims one operation, or says the run is over.
func (r *imapRun) next(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	if r.cfg.Ops > 0 {
		return r.claimed.Add(1) <= r.cfg.Ops
	}
	return time.Now().Before(r.deadline)
}

// worker runs operations on one client until the run is over, logging in
// again when the connection is lost.
func (r *imapRun) worker(ctx context.Context, i int, ic *imapClient) {
	defer func() {
		if ic != nil {
			ic.c.Logout().Wait()
			ic.c.Close()
		}
	}()
	stopWatch := context.AfterFunc(ctx, func() { ic.c.Close() })
	defer stopWatch()
	for r.next(ctx) {
		op := r.cfg.Mix.Pick(ic.rnd)
		if op == OpAppend {
			r.appendOp(ic)
		} else {
			r.timed(op, func() error { return ic.op(op) })
		}
		if isClosed(ic.c) && ctx.Err() == nil {
			nic, err := r.connect(i)
			if err != nil {
				r.errs.Inc("reconnect:" + imapErrorKey(err))
				time.Sleep(100 * time.Millisecond)
				continue
			}
			ic = nic
		}
	}
}

// appendOp appends a message and, if configured, expunges it again; the
// two are timed as separate operations.
func (r *imapRun) appendOp(ic *imapClient) {
	var uid imap.UID
	r.timed(OpAppend, func() error {
		var err error
		uid, err = ic.appendMsg()
		return err
	})
	if r.cfg.ExpungeAppended && uid != 0 {
		r.timed(OpExpunge, func() error { return ic.expunge(uid) })
	}
}

// timed runs f and records its duration or its error under op.
func (r *imapRun) timed(op string, f func() error) {
	start := time.Now()
	err := f()
	d := time.Since(start)
	st := r.stats[op]
	if err != nil {
		st.failed.Add(1)
		r.failed.Add(1)
		r.errs.Inc(op + ":" + imapErrorKey(err))
		return
	}
	st.lat.Add(d)
	r.done.Add(1)
}

func (r *imapRun) progress(start time.Time) func() {
	if r.cfg.Progress == nil {
		return func() {}
	}
	return startTicker(func(last int64, dt time.Duration) int64 {
		done := r.done.Load()
		fmt.Fprintf(r.cfg.Progress, "imap: %6.1fs ops %d  %.0f ops/s  errors %d\n",
			time.Since(start).Seconds(), done, float64(done-last)/dt.Seconds(), r.failed.Load())
		return done
	})
}

func (r *imapRun) summary(elapsed time.Duration) *IMAPSummary {
	s := &IMAPSummary{
		Mode:        "imap",
		Addr:        r.cfg.Addr,
		Concurrency: r.cfg.Concurrency,
		Ops:         r.done.Load(),
		Failed:      r.failed.Load(),
		Seconds:     round3(elapsed.Seconds()),
		OpsPerSec:   rate(r.done.Load(), elapsed),
		Errors:      r.errs.Map(),
		PerOp:       map[string]OpSummary{},
	}
	for op, st := range r.stats {
		n := int64(st.lat.Len())
		if n == 0 && st.failed.Load() == 0 {
			continue
		}
		s.PerOp[op] = OpSummary{Ops: n, Failed: st.failed.Load(), OpsPerSec: rate(n, elapsed), Latency: st.lat.Summarize()}
	}
	return s
}
