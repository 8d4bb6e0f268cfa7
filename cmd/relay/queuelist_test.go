package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaymail/relay/relay"
	"github.com/relaymail/relay/spool"
)

// fillQueue queues n held messages in the Badger database in data, from
// several writers at once so that group commit makes it quick. Held, they
// stay queued however long the test runs.
func fillQueue(t *testing.T, data string, n int) {
	t.Helper()
	st, err := relay.OpenStorage(context.Background(), "badger", data, relay.StoreOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	sp := spool.New(st, nil)
	reply := spool.Reply{Code: 451, Enhanced: "4.4.1", Text: "mx.example.test: connection refused"}
	const workers = 64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				m := &spool.Message{ID: sp.NewID(), From: "sender@example.org", ClientIP: "192.0.2.1", Helo: "client.example.org", Hold: true,
					Rcpts: []spool.Recipient{{Address: fmt.Sprintf("user%d@example.test", i), Attempts: 3, Reply: reply}}}
				if err := sp.Enqueue(m, strings.NewReader("Subject: queued\r\n\r\nbody\r\n")); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
}

// procStatus reads a kB field of /proc/PID/status, in bytes.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// TestQueueListLarge: `relay queue list` over a queue of 200,000 messages
// streams it. The server's peak resident memory while it lists (its
// high-water mark, reset just before) grows by less than 64 MiB; building
// the whole list in memory, as it once did, took several hundred. The
// client reads the JSON array as it comes, and --limit stops early.
func TestQueueListLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a queue of 200,000 messages")
	}
	t.Parallel()
	const n = 200_000
	data := workDir(t) + "/data"
	start := time.Now()
	fillQueue(t, data, n)
	t.Logf("queued %d messages in %v", n, time.Since(start).Round(time.Millisecond))
	srv := startServer(t, data)
	pid := srv.cmd.Process.Pid
	// Writing 5 to clear_refs resets the peak resident size (VmHWM) to
	// the current one (proc(5)).
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Skipf("cannot reset the server's peak memory: %v", err)
	}
	before := procStatus(t, pid, "VmRSS")

	cmd := exec.Command(relayBinary(t), "queue", "list", "--json", "--data", data)
	cmd.Env = testEnv()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Decode the array element by element, as a consumer of a large
	// listing would, checking each envelope on the way.
	dec := json.NewDecoder(bufio.NewReaderSize(out, 1<<20))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		t.Fatalf("queue list --json starts with %v (%v), want [", tok, err)
	}
	got, last := 0, ""
	for dec.More() {
		var m struct {
			ID    string `json:"id"`
			Hold  bool   `json:"hold"`
			Rcpts []struct {
				Reply struct{ Code int } `json:"reply"`
			} `json:"recipients"`
		}
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("message %d: %v", got, err)
		}
		if m.ID <= last || !m.Hold || len(m.Rcpts) != 1 || m.Rcpts[0].Reply.Code != 451 {
			t.Fatalf("message %d out of order or not as queued: %+v", got, m)
		}
		last = m.ID
		got++
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim(']') {
		t.Fatalf("queue list --json ends with %v (%v), want ]", tok, err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("queue list: %v\n%s", err, stderr.String())
	}
	took := time.Since(start)
	peak := procStatus(t, pid, "VmHWM")
	t.Logf("listed %d messages in %v; server resident %.1f MiB before, peak %.1f MiB while listing",
		got, took.Round(time.Millisecond), float64(before)/(1<<20), float64(peak)/(1<<20))
	if got != n {
		t.Errorf("listed %d messages, want %d", got, n)
	}
	if grew := peak - before; grew > 64<<20 {
		t.Errorf("the server's peak resident memory grew by %.1f MiB while listing %d messages, want under 64 MiB",
			float64(grew)/(1<<20), n)
	}

	// --limit and a filter answer at once, whatever lies behind.
	res := mustRelay(t, "queue", "list", "--limit", "3", "--state", "held", "--data", data)
	if c := strings.Count(res.stdout, "@example.test  held, 3 tries: 451 4.4.1"); c != 3 || !strings.Contains(res.stdout, "-- 3 message(s), stopped at --limit 3") {
		t.Errorf("queue list --limit 3 --state held:\n%s", res.stdout)
	}
	if res := mustRelay(t, "queue", "list", "--state", "deferred", "--data", data); res.stdout != "no queued message matches\n" {
		t.Errorf("queue list --state deferred on a queue of held messages: %q", res.stdout)
	}
}
