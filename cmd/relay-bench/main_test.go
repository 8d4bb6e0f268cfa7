package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/emersion/go-smtp"
)

func TestUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"frob"}, {"smtp", "extra"}, {"smtp", "-nope"}} {
		var stderr bytes.Buffer
		err := run(t.Context(), args, io.Discard, &stderr)
		if !errors.Is(err, errUsage) && !strings.Contains(err.Error(), "flag provided but not defined") {
			t.Errorf("run %q = %v, want a usage error", args, err)
		}
		if stderr.Len() == 0 {
			t.Errorf("run %q printed nothing on stderr", args)
		}
	}
	for _, args := range [][]string{{"smtp", "-size", "big"}, {"smtp", "-mix", "4k:x"}, {"smtp", "-auth", "nopass"}, {"imap", "-ops", "frob:1"}, {"imap", "-users", ","}} {
		if err := run(t.Context(), args, io.Discard, io.Discard); err == nil {
			t.Errorf("run %q succeeded", args)
		}
	}
}

func TestParseUsers(t *testing.T) {
	got, err := parseUsers("3", "example.test")
	if want := []string{"user0@example.test", "user1@example.test", "user2@example.test"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("parseUsers(3) = %v, %v", got, err)
	}
	got, err = parseUsers("a@x, b@y", "ignored")
	if want := []string{"a@x", "b@y"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("parseUsers(list) = %v, %v", got, err)
	}
	if _, err := parseUsers("0", "x"); err == nil {
		t.Error("parseUsers(0) succeeded")
	}
}

// discard is a go-smtp backend that reads and drops every message.
type discard struct{}

func (discard) NewSession(*smtp.Conn) (smtp.Session, error) { return discardSession{}, nil }

type discardSession struct{}

func (discardSession) Reset()                               {}
func (discardSession) Logout() error                        { return nil }
func (discardSession) Mail(string, *smtp.MailOptions) error { return nil }
func (discardSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (discardSession) Data(r io.Reader) error               { _, err := io.Copy(io.Discard, r); return err }

func TestSMTPJSON(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := smtp.NewServer(discard{})
	go srv.Serve(ln)
	defer srv.Close()
	var stdout, stderr bytes.Buffer
	args := []string{"smtp", "-addr", ln.Addr().String(), "-n", "50", "-c", "4", "-mix", "1k:1,4k:1", "-pipelining", "-json", "-quiet"}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("%v; stderr %s", err, stderr.String())
	}
	var sum struct {
		Messages   int64   `json:"messages"`
		MsgsPerSec float64 `json:"msgs_per_sec"`
		Pipelining bool    `json:"pipelining"`
		Latency    struct {
			P99 float64 `json:"p99_ms"`
		} `json:"latency"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, stdout.String())
	}
	if sum.Messages != 50 || sum.MsgsPerSec <= 0 || !sum.Pipelining || sum.Latency.P99 <= 0 || stderr.Len() != 0 {
		t.Errorf("summary %+v, stderr %q", sum, stderr.String())
	}
}

// TestIMAPFillAndRun fills two INBOXes of go-imap's in-memory server by
// APPEND, then runs a mix of operations on them, both with JSON summaries.
func TestIMAPFillAndRun(t *testing.T) {
	const pass = "bench-password"
	logins := []string{"user0@localhost", "user1@localhost"}
	mem := imapmemserver.New()
	for _, l := range logins {
		u := imapmemserver.NewUser(l, pass)
		if err := u.Create("INBOX", nil); err != nil {
			t.Fatal(err)
		}
		mem.AddUser(u)
	}
	srv := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		InsecureAuth: true,
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	addr := ln.Addr().String()

	var stdout, stderr bytes.Buffer
	fill := []string{"imap-fill", "-addr", addr, "-users", "2", "-pass", pass, "-n", "20", "-c", "2", "-mix", "1k:1,4k:1", "-json", "-quiet"}
	if err := run(t.Context(), fill, &stdout, &stderr); err != nil {
		t.Fatalf("%v; stderr %s", err, stderr.String())
	}
	var filled struct {
		Appended int64 `json:"appended"`
		Failed   int64 `json:"failed"`
		Target   int   `json:"target_per_user"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &filled); err != nil {
		t.Fatalf("imap-fill stdout is not one JSON object: %v\n%s", err, stdout.String())
	}
	if filled.Appended != 40 || filled.Failed != 0 || filled.Target != 20 {
		t.Errorf("imap-fill summary %+v, want 40 appended to two INBOXes of 20", filled)
	}

	stdout.Reset()
	load := []string{"imap", "-addr", addr, "-users", "2", "-pass", pass, "-n", "60", "-c", "2", "-json", "-quiet"}
	if err := run(t.Context(), load, &stdout, &stderr); err != nil {
		t.Fatalf("%v; stderr %s", err, stderr.String())
	}
	var ran struct {
		Ops    int64 `json:"ops"`
		Failed int64 `json:"failed"`
		PerOp  map[string]struct {
			Ops int64 `json:"ops"`
		} `json:"per_op"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &ran); err != nil {
		t.Fatalf("imap stdout is not one JSON object: %v\n%s", err, stdout.String())
	}
	if ran.Ops < 60 || ran.Failed != 0 || len(ran.PerOp) < 3 {
		t.Errorf("imap summary: %d operations, %d failed, %d kinds; want at least 60, none failed, a mix", ran.Ops, ran.Failed, len(ran.PerOp))
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr %q with -quiet", stderr.String())
	}
	t.Logf("imap summary: %s", stdout.String())
}
