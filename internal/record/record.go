// Package record holds the primitives of the relay's compact binary
// database records: varints, length-prefixed strings and times, written by
// appending to a byte slice and read by a Reader that never panics on a
// short or corrupt record.
//
// The spool's envelopes and the mailbox's message records are read on every
// delivery round and every IMAP SEARCH; in JSON their decoding was a large
// share of the relay's CPU. Each package defines its own layout on top of
// these primitives, behind a format byte (Open) so that a later layout can
// still read the old one.
package record

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"time"
)

// AppendUvarint appends x as an unsigned varint.
func AppendUvarint(b []byte, x uint64) []byte { return binary.AppendUvarint(b, x) }

// AppendVarint appends x as a signed (zig-zag) varint.
func AppendVarint(b []byte, x int64) []byte { return binary.AppendVarint(b, x) }

// AppendString appends s with its length in front.
func AppendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// AppendBool appends v as one byte.
func AppendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// AppendTime appends t in nanoseconds since the Unix epoch; the zero time
// is written as 0 (its UnixNano is out of range).
func AppendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return binary.AppendVarint(b, 0)
	}
	return binary.AppendVarint(b, t.UnixNano())
}

// Reader reads the fields of a record in the order they were appended. A
// short or malformed field marks the reader bad and yields zero values from
// then on, so a decoder reads every field and checks Err once. Open
// returns one over a record.
type Reader struct {
	b   []byte
	bad bool
}

// skip consumes the n bytes of a varint, or marks the record bad when there
// was none (n <= 0).
func (r *Reader) skip(n int) bool {
	if n <= 0 {
		r.bad, r.b = true, nil
		return false
	}
	r.b = r.b[n:]
	return true
}

// Uvarint reads an unsigned varint.
func (r *Reader) Uvarint() uint64 {
	x, n := binary.Uvarint(r.b)
	if !r.skip(n) {
		return 0
	}
	return x
}

// Uint32 reads an unsigned varint that must fit 32 bits.
func (r *Reader) Uint32() uint32 {
	x := r.Uvarint()
	if x > math.MaxUint32 {
		r.bad, r.b = true, nil
		return 0
	}
	return uint32(x)
}

// Varint reads a signed varint.
func (r *Reader) Varint() int64 {
	x, n := binary.Varint(r.b)
	if !r.skip(n) {
		return 0
	}
	return x
}

// Bytes reads a length-prefixed field. The result aliases the record: copy
// it before the record's buffer goes away.
func (r *Reader) Bytes() []byte {
	n := r.Uvarint()
	if n > uint64(len(r.b)) {
		r.bad, r.b = true, nil
		return nil
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

// String reads a length-prefixed field as a new string.
func (r *Reader) String() string { return string(r.Bytes()) }

// Interned reads a length-prefixed field as a string, and returns the entry
// of common it equals without allocating: flags, states and keywords repeat
// in every record.
func (r *Reader) Interned(common []string) string {
	b := r.Bytes()
	for _, s := range common {
		if string(b) == s {
			return s
		}
	}
	return string(b)
}

// Bool reads a byte written by AppendBool; anything but 0 or 1 is malformed.
func (r *Reader) Bool() bool {
	if len(r.b) == 0 || r.b[0] > 1 {
		r.bad, r.b = true, nil
		return false
	}
	v := r.b[0] == 1
	r.b = r.b[1:]
	return v
}

// Time reads a time written by AppendTime, in UTC: the record keeps the
// instant, not the zone it was taken in.
func (r *Reader) Time() time.Time {
	ns := r.Varint()
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// Count reads a number of elements that follow, each at least min bytes
// long; a count the rest of the record cannot hold is malformed, so that a
// corrupt count never makes the caller allocate beyond the record's size.
func (r *Reader) Count(min int) int {
	n := r.Uvarint()
	if n > uint64(len(r.b)/max(min, 1)) {
		r.bad, r.b = true, nil
		return 0
	}
	return int(n)
}

// Err reports whether the record was malformed or has bytes left over.
func (r *Reader) Err() error {
	if r.bad || len(r.b) != 0 {
		return ErrMalformed
	}
	return nil
}

// Open checks record v's format byte and returns a Reader over its fields.
// A record written as JSON before the binary form (it starts with '{') is
// decoded into legacy with encoding/json instead, and done is true: the
// caller has nothing left to read. The Reader is a value, so that reading
// the records of a 10,000-message SEARCH allocates no reader for each.
func Open(v []byte, format byte, legacy any) (r Reader, done bool, err error) {
	switch {
	case len(v) > 0 && v[0] == '{':
		return Reader{}, true, json.Unmarshal(v, legacy)
	case len(v) == 0 || v[0] != format:
		return Reader{}, false, ErrMalformed
	}
	return Reader{b: v[1:]}, false, nil
}

// ErrMalformed is the error of a record that does not decode.
var ErrMalformed = errors.New("malformed record")
