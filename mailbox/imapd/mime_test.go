package imapd

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/relaymail/relay/mailbox"
)

// testContent is a content over bytes in memory.
func testContent(msg []byte) *content {
	return &content{m: mailbox.Message{Size: int64(len(msg))}, data: msg}
}

func readSample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "imap", name))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
}

// genMessage builds a well-formed random MIME message: nested multiparts,
// attached messages, text and base64 leaves, with the header fields
// BODYSTRUCTURE reports.
func genMessage(r *rand.Rand, depth int, top bool) string {
	var b strings.Builder
	if top {
		fmt.Fprintf(&b, "From: a%d@example.net\r\nTo: b@example.test\r\nSubject: s%d\r\nMIME-Version: 1.0\r\n", r.IntN(9), r.IntN(99))
	}
	kind := r.IntN(5)
	if depth >= 4 {
		kind = 3 + r.IntN(2)
	}
	switch kind {
	case 0, 1: // multipart
		sub := []string{"mixed", "alternative", "related"}[r.IntN(3)]
		bnd := fmt.Sprintf("b%d-%d", depth, r.IntN(1e6))
		fmt.Fprintf(&b, "Content-Type: multipart/%s; boundary=\"%s\"\r\n", sub, bnd)
		if r.IntN(2) == 0 {
			b.WriteString("Content-Language: en, de\r\nContent-Location: http://example.net/x\r\n")
		}
		b.WriteString("\r\n")
		if r.IntN(2) == 0 {
			b.WriteString("This is a preamble.\r\n")
		}
		for range 1 + r.IntN(3) {
			fmt.Fprintf(&b, "--%s\r\n", bnd)
			b.WriteString(genMessage(r, depth+1, false))
			b.WriteString("\r\n")
		}
		fmt.Fprintf(&b, "--%s--\r\n", bnd)
		if r.IntN(2) == 0 {
			b.WriteString("epilogue\r\n")
		}
	case 2: // attached message
		b.WriteString("Content-Type: message/rfc822\r\nContent-Description: forwarded\r\n\r\n")
		b.WriteString(genMessage(r, depth+1, true))
	case 3: // text
		fmt.Fprintf(&b, "Content-Type: text/plain; charset=utf-8; format=flowed\r\nContent-Id: <id%d@x>\r\n", r.IntN(99))
		if r.IntN(2) == 0 {
			b.WriteString("Content-Transfer-Encoding: quoted-printable\r\n")
		}
		b.WriteString("\r\n")
		for range r.IntN(5) {
			fmt.Fprintf(&b, "line %d =C3=A9 text\r\n", r.IntN(1000))
		}
		if r.IntN(2) == 0 {
			b.WriteString("no newline at the end")
		}
	case 4: // attachment
		raw := make([]byte, r.IntN(300))
		for i := range raw {
			raw[i] = byte(r.IntN(256))
		}
		fmt.Fprintf(&b, "Content-Type: application/octet-stream; name=\"f%d.bin\"\r\n", r.IntN(9))
		b.WriteString("Content-Disposition: attachment; filename=\"f.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n")
		enc := base64.StdEncoding.EncodeToString(raw)
		for len(enc) > 76 {
			b.WriteString(enc[:76] + "\r\n")
			enc = enc[76:]
		}
		b.WriteString(enc + "\r\n")
	}
	return b.String()
}

// paths lists the part numbers of every entity below e.
func paths(e *entity, prefix []int, out *[][]int) {
	e = e.open()
	if !e.isMultipart() {
		*out = append(*out, append(append([]int(nil), prefix...), 1))
		return
	}
	for i, c := range e.children {
		p := append(append([]int(nil), prefix...), i+1)
		*out = append(*out, p)
		if c.isMultipart() || c.msg != nil {
			paths(c, p, out)
		}
	}
}

// TestMIMEMatchesLibrary: on well-formed messages (the samples and random
// ones) the bounded parser gives what imapserver's helpers give: the same
// BODYSTRUCTURE, and the same bytes for every section of every part.
func TestMIMEMatchesLibrary(t *testing.T) {
	t.Parallel()
	msgs := map[string][]byte{}
	for _, n := range []string{"plain.eml", "multipart.eml", "8bit.eml", "nested.eml"} {
		msgs[n] = readSample(t, n)
	}
	r := rand.New(rand.NewPCG(7, 11))
	for i := range 150 {
		m := genMessage(r, 0, true)
		if i%3 == 0 {
			// A message may end without a line ending, after a close
			// delimiter too.
			m = strings.TrimSuffix(m, "\r\n")
		}
		msgs[fmt.Sprintf("random-%d", i)] = []byte(m)
	}
	msgs["header only, no line ending"] = []byte("Subject: x\r\nFrom: y@example.net")
	specs := []imap.PartSpecifier{imap.PartSpecifierNone, imap.PartSpecifierMIME, imap.PartSpecifierHeader, imap.PartSpecifierText}
	for name, msg := range msgs {
		c := testContent(msg)
		want := imapserver.ExtractBodyStructure(bytes.NewReader(msg))
		if got := bodyStructure(c.mime()); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: BODYSTRUCTURE\n got %#v\nwant %#v\n%s", name, got, want, msg)
			continue
		}
		var ps [][]int
		ps = append(ps, nil)
		paths(c.mime(), nil, &ps)
		for _, p := range ps {
			for _, spec := range specs {
				if len(p) == 0 && (spec == imap.PartSpecifierMIME || spec == imap.PartSpecifierNone) {
					// BODY[] is the raw message, which the library
					// rebuilds from a parsed header.
					continue
				}
				secs := []*imap.FetchItemBodySection{
					{Specifier: spec, Part: p},
					{Specifier: spec, Part: p, Partial: &imap.SectionPartial{Offset: 3, Size: 17}},
				}
				if spec == imap.PartSpecifierHeader {
					secs = append(secs,
						&imap.FetchItemBodySection{Specifier: spec, Part: p, HeaderFields: []string{"subject", "Content-Type"}},
						&imap.FetchItemBodySection{Specifier: spec, Part: p, HeaderFieldsNot: []string{"Subject"}})
				}
				for _, sec := range secs {
					want := imapserver.ExtractBodySection(bytes.NewReader(msg), sec)
					rd, n := bodySection(testContent(msg), sec)
					got, _ := readN(rd, n)
					if !bytes.Equal(got, want) {
						t.Errorf("%s: BODY[%v %v] partial %v fields %v/%v:\n got %q\nwant %q", name, p, spec, sec.Partial, sec.HeaderFields, sec.HeaderFieldsNot, got, want)
					}
				}
			}
			bsec := &imap.FetchItemBinarySection{Part: p}
			want := imapserver.ExtractBinarySection(bytes.NewReader(msg), bsec)
			rd, n := binarySection(testContent(msg), bsec)
			got, _ := readN(rd, n)
			if !bytes.Equal(got, want) {
				t.Errorf("%s: BINARY[%v]:\n got %q\nwant %q", name, p, got, want)
			}
		}
	}
}

func readN(r interface{ Read([]byte) (int, error) }, n int64) ([]byte, error) {
	var buf bytes.Buffer
	b := make([]byte, 4096)
	for int64(buf.Len()) < n {
		k, err := r.Read(b[:min(int64(len(b)), n-int64(buf.Len()))])
		buf.Write(b[:k])
		if err != nil {
			break
		}
	}
	return buf.Bytes(), nil
}

// nestedBomb is a message of n multiparts, each the only part of the one
// around it.
func nestedBomb(n int) []byte {
	var b bytes.Buffer
	b.WriteString("Subject: nested\r\n")
	for i := range n {
		fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n", i, i)
	}
	b.WriteString("Content-Type: text/plain\r\n\r\ndeep inside\r\n")
	for i := n - 1; i >= 0; i-- {
		fmt.Fprintf(&b, "--b%d--\r\n", i)
	}
	return b.Bytes()
}

// messageBomb is n message/rfc822 entities, each inside the one before,
// around a payload: the library's BODYSTRUCTURE copied the rest of the
// message at every level.
func messageBomb(n, payload int) []byte {
	var b bytes.Buffer
	for range n {
		b.WriteString("Subject: fwd\r\nContent-Type: message/rfc822\r\n\r\n")
	}
	b.WriteString("Subject: core\r\n\r\n")
	b.Write(bytes.Repeat([]byte("0123456789abcdef\r\n"), payload/18))
	return b.Bytes()
}

// wideBomb is one multipart with n empty text parts.
func wideBomb(n int) []byte {
	var b bytes.Buffer
	b.WriteString("Subject: wide\r\nContent-Type: multipart/mixed; boundary=w\r\n\r\n")
	for range n {
		b.WriteString("--w\r\n\r\nx\r\n")
	}
	b.WriteString("--w--\r\n")
	return b.Bytes()
}

// headerBomb has a header section of about size bytes in small fields.
func headerBomb(size int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "X-F%d: v\r\n", i)
	}
	b.WriteString("Subject: end of the header\r\n\r\nbody\r\n")
	return b.Bytes()
}

func countEntities(e *entity) (n, depth int) {
	n, depth = 1, e.depth
	if e.msg != nil {
		k, d := countEntities(e.msg)
		n, depth = n+k, max(depth, d)
	}
	for _, c := range e.children {
		k, d := countEntities(c)
		n, depth = n+k, max(depth, d)
	}
	return n, depth
}

// allocated returns the bytes f allocates (other goroutines can only add).
func allocated(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// TestMIMEBombsBounded guards the MIME limits: however a message nests or
// splits, the parsed structure has at most maxMIMEDepth levels and
// maxMIMEParts entities, and parsing it, building its BODYSTRUCTURE and
// decoding it for SEARCH allocate a bounded multiple of its size (not of
// size times depth). Without the limits, 5000 nested multiparts give a
// 5000-level BODYSTRUCTURE and nested messages copy the message at every
// level.
func TestMIMEBombsBounded(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  []byte
	}{
		{"5000 nested multiparts", nestedBomb(5000)},
		{"2000 nested messages", messageBomb(2000, 1<<20)},
		{"100000 parts", wideBomb(100_000)},
		{"10 MB header", headerBomb(10 << 20)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tree *entity
			var bs imap.BodyStructure
			c := testContent(tc.msg)
			used := allocated(func() {
				tree = c.mime()
				bs = bodyStructure(tree)
				cand := &candidate{c: c}
				cand.parseHeader()
				cand.parseBody()
			})
			n, depth := countEntities(tree)
			if n > maxMIMEParts || depth > maxMIMEDepth {
				t.Errorf("%d entities, %d levels; limits %d and %d", n, depth, maxMIMEParts, maxMIMEDepth)
			}
			if bound := uint64(16*len(tc.msg)) + 64<<20; used > bound {
				t.Errorf("allocated %d bytes for a %d-byte message (bound %d)", used, len(tc.msg), bound)
			}
			var buf bytes.Buffer
			fmt.Fprint(&buf, bs)
			if tree.end != int64(len(tc.msg)) {
				t.Errorf("the message ends at %d, want %d", tree.end, len(tc.msg))
			}
			fields := 0
			for f := tree.header.Fields(); f.Next(); {
				fields++
			}
			if fields > maxPartHeader/5 {
				t.Errorf("%d header fields parsed", fields)
			}
		})
	}
}

// TestMIMELimitsCutToText: past the depth limit a container is an opaque
// text/plain leaf holding the rest of its part, and past the part limit
// the last part holds the rest of the message; section numbers still
// reach them, and nothing past them.
func TestMIMELimitsCutToText(t *testing.T) {
	t.Parallel()
	msg := nestedBomb(150)
	c := testContent(msg)
	path := make([]int, maxMIMEDepth+1)
	for i := range path {
		path[i] = 1
	}
	leaf := c.mime().find(path[:maxMIMEDepth])
	if leaf == nil || !leaf.opaque || leaf.mediaType != "text/plain" || leaf.isMultipart() {
		t.Fatalf("entity at depth %d: %+v, want an opaque text/plain leaf", maxMIMEDepth, leaf)
	}
	r, n := bodySection(c, &imap.FetchItemBodySection{Part: path[:maxMIMEDepth]})
	body, _ := readN(r, n)
	if !bytes.Contains(body, []byte("deep inside")) || !bytes.Contains(body, []byte("--b120\r\n")) {
		t.Errorf("the cut-off leaf does not hold the rest of its part: %q", body)
	}

	wide := wideBomb(20_000)
	c = testContent(wide)
	root := c.mime()
	if len(root.children) != maxMIMEParts-1 {
		t.Fatalf("%d parts, want %d", len(root.children), maxMIMEParts-1)
	}
	last := root.children[len(root.children)-1]
	if !last.opaque || last.end != int64(len(wide)) {
		t.Errorf("the last part %+v does not hold the rest of the message (%d bytes)", last, len(wide))
	}
	if c.mime().find([]int{maxMIMEParts}) != nil {
		t.Errorf("part %d exists past the limit", maxMIMEParts)
	}
}

// TestMIMEOddStructures: malformed structures that the library's helpers
// turned into panics or empty answers give a usable structure.
func TestMIMEOddStructures(t *testing.T) {
	t.Parallel()
	for name, msg := range map[string]string{
		"multipart without parts":    "Content-Type: multipart/mixed; boundary=x\r\n\r\nno parts here\r\n",
		"multipart without boundary": "Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\ny\r\n",
		"header without blank line":  "Subject: x\r\nContent-Type: multipart/mixed; boundary=x",
		"part header cut":            "Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: message/rfc822\r\n--x--\r\n",
		"unterminated nest":          "Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nq\r\n--a--\r\n",
		"bad content type":           "Content-Type: multipart/mixed; boundary=\"x\r\n\r\n--x\r\n\r\ny\r\n",
		"empty":                      "",
		"bare LF":                    "Content-Type: multipart/mixed; boundary=x\n\n--x\n\nbody\n--x--\n",
	} {
		c := testContent([]byte(msg))
		bs := bodyStructure(c.mime())
		if mp, ok := bs.(*imap.BodyStructureMultiPart); ok && len(mp.Children) == 0 {
			t.Errorf("%s: a multipart BODYSTRUCTURE without children", name)
		}
		for _, e := range []*entity{c.mime()} {
			if e.end < e.bodyStart || e.bodyStart < e.hdrStart || e.end > int64(len(msg)) {
				t.Errorf("%s: offsets %d %d %d out of order", name, e.hdrStart, e.bodyStart, e.end)
			}
		}
	}
}

// FuzzMIME: on any bytes the MIME parser stays within its limits and
// gives a consistent tree (every entity's header and body inside its
// parent's body, parts in order), the header-only parse agrees with it,
// BODYSTRUCTURE has no empty multipart (imapserver panics on one), and
// every section of every part yields the number of bytes it announces.
func FuzzMIME(f *testing.F) {
	for _, seed := range loadSeedFiles(f, "../../testdata/fuzz/FuzzMIME") {
		f.Add(seed)
	}
	for _, n := range []string{"plain.eml", "multipart.eml", "8bit.eml", "nested.eml"} {
		f.Add(readSample(f, n))
	}
	f.Add(nestedBomb(120))
	f.Add(wideBomb(50))
	f.Fuzz(func(t *testing.T, msg []byte) {
		c := testContent(msg)
		root := c.mime()
		n, depth := countEntities(root)
		if n > maxMIMEParts || depth > maxMIMEDepth {
			t.Fatalf("%d entities, depth %d", n, depth)
		}
		checkEntity(t, root, 0, int64(len(msg)))
		top := parseTop(bytes.NewReader(msg), int64(len(msg)))
		if top.bodyStart != root.bodyStart || top.end != root.end {
			t.Fatalf("header-only parse: body %d-%d, full parse %d-%d", top.bodyStart, top.end, root.bodyStart, root.end)
		}
		checkNoEmptyMultipart(t, bodyStructure(root))
		var ps [][]int
		ps = append(ps, nil)
		paths(root, nil, &ps)
		if len(ps) > 50 {
			ps = ps[:50]
		}
		for _, p := range ps {
			for _, spec := range []imap.PartSpecifier{imap.PartSpecifierNone, imap.PartSpecifierMIME, imap.PartSpecifierHeader, imap.PartSpecifierText} {
				for _, sec := range []*imap.FetchItemBodySection{
					{Specifier: spec, Part: p},
					{Specifier: spec, Part: p, Partial: &imap.SectionPartial{Offset: 1, Size: 5}},
					{Specifier: spec, Part: p, HeaderFields: []string{"Content-Type"}},
				} {
					r, n := bodySection(testContent(msg), sec)
					if got, _ := readN(r, n+1); int64(len(got)) != n {
						t.Fatalf("BODY[%v %v]: %d bytes, announced %d", p, spec, len(got), n)
					}
				}
			}
			r, n := binarySection(testContent(msg), &imap.FetchItemBinarySection{Part: p})
			if got, _ := readN(r, n); int64(len(got)) != n {
				t.Fatalf("BINARY[%v]: %d bytes, announced %d", p, len(got), n)
			}
		}
		cand := &candidate{c: testContent(msg)}
		cand.parseHeader()
		cand.parseBody()
		if len(cand.body) > maxSearchText+maxMIMEParts {
			t.Fatalf("%d bytes of search text", len(cand.body))
		}
	})
}

// checkEntity checks that e lies within [lo, hi) and its parts within its
// body, in order.
func checkEntity(t *testing.T, e *entity, lo, hi int64) {
	t.Helper()
	if e.hdrStart < lo || e.bodyStart < e.hdrStart || e.end < e.bodyStart || e.end > hi {
		t.Fatalf("entity %d-%d-%d outside %d-%d", e.hdrStart, e.bodyStart, e.end, lo, hi)
	}
	if e.msg != nil {
		checkEntity(t, e.msg, e.bodyStart, e.end)
	}
	at := e.bodyStart
	for _, c := range e.children {
		checkEntity(t, c, at, e.end)
		at = c.end
	}
}

func checkNoEmptyMultipart(t *testing.T, bs imap.BodyStructure) {
	t.Helper()
	switch bs := bs.(type) {
	case *imap.BodyStructureMultiPart:
		if len(bs.Children) == 0 || bs.Extended == nil {
			t.Fatalf("multipart BODYSTRUCTURE %+v", bs)
		}
		for _, c := range bs.Children {
			checkNoEmptyMultipart(t, c)
		}
	case *imap.BodyStructureSinglePart:
		if bs.Extended == nil {
			t.Fatalf("part without extension data %+v", bs)
		}
		if bs.MessageRFC822 != nil {
			checkNoEmptyMultipart(t, bs.MessageRFC822.BodyStructure)
		}
	}
}

// loadSeedFiles reads single-[]byte corpus files ("go test fuzz v1").
func loadSeedFiles(tb testing.TB, dir string) [][]byte {
	tb.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*"))
	var out [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) != 2 || lines[0] != "go test fuzz v1" {
			tb.Fatalf("%s: want a header and one []byte(...) line", f)
		}
		v := strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")")
		s, err := strconv.Unquote(v)
		if err != nil {
			tb.Fatalf("%s: %v", f, err)
		}
		out = append(out, []byte(s))
	}
	return out
}
