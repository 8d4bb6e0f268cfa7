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

	r := newReader(b)
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
		r := newReader(in)
		read(r)
		if err := r.Err(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Err = %v, want ErrMalformed", name, err)
		}
	}
}

// A corrupt read makes every later read yield zero values.
func TestBadStaysBad(t *testing.T) {
	r := newReader([]byte{0x80, 1, 'x'})
	r.Uvarint()
	if b := r.Bytes(); b != nil || r.Bool() {
		t.Errorf("after a bad varint: Bytes = %q", b)
	}
}

func TestOpen(t *testing.T) {
	var legacy struct{ A int }
	for _, tc := range []struct {
		name    string
		v       []byte
		done    bool
		wantErr bool
	}{
		{"binary", []byte{7, 1}, false, false},
		{"json", []byte(`{"A":3}`), true, false},
		{"bad json", []byte(`{"A":`), true, true},
		{"other format", []byte{8, 1}, false, true},
		{"empty", nil, false, true},
	} {
		r, done, err := Open(tc.v, 7, &legacy)
		if done != tc.done || (err != nil) != tc.wantErr {
			t.Errorf("%s: done %v, err %v; want done %v, error %v", tc.name, done, err, tc.done, tc.wantErr)
			continue
		}
		if tc.name == "binary" && (r.Uvarint() != 1 || r.Err() != nil) {
			t.Errorf("binary: the reader does not start after the format byte")
		}
	}
	if legacy.A != 3 {
		t.Errorf("JSON record decoded into %+v", legacy)
	}
}

func TestInterned(t *testing.T) {
	common := []string{"pending", "delivered"}
	b := AppendString(AppendString(nil, "delivered"), "other")
	r := newReader(b)
	if s := r.Interned(common); s != "delivered" {
		t.Errorf("Interned = %q", s)
	}
	if s := r.Interned(common); s != "other" || r.Err() != nil {
		t.Errorf("Interned = %q, %v", s, r.Err())
	}
	if n := testing.AllocsPerRun(100, func() { newReader(b[:10]).Interned(common) }); n != 0 {
		t.Errorf("Interned of a common string allocates %v times", n)
	}
}

func newReader(b []byte) *Reader { return &Reader{b: b} }
