package record

import (
	"errors"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	at := time.Date(2026, 12, 1, 22, 0, 0, 1, time.UTC)
	var b []byte
	b = AppendUvarint(b, 1<<40)
	b = AppendUvarint(b, 1<<32-1)
	b = AppendVarint(b, -5)
	b = AppendString(b, "käse")
	b = AppendString(b, "")
	b = AppendBool(b, true)
	b = AppendBool(b, false)
	b = AppendTime(b, at)
	b = AppendTime(b, time.Time{})
	b = AppendUvarint(b, 2)
	b = AppendString(b, "a")
	b = AppendString(b, "b")

	r := NewReader(b)
	if got := r.Uvarint(); got != 1<<40 {
		t.Errorf("Uvarint = %d", got)
	}
	if got := r.Uint32(); got != 1<<32-1 {
		t.Errorf("Uint32 = %d", got)
	}
	if got := r.Varint(); got != -5 {
		t.Errorf("Varint = %d", got)
	}
	if got := r.String(); got != "käse" {
		t.Errorf("String = %q", got)
	}
	if got := r.String(); got != "" {
		t.Errorf("empty String = %q", got)
	}
	if !r.Bool() || r.Bool() {
		t.Error("Bool: want true, false")
	}
	if got := r.Time(); !got.Equal(at) || got.Location() != time.UTC {
		t.Errorf("Time = %v", got)
	}
	if got := r.Time(); !got.IsZero() {
		t.Errorf("zero Time = %v", got)
	}
	if n := r.Count(2); n != 2 {
		t.Errorf("Count = %d", n)
	}
	r.Bytes()
	r.Bytes()
	if err := r.Err(); err != nil {
		t.Errorf("Err = %v", err)
	}
}

func TestMalformed(t *testing.T) {
	for name, read := range map[string]func(*Reader){
		"uvarint of nothing":   func(r *Reader) { r.Uvarint() },
		"varint of nothing":    func(r *Reader) { r.Varint() },
		"string past the end":  func(r *Reader) { r.Bytes() },
		"bool of nothing":      func(r *Reader) { r.Bool() },
		"bool not 0 or 1":      func(r *Reader) { r.Uvarint(); r.Bool() },
		"count past the end":   func(r *Reader) { r.Count(1) },
		"leftover bytes":       func(r *Reader) {},
		"time of nothing":      func(r *Reader) { r.Bytes(); r.Bytes(); r.Time() },
		"bad after good reads": func(r *Reader) { r.Uvarint(); r.Uvarint(); r.Uvarint() },
		"uint32 out of range":  func(r *Reader) { r.Uint32() },
	} {
		var in []byte
		switch name {
		case "uvarint of nothing", "varint of nothing", "bool of nothing":
		case "string past the end":
			in = []byte{5, 'a'}
		case "bool not 0 or 1":
			in = []byte{0, 2}
		case "count past the end":
			in = []byte{3, 0, 0}
		case "leftover bytes":
			in = []byte{0}
		case "time of nothing":
			in = []byte{0, 0}
		case "bad after good reads":
			in = []byte{1, 0x80}
		case "uint32 out of range":
			in = AppendUvarint(nil, 1<<32)
		}
		r := NewReader(in)
		read(r)
		if err := r.Err(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Err = %v, want ErrMalformed", name, err)
		}
	}
}

// A corrupt read makes every later read yield zero values.
func TestBadStaysBad(t *testing.T) {
	r := NewReader([]byte{0x80, 1, 'x'})
	r.Uvarint()
	if s := r.String(); s != "" || r.Len() != 0 {
		t.Errorf("after a bad varint: String = %q, Len = %d", s, r.Len())
	}
}
