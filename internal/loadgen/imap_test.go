package loadgen

import (
	"testing"
	"time"
)

// Fill and the operation mix against go-imap's in-memory server.
func TestFillAndRunIMAP(t *testing.T) {
	logins := []string{"user0@localhost", "user1@localhost"}
	m := startIMAP(t, logins, "pw")
	m.deliver(t, logins[:1], []byte("Subject: old\r\n\r\nold\r\n"))
	fill := FillConfig{Addr: m.addr, Logins: logins, Pass: "pw", Messages: 60, Concurrency: 3, Mix: FixedMix(2048)}
	fs, err := Fill(t.Context(), fill)
	if err != nil {
		t.Fatal(err)
	}
	if fs.Appended != 119 || fs.Failed != 0 {
		t.Errorf("fill appended %d, failed %d; want 119, 0", fs.Appended, fs.Failed)
	}
	for _, l := range logins {
		if n := m.inboxCount(t, l); n != 60 {
			t.Errorf("%s has %d messages after the fill, want 60", l, n)
		}
	}
	if fs, err = Fill(t.Context(), fill); err != nil || fs.Appended != 0 {
		t.Errorf("second fill appended %d, %v; want 0", fs.Appended, err)
	}

	mix, err := ParseOpMix(DefaultOpMix)
	if err != nil {
		t.Fatal(err)
	}
	cfg := IMAPConfig{Addr: m.addr, Concurrency: 4, Ops: 400, Logins: logins, Pass: "pw", Mix: mix, ExpungeAppended: true}
	sum, err := RunIMAP(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Failed != 0 {
		t.Errorf("%d operations failed: %v", sum.Failed, sum.Errors)
	}
	var total int64
	for _, op := range allOps {
		o, ok := sum.PerOp[op]
		if !ok {
			t.Errorf("no %s in 400 operations", op)
		}
		total += o.Ops
	}
	if total != 400 || sum.PerOp[OpExpunge].Ops != sum.PerOp[OpAppend].Ops || sum.Ops != 400+sum.PerOp[OpExpunge].Ops {
		t.Errorf("%d operations of the mix, %d appends, %d expunges, %d in all", total, sum.PerOp[OpAppend].Ops, sum.PerOp[OpExpunge].Ops, sum.Ops)
	}
	for _, l := range logins {
		if n := m.inboxCount(t, l); n != 60 {
			t.Errorf("%s has %d messages after the run with expunge, want 60", l, n)
		}
	}

	cfg.Ops, cfg.Duration = 0, 300*time.Millisecond
	start := time.Now()
	if sum, err = RunIMAP(t.Context(), cfg); err != nil || sum.Ops == 0 {
		t.Errorf("timed run: %v, %d ops", err, sum.Ops)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a 300 ms run took %v", d)
	}
}

func TestRunIMAPBadLogin(t *testing.T) {
	m := startIMAP(t, []string{"user0@localhost"}, "pw")
	mix, _ := ParseOpMix(DefaultOpMix)
	_, err := RunIMAP(t.Context(), IMAPConfig{Addr: m.addr, Concurrency: 1, Ops: 1, Logins: []string{"user0@localhost"}, Pass: "bad", Mix: mix})
	if err == nil {
		t.Error("run with a bad password succeeded")
	}
}
