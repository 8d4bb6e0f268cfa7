package diskspace

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const mib = 1 << 20

// fakeDisk is a filesystem whose free space the test sets.
type fakeDisk struct {
	free atomic.Uint64
	err  atomic.Pointer[error]
}

func (d *fakeDisk) statfs(string) (uint64, error) {
	if e := d.err.Load(); e != nil {
		return 0, *e
	}
	return d.free.Load(), nil
}

// logBuf collects log lines; safe for Watch's goroutine.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := strings.TrimSpace(l.b.String())
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func newGuard(t *testing.T, minFree, reserve uint64) (*Guard, *fakeDisk, *logBuf) {
	t.Helper()
	d := &fakeDisk{}
	lb := &logBuf{}
	g := New(Config{Dir: "/data", MinFree: minFree, Reserve: reserve, Statfs: d.statfs,
		Log: slog.New(slog.NewTextHandler(lb, nil)), Interval: 10 * time.Millisecond})
	return g, d, lb
}

func TestThresholds(t *testing.T) {
	tests := []struct {
		name             string
		minFree, reserve uint64
		free             uint64
		floor            uint64
		low, critical    bool
		level            Level
	}{
		{"plenty", 200 * mib, 100 * mib, 500 * mib, 200 * mib, false, false, OK},
		{"at the floor", 200 * mib, 100 * mib, 200 * mib, 200 * mib, false, false, OK},
		{"one byte under the floor", 200 * mib, 100 * mib, 200*mib - 1, 200 * mib, true, false, Low},
		{"at the reserve", 200 * mib, 100 * mib, 100 * mib, 200 * mib, true, false, Low},
		{"under the reserve", 200 * mib, 100 * mib, 100*mib - 1, 200 * mib, true, true, Critical},
		{"full", 200 * mib, 100 * mib, 0, 200 * mib, true, true, Critical},
		// min-free-space below the store's reserve: the reserve is the floor.
		{"small min-free-space, above reserve", 10 * mib, 100 * mib, 150 * mib, 100 * mib, false, false, OK},
		{"small min-free-space, under reserve", 10 * mib, 100 * mib, 50 * mib, 100 * mib, true, true, Critical},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, d, _ := newGuard(t, tt.minFree, tt.reserve)
			d.free.Store(tt.free)
			if g.Floor() != tt.floor {
				t.Errorf("Floor = %d, want %d", g.Floor(), tt.floor)
			}
			err := g.Check()
			if (err != nil) != tt.low {
				t.Errorf("Check = %v, want low %v", err, tt.low)
			}
			if tt.low {
				var le *LowError
				if !errors.Is(err, ErrLow) || !errors.As(err, &le) || le.Free != tt.free || le.Need != tt.floor || le.Dir != "/data" {
					t.Errorf("Check = %#v, want a *LowError (ErrLow) with free %d, need %d, dir /data", err, tt.free, tt.floor)
				}
			}
			if g.Critical() != tt.critical {
				t.Errorf("Critical = %v, want %v", g.Critical(), tt.critical)
			}
			if l := g.Poll(); l != tt.level || g.Level() != tt.level {
				t.Errorf("Poll = %v, Level = %v, want %v", l, g.Level(), tt.level)
			}
		})
	}
}

// TestCheckIsNow: Check and Critical see a change at once, without waiting
// for a poll.
func TestCheckIsNow(t *testing.T) {
	g, d, _ := newGuard(t, 200*mib, 100*mib)
	d.free.Store(300 * mib)
	if err := g.Check(); err != nil {
		t.Fatal(err)
	}
	d.free.Store(150 * mib)
	if err := g.Check(); !errors.Is(err, ErrLow) {
		t.Errorf("Check after the disk filled = %v, want ErrLow", err)
	}
	d.free.Store(50 * mib)
	if !g.Critical() {
		t.Error("Critical after the disk filled = false")
	}
	d.free.Store(300 * mib)
	if err := g.Check(); err != nil || g.Critical() {
		t.Errorf("after space was freed: Check = %v, Critical = %v", err, g.Critical())
	}
}

func TestNilGuard(t *testing.T) {
	var g *Guard
	if g.Check() != nil || g.Critical() {
		t.Error("a nil Guard refuses")
	}
	if r := strings.NewReader("x"); g.CheckAtEnd(r) != io.Reader(r) {
		t.Error("a nil Guard wraps readers")
	}
}

// TestStatfsFailure: a failing statfs refuses nothing, and is logged once
// however often it fails.
func TestStatfsFailure(t *testing.T) {
	g, d, lb := newGuard(t, 200*mib, 100*mib)
	e := errors.New("statfs broke")
	d.err.Store(&e)
	for range 3 {
		if err := g.Check(); err != nil {
			t.Fatalf("Check with a failing statfs = %v, want nil", err)
		}
		if g.Poll() != OK {
			t.Fatal("Poll with a failing statfs changed the level")
		}
	}
	if n := len(lb.lines()); n != 1 {
		t.Errorf("%d log lines for a lasting statfs failure, want 1:\n%s", n, strings.Join(lb.lines(), "\n"))
	}
}

// TestPollLogsChanges: one line per change of level, none while it stays.
func TestPollLogsChanges(t *testing.T) {
	g, d, lb := newGuard(t, 200*mib, 100*mib)
	steps := []struct {
		free uint64
		want string // substring of the new line, "" for none
	}{
		{300 * mib, ""},
		{300 * mib, ""},
		{150 * mib, "level=WARN msg=\"disk space below min-free-space"},
		{140 * mib, ""},
		{50 * mib, "level=ERROR msg=\"disk space below the database's reserve"},
		{10 * mib, ""},
		{150 * mib, "local delivery resumes"},
		{250 * mib, "level=INFO msg=\"disk space recovered"},
		{250 * mib, ""},
		{0, "level=ERROR"},
		{1 << 40, "disk space recovered"},
	}
	seen := 0
	for i, s := range steps {
		d.free.Store(s.free)
		g.Poll()
		lines := lb.lines()
		switch {
		case s.want == "" && len(lines) != seen:
			t.Fatalf("step %d (free %d): logged %q, want nothing", i, s.free, lines[seen:])
		case s.want != "" && len(lines) != seen+1:
			t.Fatalf("step %d (free %d): logged %q, want one line with %q", i, s.free, lines[seen:], s.want)
		case s.want != "" && !strings.Contains(lines[seen], s.want):
			t.Fatalf("step %d (free %d): logged %q, want %q in it", i, s.free, lines[seen], s.want)
		}
		seen = len(lines)
	}
	if !strings.Contains(lb.lines()[0], "free=157286400 min_free_space=209715200 reserve=104857600") {
		t.Errorf("the line lacks the figures: %s", lb.lines()[0])
	}
}

func TestCheckAtEnd(t *testing.T) {
	g, d, _ := newGuard(t, 200*mib, 100*mib)
	d.free.Store(300 * mib)
	body := strings.Repeat("message line\r\n", 1000)

	got, err := io.ReadAll(g.CheckAtEnd(strings.NewReader(body)))
	if err != nil || string(got) != body {
		t.Fatalf("with room: %d bytes, %v; want the body whole and no error", len(got), err)
	}

	// The disk fills while the body is read: the end fails.
	r := g.CheckAtEnd(strings.NewReader(body))
	buf := make([]byte, 100)
	if _, err := r.Read(buf); err != nil {
		t.Fatal(err)
	}
	d.free.Store(150 * mib)
	_, err = io.ReadAll(r)
	if !errors.Is(err, ErrLow) {
		t.Errorf("disk filled during the read: error %v, want ErrLow at the end", err)
	}

	// A read error other than the end passes through untouched.
	boom := errors.New("client went away")
	if _, err := io.ReadAll(g.CheckAtEnd(io.MultiReader(strings.NewReader("x"), errReader{boom}))); err != boom {
		t.Errorf("error %v, want the reader's own", err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// TestWatch: the watcher runs before ahead of each poll and notices a change
// by itself; it stops with its context.
func TestWatch(t *testing.T) {
	g, d, lb := newGuard(t, 200*mib, 100*mib)
	d.free.Store(300 * mib)
	ctx, cancel := context.WithCancel(context.Background())
	var befores atomic.Int32
	done := make(chan struct{})
	go func() {
		g.Watch(ctx, func() { befores.Add(1) })
		close(done)
	}()
	d.free.Store(50 * mib)
	waitFor(t, "the watcher to see the disk full", func() bool { return g.Level() == Critical })
	d.free.Store(300 * mib)
	waitFor(t, "the watcher to see the space back", func() bool { return g.Level() == OK })
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not return after its context ended")
	}
	if befores.Load() == 0 {
		t.Error("before never ran")
	}
	if n := len(lb.lines()); n != 2 {
		t.Errorf("%d log lines, want 2 (critical, recovered):\n%s", n, strings.Join(lb.lines(), "\n"))
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFreeAndNeed runs on the real filesystem of a temporary directory.
func TestFreeAndNeed(t *testing.T) {
	dir := t.TempDir()
	free, err := Free(dir)
	if err != nil || free == 0 {
		t.Fatalf("Free(%s) = %d, %v", dir, free, err)
	}
	if err := Need(dir, 0); err != nil {
		t.Errorf("Need 0 = %v", err)
	}
	err = Need(dir, math.MaxUint64)
	var le *LowError
	if !errors.As(err, &le) || le.Dir != dir || le.Need != math.MaxUint64 || le.Free == 0 {
		t.Fatalf("Need(max) = %v, want a *LowError with the figures", err)
	}
	if msg := err.Error(); !strings.Contains(msg, dir) || !strings.Contains(msg, "bytes (") {
		t.Errorf("message %q lacks the directory or the sizes", msg)
	}
	if _, err := Free(dir + "/missing"); err == nil {
		t.Error("Free of a missing directory: no error")
	}
	// A directory still to be made is judged by its parent's filesystem.
	if err := Need(dir+"/not/yet", 1); err != nil {
		t.Errorf("Need of a directory still to be made: %v", err)
	}
	if err := Need(dir+"/not/yet", math.MaxUint64); !errors.Is(err, ErrLow) {
		t.Errorf("Need(max) of a directory still to be made: %v, want ErrLow", err)
	}
}

func TestBytes(t *testing.T) {
	if got := Bytes(160 << 20); got != "167772160 bytes (160.0 MiB)" {
		t.Errorf("Bytes = %q", got)
	}
}
