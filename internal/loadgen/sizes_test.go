package loadgen

import (
	"math/rand/v2"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := map[string]int{
		"4096": 4096, "4k": 4096, "4K": 4096, "64k": 65536, "1m": 1 << 20, "1M": 1 << 20,
		"1MiB": 1 << 20, "2kb": 2048, " 10 ": 10, "1g": 1 << 30,
	}
	for in, want := range good {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "k", "0", "-4", "4x", "1.5k", "m1"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestParseMix(t *testing.T) {
	m, err := ParseMix("4k:70, 64k:25,1m:5")
	if err != nil {
		t.Fatal(err)
	}
	want := Mix{{4096, 70}, {65536, 25}, {1 << 20, 5}}
	if len(m) != len(want) {
		t.Fatalf("ParseMix = %v, want %v", m, want)
	}
	for i := range want {
		if m[i] != want[i] {
			t.Errorf("class %d = %v, want %v", i, m[i], want[i])
		}
	}
	if s := m.String(); s != "4096:70,65536:25,1048576:5" {
		t.Errorf("String() = %q", s)
	}
	if m, err := ParseMix("2k"); err != nil || len(m) != 1 || m[0] != (SizeClass{2048, 1}) {
		t.Errorf(`ParseMix("2k") = %v, %v; want one class of weight 1`, m, err)
	}
	for _, in := range []string{"", ",", "4k:0", "4k:x", "4k:-1", "zz:3", "4k:70,bad"} {
		if m, err := ParseMix(in); err == nil {
			t.Errorf("ParseMix(%q) = %v, want an error", in, m)
		}
	}
}

func TestMixPick(t *testing.T) {
	m := Mix{{1, 70}, {2, 0}, {3, 30}}
	r := rand.New(rand.NewPCG(1, 1))
	counts := make([]int, len(m))
	const n = 100000
	for range n {
		counts[m.Pick(r)]++
	}
	if counts[1] != 0 {
		t.Errorf("class of weight 0 picked %d times", counts[1])
	}
	if f := float64(counts[0]) / n; f < 0.68 || f > 0.72 {
		t.Errorf("class of weight 70 picked %.3f of the time", f)
	}
}

func TestGeneratorSizes(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	for _, size := range []int{1024, 4096, 65536, 1 << 20} {
		g := NewGenerator(FixedMix(size))
		m := g.Message(r, 7, "a@b.test", []string{"user0@localhost", "user1@localhost"})
		if got := m.Size(); got < size*9/10 || got > size*11/10+200 {
			t.Errorf("size %d: message of %d bytes", size, got)
		}
		b := m.Bytes()
		for i, line := range splitCRLF(b) {
			if len(line) > 0 && line[0] == '.' {
				t.Fatalf("size %d: line %d starts with a dot", size, i)
			}
		}
		if n := countBareLF(b); n > 0 {
			t.Fatalf("size %d: %d bare LFs", size, n)
		}
	}
}

func splitCRLF(b []byte) [][]byte {
	var lines [][]byte
	start := 0
	for i := 0; i+1 < len(b); i++ {
		if b[i] == '\r' && b[i+1] == '\n' {
			lines = append(lines, b[start:i])
			start = i + 2
		}
	}
	return lines
}

func countBareLF(b []byte) int {
	n := 0
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			n++
		}
	}
	return n
}
