package smtpd

import (
	"bytes"
	"io"
	"testing"
	"testing/iotest"
)

// readLineEnds runs data through lineEnds, one octet per read when
// oneByte is set, so that line ends split across reads.
func readLineEnds(data []byte, normalize, dotted, oneByte bool) ([]byte, error) {
	var r io.Reader = bytes.NewReader(data)
	if oneByte {
		r = iotest.OneByteReader(r)
	}
	return io.ReadAll(&lineEnds{r: r, normalize: normalize, dotted: dotted})
}

// FuzzLineEnds: whatever the client sends, what lineEnds passes on has CRLF
// line ends only; reject passes it unchanged, normalize outside DATA only
// turns bare LFs into CRLFs; and how the data is cut into reads changes
// nothing.
func FuzzLineEnds(f *testing.F) {
	f.Add([]byte("Subject: x\n\n..\nend\n\r\n"), true, true)
	f.Fuzz(func(t *testing.T, in []byte, normalize, dotted bool) {
		out, err := readLineEnds(in, normalize, dotted, false)
		out1, err1 := readLineEnds(in, normalize, dotted, true)
		if (err == nil) != (err1 == nil) || (err == nil && !bytes.Equal(out, out1)) {
			t.Fatalf("reads of all and of one octet differ: %q, %v and %q, %v", out, err, out1, err1)
		}
		if err != nil {
			return
		}
		for i, b := range out {
			if b == '\n' && (i == 0 || out[i-1] != '\r') || b == '\r' && (i+1 == len(out) || out[i+1] != '\n') {
				t.Fatalf("lineEnds(%q) = %q: a bare line end at %d", in, out, i)
			}
		}
		switch {
		case !normalize && !bytes.Equal(out, in):
			t.Fatalf("reject changed %q to %q", in, out)
		case normalize && !dotted && !bytes.Equal(out, bytes.ReplaceAll(bytes.ReplaceAll(in, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))):
			t.Fatalf("normalize changed %q to %q, not just its bare LFs", in, out)
		}
	})
}
