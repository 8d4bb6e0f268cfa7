// Package diskspace watches the free space of the filesystem that holds the
// relay's data, as Postfix's queue_minfree does.
//
// Two thresholds apply. Below the floor (min-free-space, never less than the
// reserve) the relay takes no new mail: SMTP answers 452 4.3.1, IMAP APPEND
// and `relay sendmail` are refused, and what was accepted before stays as it
// is. Below the reserve, the room the database itself needs to keep growing
// without a fault (store.Reserve), the work that copies bodies waits too
// (local delivery). Reads never depend on either.
//
// Check and Critical ask the filesystem at the moment of the call (one
// statfs, cheap enough for every SMTP MAIL); Watch polls in the background
// and logs one line each time the level changes, so that an operator sees
// when mail starts being refused and when it is taken again.
package diskspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"time"
)

// ErrLow is what Check's errors match (errors.Is): free space is below the
// floor.
var ErrLow = errors.New("free disk space below min-free-space")

// LowError says how much space there is and how much was needed.
type LowError struct {
	Dir        string
	Free, Need uint64
}

func (e *LowError) Error() string {
	return fmt.Sprintf("%s free on the filesystem of %s, %s needed", Bytes(e.Free), e.Dir, Bytes(e.Need))
}

// Is makes errors.Is(err, ErrLow) hold.
func (e *LowError) Is(target error) bool { return target == ErrLow }

// Bytes formats n as bytes with the MiB beside it, as the relay's messages
// about disk space give it.
func Bytes(n uint64) string {
	return fmt.Sprintf("%d bytes (%.1f MiB)", n, float64(n)/(1<<20))
}

// Need checks that the filesystem of dir has at least need bytes free, and
// otherwise returns a *LowError. A dir that does not exist yet is judged by
// its nearest existing parent, where it will be made. A failed statfs is
// returned as it is.
func Need(dir string, need uint64) error {
	at := dir
	free, err := Free(at)
	for errors.Is(err, fs.ErrNotExist) && filepath.Dir(at) != at {
		at = filepath.Dir(at)
		free, err = Free(at)
	}
	if err != nil {
		return err
	}
	if free < need {
		return &LowError{Dir: dir, Free: free, Need: need}
	}
	return nil
}

// Level is where the free space stands.
type Level int32

// Levels, from best to worst.
const (
	// OK: at or above the floor.
	OK Level = iota
	// Low: below the floor; new mail is refused.
	Low
	// Critical: below the reserve; local delivery waits as well.
	Critical
)

// DefaultInterval is how often Watch polls.
const DefaultInterval = 500 * time.Millisecond

// Config sets up a Guard.
type Config struct {
	// Dir is a directory on the watched filesystem (the data directory).
	Dir string
	// MinFree is min-free-space in bytes: new mail needs this much free.
	// A value below Reserve counts as Reserve.
	MinFree uint64
	// Reserve is what the database needs free to grow without a fault.
	Reserve uint64
	// Interval is Watch's poll interval (default DefaultInterval).
	Interval time.Duration
	// Log receives one line per change of level; nil logs nothing.
	Log *slog.Logger
	// Statfs returns the free bytes of dir's filesystem; nil is Free.
	// Tests set it to play a filling disk.
	Statfs func(dir string) (uint64, error)
}

// Guard answers whether there is room for more, for one filesystem. A nil
// *Guard has room for everything: packages take one optionally.
type Guard struct {
	cfg Config
	cur atomic.Int32 // Level at the last Poll
	// statErr is the text of the last failed statfs, so that a lasting
	// failure is logged once.
	statErr atomic.Value
}

// New returns a Guard. Nothing runs until Watch.
func New(cfg Config) *Guard {
	cfg.MinFree = max(cfg.MinFree, cfg.Reserve)
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Statfs == nil {
		cfg.Statfs = Free
	}
	g := &Guard{cfg: cfg}
	g.statErr.Store("")
	return g
}

// Floor is the free space new mail needs: min-free-space, or the reserve if
// that is larger.
func (g *Guard) Floor() uint64 { return g.cfg.MinFree }

// level asks the filesystem now. A statfs that fails (it should not, on a
// directory the relay holds open) counts as OK: refusing all mail because
// of it would be worse than the risk; Poll logs the failure.
func (g *Guard) level() (Level, uint64, error) {
	free, err := g.cfg.Statfs(g.cfg.Dir)
	switch {
	case err != nil:
		return OK, 0, err
	case free < g.cfg.Reserve:
		return Critical, free, nil
	case free < g.cfg.MinFree:
		return Low, free, nil
	}
	return OK, free, nil
}

// Check returns a *LowError (errors.Is ErrLow) when the free space is below
// the floor now, and nil otherwise.
func (g *Guard) Check() error {
	if g == nil {
		return nil
	}
	l, free, _ := g.level()
	if l == OK {
		return nil
	}
	return &LowError{Dir: g.cfg.Dir, Free: free, Need: g.cfg.MinFree}
}

// Critical reports whether the free space is below the reserve now.
func (g *Guard) Critical() bool {
	if g == nil {
		return false
	}
	l, _, _ := g.level()
	return l == Critical
}

// CheckAtEnd returns a reader of r that checks the space again when r ends,
// and fails with Check's error instead of io.EOF when it went low meanwhile.
// Wrapped around a message body that is committed once read, it refuses the
// message before the commit, so that nothing acknowledged is lost.
func (g *Guard) CheckAtEnd(r io.Reader) io.Reader {
	if g == nil {
		return r
	}
	return &endCheck{r: r, g: g}
}

type endCheck struct {
	r io.Reader
	g *Guard
}

func (e *endCheck) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		if lerr := e.g.Check(); lerr != nil {
			return n, lerr
		}
	}
	return n, err
}

// Poll asks the filesystem, records the level and logs a change of it.
func (g *Guard) Poll() Level {
	l, free, err := g.level()
	if err != nil {
		if msg := err.Error(); g.statErr.Swap(msg) != msg {
			g.cfg.Log.Error("cannot read free disk space", "dir", g.cfg.Dir, "error", err)
		}
		return Level(g.cur.Load())
	}
	g.statErr.Store("")
	prev := Level(g.cur.Swap(int32(l)))
	if prev == l {
		return l
	}
	args := []any{"dir", g.cfg.Dir, "free", free, "min_free_space", g.cfg.MinFree, "reserve", g.cfg.Reserve}
	switch {
	case l == Critical:
		g.cfg.Log.Error("disk space below the database's reserve: new mail refused, local delivery paused until space is freed", args...)
	case l == Low && prev == OK:
		g.cfg.Log.Warn("disk space below min-free-space: new mail refused until space is freed", args...)
	case l == Low:
		g.cfg.Log.Warn("disk space above the database's reserve: local delivery resumes; new mail still refused", args...)
	default:
		g.cfg.Log.Info("disk space recovered: accepting mail again", args...)
	}
	return l
}

// Level is the level the last Poll found.
func (g *Guard) Level() Level { return Level(g.cur.Load()) }

// Watch polls until ctx is done, every Interval. before, when not nil, runs
// ahead of each poll (the store's preallocation, which uses up space that
// the poll should see).
func (g *Guard) Watch(ctx context.Context, before func()) {
	t := time.NewTicker(g.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if before != nil {
				before()
			}
			g.Poll()
		}
	}
}
