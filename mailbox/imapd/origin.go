package imapd

import (
	"bytes"
	"strconv"
	"time"

	"github.com/emersion/go-imap/v2"
)

// RFC 3516 §4.2 and RFC 9051 §7.5.2: the answer to a partial BINARY fetch,
// BINARY[part]<origin.size>, names the section with its origin,
// "BINARY[part]<origin> ~{n}", as a partial BODY[] answer does. imapserver
// (go-imap v2.0.0-beta.8 and beta.9) writes "BINARY[part] ~{n}" without
// it, so the client cannot tell the answer to BINARY[1]<0.10> from the one
// to BINARY[1]. Its response writer takes no text of ours there; the guard,
// which sees every byte imapserver writes, puts the origin in.

// binaryItem is one BINARY item of a FETCH response as imapserver names it,
// with the origin to add ("" for an item without a partial range).
type binaryItem struct {
	name   []byte // "BINARY[1.2]"
	origin string // "<0>"
}

// binaryItems lists the BINARY items of one FETCH response in the order
// they are written, or nil when none of them is partial.
func binaryItems(secs []*imap.FetchItemBinarySection) []binaryItem {
	partial := false
	items := make([]binaryItem, len(secs))
	for i, sec := range secs {
		name := []byte("BINARY[")
		for j, n := range sec.Part {
			if j > 0 {
				name = append(name, '.')
			}
			name = strconv.AppendInt(name, int64(n), 10)
		}
		items[i].name = append(name, ']')
		if sec.Partial != nil {
			partial = true
			items[i].origin = "<" + strconv.FormatInt(sec.Partial.Offset, 10) + ">"
		}
	}
	if !partial {
		return nil
	}
	return items
}

// originPlacer adds the origins of partial BINARY items to imapserver's
// output. It follows the output's framing from the start of the FETCH
// response on and, at each line that ends with a literal8 announcement
// after the next expected item's name, puts the origin after the name. A
// line can reach the guard in several writes, so the last bytes of an
// unfinished line are held back until its end has come.
type originPlacer struct {
	want    []binaryItem
	held    []byte // the end of the current line, not written yet
	litLeft int64  // literal bytes to pass through
	window  int    // how much to hold back
}

func (o *originPlacer) active() bool { return len(o.want) > 0 || len(o.held) > 0 }

// expect starts placing the origins of items, at the start of a response.
func (o *originPlacer) expect(items []binaryItem) {
	o.want, o.held, o.litLeft, o.window = items, o.held[:0], 0, 0
	for _, it := range items {
		// The name, " ~{", up to 20 digits and "}\r".
		o.window = max(o.window, len(it.name)+len(it.origin)+32)
	}
}

// place returns what of p to write now, with the origins put in.
func (o *originPlacer) place(p []byte) []byte {
	var out []byte
	for len(p) > 0 && len(o.want) > 0 {
		if o.litLeft > 0 {
			n := int(min(int64(len(p)), o.litLeft))
			out = append(out, p[:n]...)
			p, o.litLeft = p[n:], o.litLeft-int64(n)
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			o.held = append(o.held, p...)
			p = nil
			if k := len(o.held) - o.window; k > 0 {
				out = append(out, o.held[:k]...)
				o.held = append(o.held[:0], o.held[k:]...)
			}
			break
		}
		line := append(o.held, p[:i+1]...)
		p = p[i+1:]
		if n, _, ok := literalAt(line[max(len(line)-32, 0):], false); ok {
			o.litLeft = n
			if placed, ok := o.want[0].place(line); ok {
				line = placed
				o.want = o.want[1:]
			}
		}
		out = append(out, line...)
		o.held = o.held[:0]
	}
	if len(o.want) == 0 && len(o.held) > 0 {
		out = append(out, o.held...)
		o.held = o.held[:0]
	}
	return append(out, p...)
}

// place puts the item's origin into line if the line ends with its
// literal8 announcement.
func (it binaryItem) place(line []byte) ([]byte, bool) {
	body := bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
	j := bytes.LastIndex(body, []byte(" ~{"))
	if j < 0 || !bytes.HasSuffix(body[:j], it.name) {
		return line, false
	}
	if it.origin == "" {
		return line, true
	}
	out := make([]byte, 0, len(line)+len(it.origin))
	out = append(out, line[:j]...)
	out = append(out, it.origin...)
	return append(out, line[j:]...), true
}

// expectBinary tells the guard the BINARY items of the FETCH response
// about to be written; nil, after the response, ends the placing (and
// writes anything still held, which only a broken response leaves).
func (g *guardConn) expectBinary(items []binaryItem) error {
	g.wmu.Lock()
	defer g.wmu.Unlock()
	if items != nil {
		g.origins.expect(items)
		return nil
	}
	held := g.origins.held
	g.origins = originPlacer{}
	if len(held) == 0 {
		return nil
	}
	g.scanOut(held)
	g.Conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	_, err := g.Conn.Write(held)
	g.Conn.SetWriteDeadline(time.Time{})
	return err
}
