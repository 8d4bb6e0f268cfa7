package dsn_test

import (
	"bytes"
	stdtextproto "net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/emersion/go-message/textproto"

	"github.com/relaymail/relay/relay/dsn"
	"github.com/relaymail/relay/spool"
)

// The fields each header section of a notice may hold: anything else in
// it came from a value that broke out of its field.
var (
	topFields = []string{"From", "To", "Subject", "Date", "Message-Id", "Auto-Submitted", "Mime-Version", "Content-Type"}
	msgFields = []string{"Reporting-Mta", "Original-Envelope-Id", "X-Relay-Queue-Id", "Arrival-Date"}
	rcptField = []string{"Original-Recipient", "Final-Recipient", "Action", "Status", "Remote-Mta", "Diagnostic-Code",
		"Last-Attempt-Date", "Will-Retry-Until"}
)

// FuzzBuild feeds arbitrary original messages and recipient, diagnostic,
// envelope and host fields to Build and parses the result back with
// go-message: it must be a multipart/report (RFC 6522) of three parts,
// with exactly one per-recipient block per recipient (RFC 3464 §2.1),
// no header field but the expected ones in any section, and under RET=FULL
// the original unchanged (under HDRS a prefix of it).
func FuzzBuild(f *testing.F) {
	for _, s := range loadBuildSeeds(f, "../../testdata/fuzz/FuzzBuild") {
		f.Add(s.orig, s.rcpt, s.orcpt, s.diag, s.envid, s.host, s.flags)
	}
	f.Add([]byte(original), "bob@b.test", "rfc822;Bob@B.test", "550 5.1.1 no such user", "env-77", "relay.a.test", uint8(0))
	f.Add([]byte(originalUTF8), "zoë@b.test", "utf-8;zoë@b.test", "550 5.1.1\r\n unknown", "", "relay.a.test", uint8(3))
	f.Fuzz(func(t *testing.T, orig []byte, rcpt, orcpt, diag, envid, host string, flags uint8) {
		actions := []dsn.Action{dsn.Failed, dsn.Delayed, dsn.Delivered, dsn.Relayed}
		rep := failedReport("HDRS")
		rep.ReportingMTA, rep.EnvID, rep.UTF8 = host, envid, flags&1 != 0
		if flags&2 != 0 {
			rep.Ret = "FULL"
		}
		rc := dsn.Recipient{Address: rcpt, ORcpt: orcpt, Action: actions[flags>>2&3], Reply: spool.NewReply(550, envid, diag),
			Expired: flags&64 != 0, RemoteMTA: host, LastAttempt: now}
		rep.Recipients = []dsn.Recipient{rc}
		if flags&16 != 0 {
			rep.Recipients = append(rep.Recipients, rc)
		}
		if flags&32 != 0 {
			rep.Recipients = nil
		}
		var buf bytes.Buffer
		err := dsn.Build(&buf, rep, bytes.NewReader(orig))
		if len(rep.Recipients) == 0 {
			if err == nil {
				t.Fatal("Build without recipients succeeded")
			}
			return
		}
		if err != nil {
			t.Fatalf("Build: %v", err)
		}
		r := parse(t, buf.Bytes())
		onlyFields(t, "message header", r.header.Header, topFields)
		onlyFields(t, "per-message block", r.perMessage, msgFields)
		if len(r.perRcpt) != len(rep.Recipients) {
			t.Fatalf("%d per-recipient blocks for %d recipients:\n%s", len(r.perRcpt), len(rep.Recipients), r.parts[1].body)
		}
		for _, h := range r.perRcpt {
			onlyFields(t, "per-recipient block", h, rcptField)
			if got := h.Get("Action"); got != string(rc.Action) {
				t.Fatalf("Action %q, want %q", got, rc.Action)
			}
		}
		wantStatus := map[bool]string{false: "message/delivery-status", true: "message/global-delivery-status"}[rep.UTF8]
		if r.parts[1].mediaType != wantStatus {
			t.Fatalf("status part %s, want %s", r.parts[1].mediaType, wantStatus)
		}
		got := r.parts[2].body
		if rep.Ret == "FULL" && !bytes.Equal(got, orig) {
			t.Fatalf("RET=FULL returned %q, want the original %q", got, orig)
		}
		if rep.Ret != "FULL" && !bytes.HasPrefix(orig, got) {
			t.Fatalf("RET=HDRS returned %q, not a prefix of the original", got)
		}
	})
}

// onlyFields fails unless every field of h is one of allowed, each once.
func onlyFields(t *testing.T, what string, h textproto.Header, allowed []string) {
	t.Helper()
	seen := map[string]bool{}
	for f := h.Fields(); f.Next(); {
		k := stdtextproto.CanonicalMIMEHeaderKey(f.Key())
		if !slices.Contains(allowed, k) {
			t.Fatalf("%s has a field %q: %q", what, f.Key(), f.Value())
		}
		if seen[k] {
			t.Fatalf("%s has %s twice", what, k)
		}
		seen[k] = true
	}
}

type buildSeed struct {
	orig                           []byte
	rcpt, orcpt, diag, envid, host string
	flags                          uint8
}

// loadBuildSeeds reads FuzzBuild corpus files: "go test fuzz v1", then
// []byte(...), five string(...) lines and a uint8(...) line.
func loadBuildSeeds(tb testing.TB, dir string) []buildSeed {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		tb.Fatal(err)
	}
	var seeds []buildSeed
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) != 8 || lines[0] != "go test fuzz v1" {
			tb.Fatalf("%s: want a header and seven values", f)
		}
		val := func(i int, typ string) string {
			v, ok1 := strings.CutPrefix(lines[i], typ+"(")
			v, ok2 := strings.CutSuffix(v, ")")
			if !ok1 || !ok2 {
				tb.Fatalf("%s: line %d is not %s(...)", f, i, typ)
			}
			return v
		}
		str := func(i int, typ string) string {
			s, err := strconv.Unquote(val(i, typ))
			if err != nil {
				tb.Fatalf("%s: line %d: %v", f, i, err)
			}
			return s
		}
		// go test writes a uint8 as byte('c').
		c, err := strconv.Unquote(val(7, "byte"))
		if err != nil {
			tb.Fatalf("%s: flags: %v", f, err)
		}
		n, _ := utf8.DecodeRuneInString(c)
		seeds = append(seeds, buildSeed{[]byte(str(1, "[]byte")), str(2, "string"), str(3, "string"), str(4, "string"),
			str(5, "string"), str(6, "string"), uint8(n)})
	}
	if len(seeds) == 0 {
		tb.Fatalf("no seeds in %s", dir)
	}
	return seeds
}

// TestInjectedValuesStayInTheirFields guards the cleaning of values: an
// ENVID, ORCPT, address or host holding CR LF (ENVID and ORCPT come
// xtext-decoded from the client) must neither add fields to the notice nor
// make Build fail, which would lose the notice.
func TestInjectedValuesStayInTheirFields(t *testing.T) {
	rep := failedReport("HDRS")
	rep.EnvID = "env\r\nX-Evil: 1"
	rep.To = "alice@a.test>\r\nBcc: <victim@c.test"
	rep.ReportingMTA = "relay.a.test\r\nX-Host: 1"
	rep.Recipients[0].ORcpt = "rfc822;bob@b.test\r\n\r\nFinal-Recipient: rfc822; forged@x.test"
	rep.Recipients[1].Address = "carol@c.test\r\nAction: delivered"
	r := parse(t, build(t, rep, original))
	onlyFields(t, "message header", r.header.Header, topFields)
	onlyFields(t, "per-message block", r.perMessage, msgFields)
	if len(r.perRcpt) != 2 {
		t.Fatalf("%d per-recipient blocks, want 2:\n%s", len(r.perRcpt), r.parts[1].body)
	}
	for _, h := range r.perRcpt {
		onlyFields(t, "per-recipient block", h, rcptField)
	}
	if got := r.perMessage.Get("Original-Envelope-Id"); got != "env X-Evil: 1" {
		t.Errorf("Original-Envelope-Id %q", got)
	}
}

// TestNoRecipients: a report on nobody is an error, not a panic.
func TestNoRecipients(t *testing.T) {
	rep := failedReport("HDRS")
	rep.Recipients = nil
	if err := dsn.Build(&bytes.Buffer{}, rep, strings.NewReader(original)); err != dsn.ErrNoRecipients {
		t.Errorf("Build without recipients: %v, want ErrNoRecipients", err)
	}
}
