package loadgen

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 100; i++ {
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	cases := []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {90, 90 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0.1, time.Millisecond}}
	for _, c := range cases {
		if got := Percentile(s, c.p); got != c.want {
			t.Errorf("Percentile(1..100 ms, %v) = %v, want %v", c.p, got, c.want)
		}
	}
	if got := Percentile(nil, 50); got != 0 {
		t.Errorf("Percentile(nil) = %v", got)
	}
	one := []time.Duration{7}
	for _, p := range []float64{1, 50, 99, 100} {
		if got := Percentile(one, p); got != 7 {
			t.Errorf("Percentile([7], %v) = %v", p, got)
		}
	}
	// Nearest rank on 10 values: p90 is the 9th, p99 the 10th.
	ten := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if got := Percentile(ten, 90); got != 9 {
		t.Errorf("p90 of 1..10 = %v, want 9", got)
	}
	if got := Percentile(ten, 99); got != 10 {
		t.Errorf("p99 of 1..10 = %v, want 10", got)
	}
}

func TestLatenciesConcurrent(t *testing.T) {
	var l Latencies
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 250 {
				l.Add(time.Duration(g*250+i+1) * time.Millisecond)
			}
		})
	}
	wg.Wait()
	s := l.Summarize()
	if l.Len() != 1000 || s.P50 != 500 || s.P90 != 900 || s.P99 != 990 || s.Max != 1000 {
		t.Errorf("1..1000 ms: len %d, summary %+v", l.Len(), s)
	}
	var empty Latencies
	if s := empty.Summarize(); s != (LatencySummary{}) {
		t.Errorf("empty summary %+v", s)
	}
}

func TestCounter(t *testing.T) {
	var c Counter
	if c.Map() != nil || c.Total() != 0 {
		t.Error("new counter not empty")
	}
	for _, k := range []string{"550", "550", "network", "451"} {
		c.Inc(k)
	}
	m := c.Map()
	if m["550"] != 2 || m["network"] != 1 || m["451"] != 1 || c.Total() != 4 {
		t.Errorf("counts %v total %d", m, c.Total())
	}
}

func TestSMTPSummaryOutput(t *testing.T) {
	s := &SMTPSummary{
		Mode: "smtp", Addr: "127.0.0.1:25", Concurrency: 20, Pipelining: true, Mix: "4096:1",
		Messages: 990, Failed: 10, Seconds: 2, MsgsPerSec: 495,
		Latency:  LatencySummary{P50: 1.5, P90: 3, P99: 9.25, Max: 20},
		Errors:   map[string]int64{"550": 7, "network": 3},
		EndToEnd: &E2ESummary{Via: "imap status x", Seconds: 3, MsgsPerSec: 330, AfterSending: 1},
	}
	var js bytes.Buffer
	if err := WriteJSON(&js, s); err != nil {
		t.Fatal(err)
	}
	if strings.Count(js.String(), "\n") != 1 {
		t.Errorf("JSON is not one line: %q", js.String())
	}
	var back map[string]any
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	lat := back["latency"].(map[string]any)
	e2e := back["end_to_end"].(map[string]any)
	errs := back["errors"].(map[string]any)
	if back["messages"] != 990.0 || back["msgs_per_sec"] != 495.0 || lat["p99_ms"] != 9.25 ||
		e2e["msgs_per_sec"] != 330.0 || errs["550"] != 7.0 {
		t.Errorf("JSON %s", js.String())
	}
	var txt bytes.Buffer
	s.WriteText(&txt)
	for _, want := range []string{"990 accepted, 10 failed", "msgs/s     495.0", "p99 9.25 ms", "550=7 network=3", "end to end 3.000 s, 330.0 msgs/s"} {
		if !strings.Contains(txt.String(), want) {
			t.Errorf("text summary lacks %q:\n%s", want, txt.String())
		}
	}
}

func TestIMAPSummaryOutput(t *testing.T) {
	s := &IMAPSummary{
		Mode: "imap", Addr: "a", Concurrency: 2, Ops: 30, Seconds: 1, OpsPerSec: 30,
		PerOp: map[string]OpSummary{
			OpFetchBody: {Ops: 20, OpsPerSec: 20, Latency: LatencySummary{P50: 1, P90: 2, P99: 3, Max: 4}},
			OpSelect:    {Ops: 10, OpsPerSec: 10, Failed: 1},
		},
		Errors: map[string]int64{"select:NO": 1},
	}
	var txt bytes.Buffer
	if err := s.WriteText(&txt); err != nil {
		t.Fatal(err)
	}
	out := txt.String()
	if !strings.Contains(out, "30 ops (30.0 ops/s)") || !strings.Contains(out, "select:NO=1") ||
		strings.Index(out, "fetch-body") > strings.Index(out, "select ") {
		t.Errorf("text summary:\n%s", out)
	}
}

func TestParseOpMix(t *testing.T) {
	m, err := ParseOpMix(DefaultOpMix)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.ops) != len(allOps) || m.total != 100 {
		t.Errorf("default mix: %d ops, total weight %d", len(m.ops), m.total)
	}
	for _, bad := range []string{"", "select", "select:x", "frobnicate:3", "select:0", "expunge:5"} {
		if _, err := ParseOpMix(bad); err == nil {
			t.Errorf("ParseOpMix(%q) succeeded", bad)
		}
	}
}
