package spool

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

func sampleEnvelopes() []*Message {
	at := time.Date(2026, 12, 1, 20, 30, 0, 123456789, time.UTC)
	return []*Message{
		{ID: "01J", Arrived: at, From: "", Rcpts: []Recipient{{Address: "a@b.test", State: Pending, NextAttempt: at}}},
		{
			ID: "01JXYZ", Arrived: at, ClientIP: "192.0.2.1", Helo: "mx.example", From: "s@example.org",
			Params: MailParams{Size: 4096, Body: "8BITMIME", SMTPUTF8: true, Ret: "HDRS", EnvID: "env 1", Auth: "s@example.org"},
			Rcpts: []Recipient{
				{Address: "ü@b.test", Notify: []string{"SUCCESS", "DELAY"}, ORcpt: "rfc822;u@b.test", State: Delivered, Attempts: 1},
				{Address: "c@remote.test", State: Pending, Attempts: 3, NextAttempt: at.Add(time.Hour),
					LastError: "451 4.4.1 try later", RemoteMTA: "mx.remote.test", DelayNotified: true},
				{Address: "d@remote.test", Notify: []string{"NEVER", "X-OTHER"}, State: Failed, Attempts: 7, LastError: "550 5.1.1 no"},
			},
			Size: 50 << 20, Hold: true, Due: at.Add(time.Hour),
		},
		// Recipients whose every field is empty take a byte a field.
		{ID: "x", Rcpts: []Recipient{{}, {}, {}}},
	}
}

func TestEnvelopeRecord(t *testing.T) {
	for _, m := range sampleEnvelopes() {
		var got Message
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
		var got Message
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
		"unknown format":  {0x02, 0},
		"format only":     {envFormat},
		"truncated":       good[:len(good)-1],
		"trailing bytes":  append(append([]byte(nil), good...), 0),
		"bad bool":        badBool(),
		"too many rcpts":  tooManyRcpts(),
		"not json either": []byte("{not json"),
	} {
		var m Message
		if err := parseEnvelope(v, &m); err == nil {
			t.Errorf("%s: parsed %x as %+v, want an error", name, v, m)
		}
	}
}

// badBool is an envelope whose SMTPUTF8 byte is 2.
func badBool() []byte {
	m := &Message{ID: "x", Params: MailParams{SMTPUTF8: true}}
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
	b := appendEnvelope(nil, &Message{ID: "x"})
	b = b[:len(b)-1]                   // drop the count of 0
	return append(b, 0xc0, 0x84, 0x3d) // uvarint 1,000,000
}

func FuzzEnvelopeRecord(f *testing.F) {
	for _, m := range sampleEnvelopes() {
		f.Add(appendEnvelope(nil, m))
		b, _ := json.Marshal(m)
		f.Add(b)
	}
	f.Add([]byte{envFormat})
	f.Fuzz(func(t *testing.T, v []byte) {
		var m Message
		if parseEnvelope(v, &m) != nil || (len(v) > 0 && v[0] == '{') {
			return
		}
		// What parses must survive encoding and parsing again.
		var again Message
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
			var got Message
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
			var got Message
			if err := json.Unmarshal(v, &got); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(js)), "bytes/record")
	})
}
