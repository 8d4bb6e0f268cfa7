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
	"github.com/emersion/go-imap/v2/imapclient"
)

// FillConfig configures filling INBOXes by APPEND.
type FillConfig struct {
	Addr        string
	Logins      []string
	Pass        string
	Messages    int // each INBOX is filled up to this many messages
	Concurrency int
	Mix         Mix
	Progress    io.Writer
}

// FillSummary is the result of a fill.
type FillSummary struct {
	Mode       string           `json:"mode"`
	Addr       string           `json:"addr"`
	Users      int              `json:"users"`
	Target     int              `json:"target_per_user"`
	Appended   int64            `json:"appended"`
	Failed     int64            `json:"failed"`
	Seconds    float64          `json:"seconds"`
	MsgsPerSec float64          `json:"msgs_per_sec"`
	Errors     map[string]int64 `json:"errors,omitempty"`
}

// fillRun is the state of one fill: jobs holds one user index per message
// to append.
type fillRun struct {
	cfg      FillConfig
	gen      *Generator
	jobs     chan int
	appended atomic.Int64
	failed   atomic.Int64
	errs     Counter
}

// Fill appends messages to each user's INBOX until it holds cfg.Messages;
// INBOXes that hold as many already are left alone.
func Fill(ctx context.Context, cfg FillConfig) (*FillSummary, error) {
	if len(cfg.Logins) == 0 || cfg.Messages < 1 || cfg.Concurrency < 1 || len(cfg.Mix) == 0 {
		return nil, errors.New("imap-fill: need users, a message count, concurrency and sizes")
	}
	need, err := fillNeeds(cfg)
	if err != nil {
		return nil, err
	}
	r := &fillRun{cfg: cfg, gen: NewGenerator(cfg.Mix), jobs: queueJobs(need)}
	total := int64(len(r.jobs))
	start := time.Now()
	stop := r.progress(start, total)
	var wg sync.WaitGroup
	for i := range cfg.Concurrency {
		wg.Go(func() { r.worker(ctx, uint64(i)) })
	}
	wg.Wait()
	stop()
	elapsed := time.Since(start)
	return &FillSummary{
		Mode: "imap-fill", Addr: cfg.Addr, Users: len(cfg.Logins), Target: cfg.Messages,
		Appended: r.appended.Load(), Failed: r.failed.Load(),
		Seconds: round3(elapsed.Seconds()), MsgsPerSec: rate(r.appended.Load(), elapsed),
		Errors: r.errs.Map(),
	}, nil
}

// fillNeeds returns how many messages each user's INBOX lacks.
func fillNeeds(cfg FillConfig) ([]int, error) {
	need := make([]int, len(cfg.Logins))
	for i, login := range cfg.Logins {
		c, err := LoginIMAP(cfg.Addr, login, cfg.Pass)
		if err != nil {
			return nil, fmt.Errorf("imap-fill: %w", err)
		}
		st, err := c.Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
		c.Logout().Wait()
		c.Close()
		if err != nil {
			return nil, fmt.Errorf("imap-fill: STATUS INBOX as %s: %w", login, err)
		}
		need[i] = max(0, cfg.Messages-int(*st.NumMessages))
	}
	return need, nil
}

// queueJobs returns a closed channel holding user i need[i] times,
// interleaved so that the workers spread over the users.
func queueJobs(need []int) chan int {
	total := 0
	for _, n := range need {
		total += n
	}
	jobs := make(chan int, total)
	left := append([]int(nil), need...)
	for total > 0 {
		for i := range left {
			if left[i] > 0 {
				jobs <- i
				left[i]--
				total--
			}
		}
	}
	close(jobs)
	return jobs
}

// worker appends messages, with one connection per user it meets.
func (r *fillRun) worker(ctx context.Context, id uint64) {
	rnd := rand.New(rand.NewPCG(id, uint64(time.Now().UnixNano())))
	clients := map[int]*imapclient.Client{}
	defer func() {
		for _, c := range clients {
			c.Logout().Wait()
			c.Close()
		}
	}()
	var seq int64
	for u := range r.jobs {
		if ctx.Err() != nil {
			return
		}
		seq++
		if err := r.appendOne(clients, u, rnd, seq); err != nil {
			r.failed.Add(1)
			r.errs.Inc(imapErrorKey(err))
			continue
		}
		r.appended.Add(1)
	}
}

func (r *fillRun) appendOne(clients map[int]*imapclient.Client, u int, rnd *rand.Rand, seq int64) error {
	c := clients[u]
	if c == nil || isClosed(c) {
		var err error
		if c, err = LoginIMAP(r.cfg.Addr, r.cfg.Logins[u], r.cfg.Pass); err != nil {
			return err
		}
		clients[u] = c
	}
	m := r.gen.Message(rnd, seq, "bench@relay-bench.test", []string{r.cfg.Logins[u]}).Bytes()
	cmd := c.Append("INBOX", int64(len(m)), nil)
	if _, err := cmd.Write(m); err != nil {
		cmd.Close()
		return fmt.Errorf("APPEND: %w", err)
	}
	if err := cmd.Close(); err != nil {
		return fmt.Errorf("APPEND: %w", err)
	}
	_, err := cmd.Wait()
	return err
}

func (r *fillRun) progress(start time.Time, total int64) func() {
	if r.cfg.Progress == nil {
		return func() {}
	}
	return startTicker(func(last int64, dt time.Duration) int64 {
		done := r.appended.Load()
		fmt.Fprintf(r.cfg.Progress, "imap-fill: %6.1fs appended %d/%d  %.0f msg/s  errors %d\n",
			time.Since(start).Seconds(), done, total, float64(done-last)/dt.Seconds(), r.failed.Load())
		return done
	})
}
