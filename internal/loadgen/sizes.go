package loadgen

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
)

// ParseSize parses a byte count with an optional binary suffix: "4096",
// "4k", "64K", "1m", "1MiB". Suffixes k, m and g mean KiB, MiB and GiB.
func ParseSize(s string) (int, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "ib"), "b")
	mult := 1
	switch {
	case strings.HasSuffix(t, "k"):
		mult = 1 << 10
	case strings.HasSuffix(t, "m"):
		mult = 1 << 20
	case strings.HasSuffix(t, "g"):
		mult = 1 << 30
	}
	if mult != 1 {
		t = t[:len(t)-1]
	}
	n, err := strconv.Atoi(t)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: want a positive number of bytes such as 4096, 4k or 1m", s)
	}
	return n * mult, nil
}

// SizeClass is one entry of a Mix: messages of Size bytes, chosen with
// relative Weight.
type SizeClass struct {
	Size   int
	Weight int
}

// Mix is a weighted set of message sizes.
type Mix []SizeClass

// FixedMix is a Mix of one size.
func FixedMix(size int) Mix { return Mix{{Size: size, Weight: 1}} }

// ParseMix parses "4k:70,64k:25,1m:5": sizes with relative weights. A size
// without a weight has weight 1.
func ParseMix(s string) (Mix, error) {
	var m Mix
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		sz, w, hasW := strings.Cut(part, ":")
		size, err := ParseSize(sz)
		if err != nil {
			return nil, fmt.Errorf("mix %q: %w", s, err)
		}
		weight := 1
		if hasW {
			weight, err = strconv.Atoi(strings.TrimSpace(w))
			if err != nil || weight < 0 {
				return nil, fmt.Errorf("mix %q: weight %q is not a whole number >= 0", s, w)
			}
		}
		m = append(m, SizeClass{Size: size, Weight: weight})
	}
	if m.total() == 0 {
		return nil, errors.New("mix " + strconv.Quote(s) + ": no size with a weight above 0")
	}
	return m, nil
}

func (m Mix) total() int {
	t := 0
	for _, c := range m {
		t += c.Weight
	}
	return t
}

// Pick returns the index of a size class chosen at random by weight.
func (m Mix) Pick(r *rand.Rand) int {
	n := r.IntN(m.total())
	for i, c := range m {
		if n < c.Weight {
			return i
		}
		n -= c.Weight
	}
	return len(m) - 1
}

// String formats m as ParseMix reads it.
func (m Mix) String() string {
	parts := make([]string, len(m))
	for i, c := range m {
		parts[i] = fmt.Sprintf("%d:%d", c.Size, c.Weight)
	}
	return strings.Join(parts, ",")
}
