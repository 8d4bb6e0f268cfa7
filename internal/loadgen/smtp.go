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
)

// SMTPConfig configures an SMTP load run.
type SMTPConfig struct {
	Addr        string        // server HOST:PORT
	Concurrency int           // concurrent sessions
	Messages    int64         // messages in all
	Mix         Mix           // message sizes
	Pipelining  bool          // send MAIL, RCPT and DATA without waiting (RFC 2920)
	Users       int           // recipients are user0 .. user{Users-1}
	Domain      string        // recipient domain
	Rcpts       int           // recipients per message
	From        string        // envelope sender
	AuthUser    string        // AUTH PLAIN user, "" for none
	AuthPass    string        // AUTH PLAIN password
	PerConn     int           // messages per connection, 0 for no limit
	Helo        string        // EHLO name
	Timeout     time.Duration // per exchange
	Progress    io.Writer     // progress lines about once a second; nil for none
	Wait        Waiter        // after sending, wait until the messages arrive; nil for no wait
}

// UserAddress is the address of test user i in domain.
func UserAddress(i int, domain string) string { return fmt.Sprintf("user%d@%s", i, domain) }

func (c *SMTPConfig) check() error {
	switch {
	case c.Addr == "":
		return errors.New("no server address")
	case c.Concurrency < 1:
		return errors.New("concurrency must be at least 1")
	case c.Messages < 1:
		return errors.New("message count must be at least 1")
	case c.Users < 1:
		return errors.New("users must be at least 1")
	case c.Rcpts < 1:
		return errors.New("recipients per message must be at least 1")
	case len(c.Mix) == 0:
		return errors.New("no message size")
	}
	if c.Timeout <= 0 {
		c.Timeout = time.Minute
	}
	if c.Helo == "" {
		c.Helo = "relay-bench.localhost"
	}
	return nil
}

// SMTPSummary is the result of an SMTP run.
type SMTPSummary struct {
	Mode        string           `json:"mode"`
	Addr        string           `json:"addr"`
	Concurrency int              `json:"concurrency"`
	Pipelining  bool             `json:"pipelining"`
	Mix         string           `json:"mix"`
	Messages    int64            `json:"messages"` // accepted with a final 250
	Failed      int64            `json:"failed"`
	Bytes       int64            `json:"bytes"`
	Connections int64            `json:"connections"`
	Seconds     float64          `json:"seconds"`
	MsgsPerSec  float64          `json:"msgs_per_sec"`
	Latency     LatencySummary   `json:"latency"`
	Errors      map[string]int64 `json:"errors,omitempty"`      // failed messages by reply code
	RcptErrors  map[string]int64 `json:"rcpt_errors,omitempty"` // refused recipients by reply code
	EndToEnd    *E2ESummary      `json:"end_to_end,omitempty"`
}

// E2ESummary is the end-to-end figure: from the first MAIL until every
// accepted message is readable.
type E2ESummary struct {
	Via          string  `json:"via"`
	Seconds      float64 `json:"seconds"`
	MsgsPerSec   float64 `json:"msgs_per_sec"`
	AfterSending float64 `json:"seconds_after_sending"`
}

// smtpRun is the shared state of one run.
type smtpRun struct {
	cfg       SMTPConfig
	gen       *Generator
	next      atomic.Int64
	ok        atomic.Int64
	failed    atomic.Int64
	bytes     atomic.Int64
	conns     atomic.Int64
	lat       Latencies
	errs      Counter
	rcptErrs  Counter
	delivered []atomic.Int64 // accepted recipients per user
	pipeline  bool
}

// RunSMTP sends cfg.Messages messages and returns the summary. It fails only
// when the run cannot start (bad configuration, no server); failed messages
// are counted in the summary.
func RunSMTP(ctx context.Context, cfg SMTPConfig) (*SMTPSummary, error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("smtp: %w", err)
	}
	r := &smtpRun{cfg: cfg, gen: NewGenerator(cfg.Mix), delivered: make([]atomic.Int64, cfg.Users)}
	if err := r.preflight(ctx); err != nil {
		return nil, err
	}
	if cfg.Wait != nil {
		if err := cfg.Wait.Baseline(ctx); err != nil {
			return nil, fmt.Errorf("smtp: baseline before the run: %w", err)
		}
	}
	start := time.Now()
	stop := r.progress(start)
	var wg sync.WaitGroup
	for i := range cfg.Concurrency {
		wg.Go(func() { r.worker(ctx, uint64(i)) })
	}
	wg.Wait()
	stop()
	elapsed := time.Since(start)
	sum := r.summary(elapsed)
	if cfg.Wait != nil {
		e2e, err := r.wait(ctx, start, elapsed)
		if err != nil {
			return sum, err
		}
		sum.EndToEnd = e2e
	}
	return sum, nil
}

// preflight opens one session to check that the server is there, takes
// AUTH, and decides whether to pipeline.
func (r *smtpRun) preflight(ctx context.Context) error {
	c, err := r.connect(ctx)
	if err != nil {
		return fmt.Errorf("smtp: %w", err)
	}
	defer c.quit()
	r.pipeline = r.cfg.Pipelining
	if r.pipeline && !c.has("PIPELINING") {
		r.pipeline = false
		if r.cfg.Progress != nil {
			fmt.Fprintf(r.cfg.Progress, "smtp: %s does not advertise PIPELINING; sending in lockstep\n", r.cfg.Addr)
		}
	}
	return nil
}

// connect opens a session and authenticates if configured to.
func (r *smtpRun) connect(ctx context.Context) (*smtpConn, error) {
	c, err := dialSMTP(ctx, r.cfg.Addr, r.cfg.Helo, r.cfg.Timeout)
	if err != nil {
		return nil, err
	}
	if r.cfg.AuthUser != "" {
		if err := c.auth(r.cfg.AuthUser, r.cfg.AuthPass); err != nil {
			c.quit()
			return nil, err
		}
	}
	return c, nil
}

// worker sends messages until all are claimed, reconnecting after
// PerConn messages and after a lost connection.
func (r *smtpRun) worker(ctx context.Context, id uint64) {
	rnd := rand.New(rand.NewPCG(id, uint64(time.Now().UnixNano())))
	var c *smtpConn
	onConn := 0
	defer func() {
		if c != nil {
			c.quit()
		}
	}()
	for ctx.Err() == nil {
		seq := r.next.Add(1) - 1
		if seq >= r.cfg.Messages {
			return
		}
		if c == nil {
			var err error
			if c, err = r.connect(ctx); err != nil {
				r.fail(err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			r.conns.Add(1)
			onConn = 0
		}
		env := r.envelope(rnd, seq)
		start := time.Now()
		res := c.send(env, r.pipeline)
		r.record(env, res, time.Since(start))
		onConn++
		if isNetErr(res.err) {
			c.conn.Close()
			c = nil
		} else if r.cfg.PerConn > 0 && onConn >= r.cfg.PerConn {
			c.quit()
			c = nil
		}
	}
}

// envelope builds message seq; its recipients go round the users.
func (r *smtpRun) envelope(rnd *rand.Rand, seq int64) envelope {
	rcpts := make([]string, r.cfg.Rcpts)
	users := make([]int, r.cfg.Rcpts)
	for j := range rcpts {
		users[j] = r.userOf(seq, j)
		rcpts[j] = UserAddress(users[j], r.cfg.Domain)
	}
	return envelope{from: r.cfg.From, rcpts: rcpts, users: users, msg: r.gen.Message(rnd, seq, r.cfg.From, rcpts)}
}

func (r *smtpRun) userOf(seq int64, j int) int {
	return int((seq*int64(r.cfg.Rcpts) + int64(j)) % int64(r.cfg.Users))
}

func (r *smtpRun) record(env envelope, res result, d time.Duration) {
	for _, rep := range res.rcptErrs {
		r.rcptErrs.Inc(fmt.Sprint(rep.Code))
	}
	if res.err != nil {
		r.fail(res.err)
		return
	}
	r.ok.Add(1)
	r.bytes.Add(int64(env.msg.Size()))
	r.lat.Add(d)
	for _, i := range res.accepted {
		r.delivered[env.users[i]].Add(1)
	}
}

func (r *smtpRun) fail(err error) {
	r.failed.Add(1)
	r.errs.Inc(errorKey(err))
}

// progress prints a line about once a second until the returned function
// is called.
func (r *smtpRun) progress(start time.Time) func() {
	if r.cfg.Progress == nil {
		return func() {}
	}
	return startTicker(func(last int64, dt time.Duration) int64 {
		done := r.ok.Load()
		fmt.Fprintf(r.cfg.Progress, "smtp: %6.1fs sent %d/%d  %.0f msg/s  errors %d\n",
			time.Since(start).Seconds(), done, r.cfg.Messages, float64(done-last)/dt.Seconds(), r.failed.Load())
		return done
	})
}

func (r *smtpRun) summary(elapsed time.Duration) *SMTPSummary {
	return &SMTPSummary{
		Mode:        "smtp",
		Addr:        r.cfg.Addr,
		Concurrency: r.cfg.Concurrency,
		Pipelining:  r.pipeline,
		Mix:         r.cfg.Mix.String(),
		Messages:    r.ok.Load(),
		Failed:      r.failed.Load(),
		Bytes:       r.bytes.Load(),
		Connections: r.conns.Load(),
		Seconds:     round3(elapsed.Seconds()),
		MsgsPerSec:  rate(r.ok.Load(), elapsed),
		Latency:     r.lat.Summarize(),
		Errors:      r.errs.Map(),
		RcptErrors:  r.rcptErrs.Map(),
	}
}

// wait waits until every accepted message has arrived.
func (r *smtpRun) wait(ctx context.Context, start time.Time, sending time.Duration) (*E2ESummary, error) {
	delivered := make([]int64, len(r.delivered))
	for i := range r.delivered {
		delivered[i] = r.delivered[i].Load()
	}
	if err := r.cfg.Wait.Wait(ctx, delivered, r.cfg.Progress); err != nil {
		return nil, fmt.Errorf("smtp: waiting for delivery: %w", err)
	}
	total := time.Since(start)
	return &E2ESummary{
		Via:          r.cfg.Wait.Describe(),
		Seconds:      round3(total.Seconds()),
		MsgsPerSec:   rate(r.ok.Load(), total),
		AfterSending: round3((total - sending).Seconds()),
	}, nil
}
