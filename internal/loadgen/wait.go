package loadgen

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// A Waiter tells when sent messages have arrived, for end-to-end figures.
type Waiter interface {
	// Baseline records what is there before the run.
	Baseline(ctx context.Context) error
	// Wait returns once delivered[i] more messages than at the baseline
	// have arrived for user i, or fails when ctx ends or time runs out.
	Wait(ctx context.Context, delivered []int64, progress io.Writer) error
	// Describe says what is waited for, for the summary.
	Describe() string
}

// pollInterval is how often a Waiter looks.
const pollInterval = 100 * time.Millisecond

// IMAPWaiter waits until each user's INBOX, by STATUS (MESSAGES), holds
// every message sent to that user.
type IMAPWaiter struct {
	Addr    string
	Logins  []string // the login of user i
	Pass    string
	Timeout time.Duration // the longest wait after sending; 0 for 10 minutes

	base    []int64
	clients []*imapclient.Client
}

// Describe implements Waiter.
func (w *IMAPWaiter) Describe() string { return "imap status " + w.Addr }

// Baseline implements Waiter: it logs in as every user and keeps the
// connections for Wait.
func (w *IMAPWaiter) Baseline(ctx context.Context) error {
	w.base = make([]int64, len(w.Logins))
	w.clients = make([]*imapclient.Client, len(w.Logins))
	for i := range w.Logins {
		n, err := w.count(i)
		if err != nil {
			return err
		}
		w.base[i] = n
	}
	return nil
}

// count returns how many messages user i's INBOX holds, reconnecting when
// needed.
func (w *IMAPWaiter) count(i int) (int64, error) {
	if w.clients[i] == nil {
		c, err := LoginIMAP(w.Addr, w.Logins[i], w.Pass)
		if err != nil {
			return 0, err
		}
		w.clients[i] = c
	}
	st, err := w.clients[i].Status("INBOX", &imap.StatusOptions{NumMessages: true}).Wait()
	if err != nil {
		w.clients[i].Close()
		w.clients[i] = nil
		return 0, fmt.Errorf("STATUS INBOX as %s: %w", w.Logins[i], err)
	}
	return int64(*st.NumMessages), nil
}

// Wait implements Waiter.
func (w *IMAPWaiter) Wait(ctx context.Context, delivered []int64, progress io.Writer) error {
	defer w.close()
	deadline := time.Now().Add(orDefault(w.Timeout, 10*time.Minute))
	pending := map[int]bool{}
	for i := range w.Logins {
		if delivered[i] > 0 {
			pending[i] = true
		}
	}
	var want, have int64
	for _, d := range delivered {
		want += d
	}
	tick := newThrottle(time.Second)
	for len(pending) > 0 {
		have = want
		for i := range pending {
			n, err := w.count(i)
			if err != nil {
				return err
			}
			if got := n - w.base[i]; got >= delivered[i] {
				delete(pending, i)
			} else {
				have -= delivered[i] - got
			}
		}
		if len(pending) == 0 {
			break
		}
		if progress != nil && tick.ready() {
			fmt.Fprintf(progress, "wait: %d/%d readable over IMAP\n", have, want)
		}
		if err := sleepUntil(ctx, deadline); err != nil {
			return fmt.Errorf("%d of %d messages readable over IMAP: %w", have, want, err)
		}
	}
	return nil
}

func (w *IMAPWaiter) close() {
	for _, c := range w.clients {
		if c != nil {
			c.Logout().Wait()
			c.Close()
		}
	}
}

// MaildirWaiter waits until the Maildirs under Root hold every message
// sent: it counts the files in every new/ and cur/ directory below Root.
type MaildirWaiter struct {
	Root    string
	Timeout time.Duration // the longest wait after sending; 0 for 10 minutes

	base int64
}

// Describe implements Waiter.
func (w *MaildirWaiter) Describe() string { return "maildir " + w.Root }

// Baseline implements Waiter.
func (w *MaildirWaiter) Baseline(ctx context.Context) error {
	n, err := CountMaildir(w.Root)
	w.base = n
	return err
}

// Wait implements Waiter.
func (w *MaildirWaiter) Wait(ctx context.Context, delivered []int64, progress io.Writer) error {
	var want int64
	for _, d := range delivered {
		want += d
	}
	deadline := time.Now().Add(orDefault(w.Timeout, 10*time.Minute))
	tick := newThrottle(time.Second)
	for {
		n, err := CountMaildir(w.Root)
		if err != nil {
			return err
		}
		if n-w.base >= want {
			return nil
		}
		if progress != nil && tick.ready() {
			fmt.Fprintf(progress, "wait: %d/%d in %s\n", n-w.base, want, w.Root)
		}
		if err := sleepUntil(ctx, deadline); err != nil {
			return fmt.Errorf("%d of %d messages in %s: %w", n-w.base, want, w.Root, err)
		}
	}
}

// CountMaildir counts the files in the new/ and cur/ directories below
// root. A root that does not exist yet holds 0.
func CountMaildir(root string) (int64, error) {
	var n int64
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == root && errorsIsNotExist(err) {
				return fs.SkipAll
			}
			return err
		}
		if d.Type().IsRegular() {
			if p := filepath.Base(filepath.Dir(path)); p == "new" || p == "cur" {
				n++
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("count maildir files: %w", err)
	}
	return n, nil
}

// sleepUntil sleeps one poll interval, or fails when ctx ends or deadline
// has passed.
func sleepUntil(ctx context.Context, deadline time.Time) error {
	if time.Now().After(deadline) {
		return context.DeadlineExceeded
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(pollInterval):
		return nil
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// throttle says yes at most once per interval.
type throttle struct {
	every time.Duration
	last  time.Time
}

func newThrottle(every time.Duration) *throttle { return &throttle{every: every, last: time.Now()} }

func (t *throttle) ready() bool {
	if time.Since(t.last) < t.every {
		return false
	}
	t.last = time.Now()
	return true
}
