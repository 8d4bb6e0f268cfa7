package mailbox

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

func TestMessageRecord(t *testing.T) {
	date := time.Date(2026, 12, 1, 20, 30, 0, 0, time.UTC)
	for _, m := range []Message{
		{Blob: "01JXYZ", Size: 4096, Date: date},
		{Blob: "b", Size: 0, Date: time.Unix(0, 0).UTC(), Flags: []string{`\Seen`}},
		{Blob: "01JABC", Size: 50 << 20, Date: date, Flags: []string{`\Seen`, `\Flagged`, "$Label1", "käse"}},
		{Blob: "", Size: -1, Date: time.Date(1969, 7, 20, 20, 17, 40, 0, time.UTC)},
	} {
		var got Message
		if err := parseMessage(appendMessage(nil, m), &got); err != nil {
			t.Fatalf("parse(append(%+v)): %v", m, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("round trip: got %+v, want %+v", got, m)
		}
	}
}

// Records written before the binary form are JSON; they must still read.
func TestMessageRecordJSON(t *testing.T) {
	want := Message{Blob: "01J", Size: 12, Date: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Flags: []string{`\Answered`}}
	b, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var got Message
	if err := parseMessage(b, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestMessageRecordMalformed(t *testing.T) {
	good := appendMessage(nil, Message{Blob: "blob", Size: 7, Date: time.Unix(1e9, 0), Flags: []string{"a", "b"}})
	for name, v := range map[string][]byte{
		"empty":          nil,
		"unknown format": {0x02, 0, 0, 0, 0},
		"truncated":      good[:len(good)-1],
		"trailing bytes": append(append([]byte(nil), good...), 0),
		"blob too long":  {msgFormat, 0x7f, 'a'},
		"too many flags": {msgFormat, 0, 0, 0, 0x7f},
	} {
		var m Message
		if err := parseMessage(v, &m); err == nil {
			t.Errorf("%s: parsed %x as %+v, want an error", name, v, m)
		}
	}
}

func FuzzMessageRecord(f *testing.F) {
	f.Add(appendMessage(nil, Message{Blob: "b", Size: 1, Date: time.Unix(1, 0), Flags: []string{`\Seen`}}))
	f.Add([]byte(`{"b":"x","s":1,"d":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte{msgFormat})
	f.Fuzz(func(t *testing.T, v []byte) {
		var m Message
		if parseMessage(v, &m) != nil || (len(v) > 0 && v[0] == '{') {
			return
		}
		// What parses must survive encoding and parsing again.
		var again Message
		if err := parseMessage(appendMessage(nil, m), &again); err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("%x parsed as %+v; encoded and parsed again: %+v, %v", v, m, again, err)
		}
	})
}

var sampleMailboxes = []Mailbox{
	{ID: 1, User: "u@example.test", Name: "INBOX", UIDValidity: 1764620000, UIDNext: 1, Subscribed: true},
	{ID: 1 << 40, User: "ü@example.test", Name: "Archive/2026", SpecialUse: `\Archive`, UIDValidity: 1<<32 - 1,
		UIDNext: 100001, Messages: 100000, Size: 5 << 30, Unseen: 7, FirstRecent: 99990},
}

func TestMailboxRecord(t *testing.T) {
	for _, mb := range sampleMailboxes {
		var got Mailbox
		if err := parseMailbox(appendMailbox(nil, &mb), &got); err != nil {
			t.Fatalf("parse(append(%+v)): %v", mb, err)
		}
		if got != mb {
			t.Errorf("round trip: got %+v, want %+v", got, mb)
		}
		// Mailboxes written before the binary form are JSON.
		js, _ := json.Marshal(mb)
		got = Mailbox{}
		if err := parseMailbox(js, &got); err != nil || got != mb {
			t.Errorf("JSON %s: got %+v, %v", js, got, err)
		}
	}
}

func TestMailboxRecordMalformed(t *testing.T) {
	good := appendMailbox(nil, &sampleMailboxes[1])
	big := append([]byte{mailboxFormat, 1, 0, 0, 0}, 0x80, 0x80, 0x80, 0x80, 0x10) // UIDVALIDITY of 2^32
	for name, v := range map[string][]byte{
		"empty":            nil,
		"unknown format":   {0x02},
		"truncated":        good[:len(good)-1],
		"trailing bytes":   append(append([]byte(nil), good...), 0),
		"uid over 32 bits": append(big, make([]byte, 8)...),
	} {
		var mb Mailbox
		if err := parseMailbox(v, &mb); err == nil {
			t.Errorf("%s: parsed %x as %+v, want an error", name, v, mb)
		}
	}
}

func FuzzMailboxRecord(f *testing.F) {
	for _, mb := range sampleMailboxes {
		f.Add(appendMailbox(nil, &mb))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		var mb Mailbox
		if parseMailbox(v, &mb) != nil || (len(v) > 0 && v[0] == '{') {
			return
		}
		var again Mailbox
		if err := parseMailbox(appendMailbox(nil, &mb), &again); err != nil || again != mb {
			t.Fatalf("%x parsed as %+v; encoded and parsed again: %+v, %v", v, mb, again, err)
		}
	})
}
