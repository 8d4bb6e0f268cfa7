package badger

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/relaymail/relay/internal/record"
	"github.com/relaymail/relay/spool"
)

func sampleEnvelopes() []*spool.Message {
	at := time.Date(2026, 12, 1, 20, 30, 0, 123456789, time.UTC)
	return []*spool.Message{
		{ID: "01J", Arrived: at, From: "", Rcpts: []spool.Recipient{{Address: "a@b.test", State: spool.Pending, NextAttempt: at}}},
		{
			ID: "01JXYZ", Arrived: at, ClientIP: "192.0.2.1", Helo: "mx.example", From: "s@example.org",
			Params: spool.MailParams{Size: 4096, Body: "8BITMIME", SMTPUTF8: true, Ret: "HDRS", EnvID: "env 1", Auth: "s@example.org"},
			Rcpts: []spool.Recipient{
				{Address: "ü@b.test", Notify: []string{"SUCCESS", "DELAY"}, ORcpt: "rfc822;u@b.test", State: spool.Delivered, Attempts: 1},
				{Address: "c@remote.test", State: spool.Pending, Attempts: 3, NextAttempt: at.Add(time.Hour),
					Reply: spool.NewReply(451, "4.4.1", "try later"), RemoteMTA: "mx.remote.test", DelayNotified: true},
				{Address: "d@remote.test", Notify: []string{"NEVER", "X-OTHER"}, State: spool.Failed, Attempts: 7, Reply: spool.NewReply(550, "5.1.1", "no")},
			},
			Size: 50 << 20, Hold: true, Due: at.Add(time.Hour),
		},
		// Recipients whose every field is empty take a byte a field.
		{ID: "x", Rcpts: []spool.Recipient{{}, {}, {}}},
	}
}

func TestEnvelopeRecord(t *testing.T) {
	for _, m := range sampleEnvelopes() {
		var got spool.Message
		if err := parseEnvelope(appendEnvelope(nil, m), &got); err != nil {
			t.Fatalf("parse(append(%+v)): %v", m, err)
		}
		if !reflect.DeepEqual(&got, m) {
			t.Errorf("round trip:\n got %+v\nwant %+v", &got, m)
		}
	}
}

// Envelopes written before the binary form are JSON; they must still read.
func TestEnvelopeRecordJSON(t *testing.T) {
	for _, want := range sampleEnvelopes() {
		b, err := json.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		var got spool.Message
		if err := parseEnvelope(b, &got); err != nil {
			t.Fatal(err)
		}
		// JSON keeps times as written; compare them as instants.
		a, _ := json.Marshal(&got)
		if string(a) != string(b) {
			t.Errorf("JSON envelope:\n got %s\nwant %s", a, b)
		}
	}
}

func TestEnvelopeRecordMalformed(t *testing.T) {
	good := appendEnvelope(nil, sampleEnvelopes()[1])
	for name, v := range map[string][]byte{
		"empty":           nil,
		"unknown format":  {0x03, 0},
		"format only":     {envFormat},
		"truncated":       good[:len(good)-1],
		"trailing bytes":  append(append([]byte(nil), good...), 0),
		"bad bool":        badBool(),
		"too many rcpts":  tooManyRcpts(),
		"not json either": []byte("{not json"),
	} {
		var m spool.Message
		if err := parseEnvelope(v, &m); err == nil {
			t.Errorf("%s: parsed %x as %+v, want an error", name, v, m)
		}
	}
}

// badBool is an envelope whose SMTPUTF8 byte is 2.
func badBool() []byte {
	m := &spool.Message{ID: "x", Params: spool.MailParams{SMTPUTF8: true}}
	b := appendEnvelope(nil, m)
	// format, id (2), arrived (1), ip, helo, from (1 each), size, body (1
	// each): the SMTPUTF8 byte is at offset 9.
	if b[9] != 1 {
		panic("badBool: layout changed")
	}
	b[9] = 2
	return b
}

// tooManyRcpts claims a million recipients in a short record.
func tooManyRcpts() []byte {
	b := appendEnvelope(nil, &spool.Message{ID: "x"})
	b = b[:len(b)-1]                   // drop the count of 0
	return append(b, 0xc0, 0x84, 0x3d) // uvarint 1,000,000
}

func FuzzEnvelopeRecord(f *testing.F) {
	for _, m := range sampleEnvelopes() {
		f.Add(appendEnvelope(nil, m))
		b, _ := json.Marshal(m)
		f.Add(b)
		lastErrors := make([]string, len(m.Rcpts))
		for i, r := range m.Rcpts {
			lastErrors[i] = r.Reply.String()
		}
		f.Add(appendEnvelopeV1(m, lastErrors))
	}
	f.Add([]byte{envFormat})
	f.Add([]byte{envFormatV1})
	f.Fuzz(func(t *testing.T, v []byte) {
		var m spool.Message
		if parseEnvelope(v, &m) != nil || (len(v) > 0 && v[0] == '{') {
			return
		}
		// What parses must survive encoding and parsing again.
		var again spool.Message
		if err := parseEnvelope(appendEnvelope(nil, &m), &again); err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("%x parsed as %+v; encoded and parsed again: %+v, %v", v, m, again, err)
		}
	})
}

func BenchmarkEnvelopeRecord(b *testing.B) {
	m := sampleEnvelopes()[1]
	js, _ := json.Marshal(m)
	bin := appendEnvelope(nil, m)
	b.Run("binary", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var got spool.Message
			if err := parseEnvelope(appendEnvelope(nil, m), &got); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(bin)), "bytes/record")
	})
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			v, _ := json.Marshal(m)
			var got spool.Message
			if err := json.Unmarshal(v, &got); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(js)), "bytes/record")
	})
}

// appendEnvelopeV1 writes m in format 0x01, with lastError for each
// recipient's reply, as the relay wrote envelopes before replies were
// typed.
func appendEnvelopeV1(m *spool.Message, lastError []string) []byte {
	b := []byte{envFormatV1}
	b = record.AppendString(b, m.ID)
	b = record.AppendTime(b, m.Arrived)
	b = record.AppendString(b, m.ClientIP)
	b = record.AppendString(b, m.Helo)
	b = record.AppendString(b, m.From)
	p := m.Params
	b = record.AppendVarint(b, p.Size)
	b = record.AppendString(b, p.Body)
	b = record.AppendBool(b, p.SMTPUTF8)
	b = record.AppendString(b, p.Ret)
	b = record.AppendString(b, p.EnvID)
	b = record.AppendString(b, p.Auth)
	b = record.AppendVarint(b, m.Size)
	b = record.AppendBool(b, m.Hold)
	b = record.AppendTime(b, m.Due)
	b = record.AppendUvarint(b, uint64(len(m.Rcpts)))
	for i, r := range m.Rcpts {
		b = record.AppendString(b, r.Address)
		b = record.AppendUvarint(b, uint64(len(r.Notify)))
		for _, n := range r.Notify {
			b = record.AppendString(b, n)
		}
		b = record.AppendString(b, r.ORcpt)
		b = record.AppendString(b, string(r.State))
		b = record.AppendVarint(b, int64(r.Attempts))
		b = record.AppendTime(b, r.NextAttempt)
		b = record.AppendString(b, lastError[i])
		b = record.AppendString(b, r.RemoteMTA)
		b = record.AppendBool(b, r.DelayNotified)
	}
	return b
}

// The last errors older relays wrote, and the replies they read as.
var legacyReplies = []struct {
	lastError string
	want      spool.Reply
}{
	{"", spool.Reply{}},
	{"451 4.4.1 try later", spool.Reply{Code: 451, Enhanced: "4.4.1", Text: "try later"}},
	{"550 5.1.1 no such user", spool.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user", Permanent: true}},
	{"421 closing connection", spool.Reply{Code: 421, Text: "closing connection"}},
	{"554", spool.Reply{Code: 554, Permanent: true}},
	{"556 5.1.10 b.test does not accept mail (null MX)", spool.Reply{Code: 556, Enhanced: "5.1.10", Text: "b.test does not accept mail (null MX)", Permanent: true}},
	// An expiry had no basic code; its class gives one.
	{"4.4.7 message expired after 2h0m0s; last error: 451 4.2.0 busy",
		spool.Reply{Code: 451, Enhanced: "4.4.7", Text: "message expired after 2h0m0s; last error: 451 4.2.0 busy"}},
	{"5.0.0 gone", spool.Reply{Code: 550, Enhanced: "5.0.0", Text: "gone", Permanent: true}},
	// A local failure carried Go error text, which is not kept.
	{"451 4.3.0 local delivery failed: write /var/relay/000042.vlog: no space left on device", spool.LocalTrouble},
	{"operator note", spool.Reply{Code: 451, Text: "operator note"}},
	{"4511 4.2.0 not a code", spool.Reply{Code: 451, Text: "4511 4.2.0 not a code"}},
	{"451 4.x.0 odd", spool.Reply{Code: 451, Text: "4.x.0 odd"}},
}

// Envelopes in format 0x01 still read, their last error converted once
// into a typed reply, and the fields after it still in place.
func TestEnvelopeRecordV1(t *testing.T) {
	at := time.Date(2026, 12, 1, 20, 30, 0, 0, time.UTC)
	m := &spool.Message{ID: "01JV1", Arrived: at, From: "s@example.org", Size: 10}
	var lastErrors []string
	for i, tc := range legacyReplies {
		m.Rcpts = append(m.Rcpts, spool.Recipient{Address: fmt.Sprintf("r%d@b.test", i), State: spool.Pending, Attempts: i,
			NextAttempt: at, RemoteMTA: "mx.b.test", DelayNotified: i%2 == 1})
		lastErrors = append(lastErrors, tc.lastError)
	}
	var got spool.Message
	if err := parseEnvelope(appendEnvelopeV1(m, lastErrors), &got); err != nil {
		t.Fatalf("parse a 0x01 envelope: %v", err)
	}
	for i, tc := range legacyReplies {
		m.Rcpts[i].Reply = tc.want
	}
	if !reflect.DeepEqual(&got, m) {
		t.Errorf("0x01 envelope:\n got %+v\nwant %+v", &got, m)
	}
	// Written again, it is a current record with the same content.
	var again spool.Message
	if b := appendEnvelope(nil, &got); b[0] != envFormat || parseEnvelope(b, &again) != nil || !reflect.DeepEqual(&again, m) {
		t.Errorf("0x01 envelope written again: %+v", &again)
	}
}

// JSON envelopes from before the binary form carry "last_error".
func TestEnvelopeRecordLegacyJSON(t *testing.T) {
	for _, tc := range legacyReplies {
		js := fmt.Sprintf(`{"id":"01JSON","arrived":"2026-03-01T12:00:00Z","from":"s@example.org","params":{},`+
			`"recipients":[{"address":"a@b.test","state":"pending","attempts":2,"next_attempt":"2026-03-01T12:05:00Z",`+
			`"last_error":%q,"remote_mta":"mx.b.test"}],"size":5}`, tc.lastError)
		var m spool.Message
		if err := parseEnvelope([]byte(js), &m); err != nil {
			t.Fatalf("parse %s: %v", js, err)
		}
		if len(m.Rcpts) != 1 || m.Rcpts[0].Reply != tc.want || m.Rcpts[0].Attempts != 2 || m.Rcpts[0].RemoteMTA != "mx.b.test" || m.Size != 5 {
			t.Errorf("JSON envelope with last error %q: %+v, want reply %+v", tc.lastError, m, tc.want)
		}
	}
}

// In JSON (`relay queue list --json`, the admin API) a recipient keeps
// "last_error", the rendered reply that scripts read, beside the typed
// "reply", which is what a reader gets back.
func TestRecipientJSON(t *testing.T) {
	r := spool.Recipient{Address: "a@b.test", State: spool.Pending, Reply: spool.NewReply(451, "4.2.0", "mailbox busy\nline two")}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatal(err)
	}
	if fields["last_error"] != "451 4.2.0 mailbox busy line two" {
		t.Errorf("last_error %q in %s, want the reply on one line", fields["last_error"], b)
	}
	if reply, _ := fields["reply"].(map[string]any); reply["code"] != 451.0 || reply["enhanced"] != "4.2.0" || reply["text"] != "mailbox busy\nline two" {
		t.Errorf("reply %v in %s", fields["reply"], b)
	}
	var back spool.Recipient
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, r) {
		t.Errorf("read back %+v (%v), want %+v", back, err, r)
	}
	b, _ = json.Marshal(spool.Recipient{Address: "a@b.test"})
	if !strings.Contains(string(b), `"last_error":""`) || strings.Contains(string(b), `"reply"`) {
		t.Errorf("recipient without a reply: %s, want an empty last_error and no reply", b)
	}
}

func TestReplyString(t *testing.T) {
	for _, tc := range []struct {
		r            spool.Reply
		want, status string
	}{
		{spool.Reply{}, "", "4.0.0"},
		{spool.NewReply(550, "5.1.1", "no such user"), "550 5.1.1 no such user", "5.1.1"},
		{spool.NewReply(421, "", "closing"), "421 closing", "4.0.0"},
		{spool.NewReply(554, "", ""), "554", "5.0.0"},
		{spool.TempReply("4.4.1", "a\r\nb\x00c"), "451 4.4.1 a  b c", "4.4.1"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("%#v.String() = %q, want %q", tc.r, got, tc.want)
		}
		if got := tc.r.Status(); got != tc.status {
			t.Errorf("%#v.Status() = %q, want %q", tc.r, got, tc.status)
		}
	}
	if !spool.NewReply(550, "5.1.1", "x").Permanent || spool.NewReply(451, "4.2.0", "x").Permanent || spool.TempReply("4.3.0", "x").Code != 451 {
		t.Error("NewReply and spool.TempReply: permanence follows the code's class")
	}
}
