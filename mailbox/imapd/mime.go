package imapd

import (
	"bufio"
	"bytes"
	"io"
	"strings"

	"github.com/emersion/go-imap/v2"
	gomessage "github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"
)

// Limits on the MIME structure FETCH and SEARCH see in a message, so that
// a MIME bomb costs one bounded pass over its bytes. The depth and part
// limits are those of Dovecot's message parser; as there, what lies beyond
// them is an opaque text/plain body.
const (
	// maxMIMEDepth bounds the nesting of multiparts and attached
	// messages; a container at this depth is an opaque leaf.
	maxMIMEDepth = 100
	// maxMIMEParts bounds the entities of one message; the last one
	// holds the rest of the message, unparsed.
	maxMIMEParts = 10000
	// maxPartHeader is how much of one header section is parsed into
	// fields (BODY[HEADER] still returns it whole).
	maxPartHeader = 256 << 10
	// maxHeaderTotal bounds the header bytes parsed over all entities;
	// entities after it count as having no header fields.
	maxHeaderTotal = 4 << 20
	// maxBoundary bounds a multipart boundary; RFC 2046 §5.1.1 allows 70.
	maxBoundary = 200
)

// entity is one MIME entity of a message (RFC 2045), located by byte
// offsets into the raw message. The tree of entities is the one structure
// BODYSTRUCTURE, BODY[part], BINARY[part] and SEARCH all use, so their
// part numbers agree.
type entity struct {
	hdrStart  int64 // first byte of the header section
	bodyStart int64 // first byte after the blank line
	end       int64 // end of the body (before the CRLF of a delimiter)
	lines     int64 // LFs in the body

	header    textproto.Header // the first maxPartHeader bytes, parsed
	mediaType string           // lower case type/subtype
	params    map[string]string
	depth     int
	opaque    bool      // cut off by a limit, or unusable: text/plain
	children  []*entity // of a multipart (non-nil, maybe empty)
	msg       *entity   // of message/rfc822 or message/global

	nlAtBody   int64  // LFs before bodyStart
	rawHeader  []byte // header bytes collected while parsing
	headerFull bool   // rawHeader holds all it may
	done       bool   // end is set
}

func (e *entity) isMultipart() bool { return e.children != nil }

// frame is an open container while parsing.
type frame struct {
	e        *entity
	boundary string // multipart only
	closed   bool   // the close delimiter was seen (the epilogue follows)
}

type mimeParser struct {
	r         *bufio.Reader
	off       int64 // offset of the next byte
	nl        int64 // LFs before off
	lastEOL   int64 // length of the previous line's line ending
	lineStart bool  // off is at the start of a line
	stack     []*frame
	bounds    map[string]int // boundary -> index in stack (outermost)
	cur       *entity        // the entity whose header or body is being read
	inHeader  bool
	parts     int
	budget    int // header bytes left to parse
	frozen    bool
}

// lineReader buffers r for the parser: 32 KiB, or a message held in memory
// plus one byte when it is smaller. SEARCH parses every message of a
// mailbox; a 32 KiB buffer for each 4 KiB message was most of what a
// SEARCH SUBJECT allocated.
func lineReader(r io.Reader) *bufio.Reader {
	n := 32 << 10
	if br, ok := r.(*bytes.Reader); ok && br.Len() < n {
		n = br.Len() + 1
	}
	return bufio.NewReaderSize(r, n)
}

// parseMIME reads a whole message once and returns its entity tree.
// Memory is bounded by the limits above, not by the message, and the time
// is one pass with one map lookup per line that starts with "--".
func parseMIME(r io.Reader) *entity {
	p := &mimeParser{r: lineReader(r), bounds: map[string]int{}, budget: maxHeaderTotal, lineStart: true}
	root := p.newEntity(0, 0)
	for {
		line, err := p.r.ReadSlice('\n')
		if len(line) > 0 {
			p.line(line, err == nil, err == io.EOF)
		}
		if err != nil && err != bufio.ErrBufferFull {
			break
		}
	}
	p.closeAbove(-1, p.off, p.nl)
	return root
}

// newEntity starts an entity whose header begins at off.
func (p *mimeParser) newEntity(off int64, depth int) *entity {
	p.parts++
	e := &entity{hdrStart: off, bodyStart: off, end: off, depth: depth, mediaType: "text/plain", nlAtBody: p.nl}
	if p.parts >= maxMIMEParts {
		// The last entity allowed: it holds the rest of the message.
		e.opaque = true
		p.frozen = true
	}
	p.cur, p.inHeader = e, true
	return e
}

// line handles one line, or a piece of a long one: whole says it ends in
// LF, last that it ends the message without one.
func (p *mimeParser) line(b []byte, whole, last bool) {
	lo, nlBefore, atStart := p.off, p.nl, p.lineStart
	p.off += int64(len(b))
	p.lineStart = whole
	eol := int64(0)
	if whole {
		p.nl++
		eol = 1
		if len(b) > 1 && b[len(b)-2] == '\r' {
			eol = 2
		}
	}
	defer func() {
		if whole {
			p.lastEOL = eol
		}
	}()
	// A close delimiter may end the message without a line ending, as
	// go-message allows.
	if (whole || last) && atStart && !p.frozen && bytes.HasPrefix(b, []byte("--")) {
		if i, closing, ok := p.delimiter(b[:len(b)-int(eol)]); ok && (whole || closing) {
			p.onDelimiter(i, closing, lo-p.lastEOL, nlBefore-min(p.lastEOL, 1))
			return
		}
	}
	if !p.inHeader {
		return
	}
	e := p.cur
	if whole && atStart && int64(len(b)) == eol {
		// The blank line ends the header section.
		p.endHeader(e, p.off, p.nl, false)
		return
	}
	if !e.headerFull {
		n := min(maxPartHeader-len(e.rawHeader), p.budget, len(b))
		e.rawHeader = append(e.rawHeader, b[:n]...)
		p.budget -= n
		e.headerFull = n < len(b)
	}
}

// delimiter matches a line against the open multiparts' boundaries
// (RFC 2046 §5.1.1: "--" boundary, optional white space; the close
// delimiter adds "--"). The outermost match wins, as a nested reader would
// never see a line its parent took.
func (p *mimeParser) delimiter(line []byte) (idx int, closing, ok bool) {
	s := string(bytes.TrimRight(line[2:], " \t"))
	idx = -1
	if i, found := p.bounds[s]; found {
		idx = i
	}
	if c, found := strings.CutSuffix(s, "--"); found {
		if i, found := p.bounds[c]; found && (idx < 0 || i < idx) {
			idx, closing = i, true
		}
	}
	return idx, closing, idx >= 0
}

// onDelimiter ends everything inside the multipart stack[i] where the
// delimiter line begins (end, after nlEnd LFs: the line ending before a
// delimiter belongs to it) and starts the next part, or the epilogue.
func (p *mimeParser) onDelimiter(i int, closing bool, end, nlEnd int64) {
	f := p.stack[i]
	p.closeAbove(i, end, nlEnd)
	if closing {
		f.closed = true
		if p.bounds[f.boundary] == i {
			delete(p.bounds, f.boundary)
		}
		p.cur, p.inHeader = f.e, false
		return
	}
	f.e.children = append(f.e.children, p.newEntity(p.off, f.e.depth+1))
}

// closeAbove ends, at end, the entities open inside stack[i] (all of
// them for i = -1) and pops their frames.
func (p *mimeParser) closeAbove(i int, end, nlEnd int64) {
	if p.cur != nil && (i < 0 || p.cur != p.stack[i].e) {
		p.finish(p.cur, end, nlEnd)
	}
	for j := len(p.stack) - 1; j > i; j-- {
		f := p.stack[j]
		if f.boundary != "" && p.bounds[f.boundary] == j {
			delete(p.bounds, f.boundary)
		}
		p.finish(f.e, end, nlEnd)
	}
	p.stack = p.stack[:i+1]
}

// finish sets an entity's end once; an entity still in its header section
// gets an empty body there.
func (p *mimeParser) finish(e *entity, end, nlEnd int64) {
	if e.done {
		return
	}
	if e == p.cur && p.inHeader {
		p.endHeader(e, max(end, e.hdrStart), nlEnd, true)
	}
	e.done = true
	if end < e.bodyStart {
		// The blank line that ended the header was the line ending that
		// belongs to the delimiter after it (RFC 2046 §5.1.1), as in an
		// empty part of a multipart/digest: the header section was cut
		// where the enclosing part ends, and e has no body. As for any
		// cut header (endHeader), a container is an opaque text part: a
		// message begun after that blank line lay outside e.
		e.bodyStart = max(end, e.hdrStart)
		if e.msg != nil || e.children != nil {
			e.opaque, e.mediaType, e.params = true, "text/plain", nil
			e.msg, e.children = nil, nil
		}
	}
	if end <= e.bodyStart {
		e.end, e.lines = e.bodyStart, 0
		return
	}
	e.end, e.lines = end, max(nlEnd-e.nlAtBody, 0)
}

// endHeader ends e's header section at bodyStart (after nl LFs), parses
// it and, for a container, opens it; cut says the section was ended by a
// delimiter or the end of the message, so e has no body to open.
func (p *mimeParser) endHeader(e *entity, bodyStart, nl int64, cut bool) {
	p.inHeader = false
	e.bodyStart, e.end, e.nlAtBody = bodyStart, bodyStart, nl
	e.header = parseHeader(e.rawHeader, e.headerFull)
	e.rawHeader = nil
	parent := ""
	if n := len(p.stack); n > 0 && !p.stack[n-1].closed && p.stack[n-1].boundary != "" {
		parent = p.stack[n-1].e.mediaType
	}
	e.mediaType, e.params = contentType(e.header, parent)
	isMultipart := strings.HasPrefix(e.mediaType, "multipart/")
	isMessage := e.mediaType == "message/rfc822" || e.mediaType == "message/global"
	boundary := e.params["boundary"]
	p.cur = e
	switch {
	case e.opaque || (isMultipart || isMessage) && (cut || e.depth >= maxMIMEDepth),
		isMultipart && (boundary == "" || len(boundary) > maxBoundary):
		// Cut off, or a multipart without a usable boundary: its body
		// is text, with no structure.
		e.opaque = true
		e.mediaType, e.params = "text/plain", nil
	case isMultipart:
		e.children = []*entity{}
		p.stack = append(p.stack, &frame{e: e, boundary: boundary})
		if _, dup := p.bounds[boundary]; !dup {
			p.bounds[boundary] = len(p.stack) - 1
		}
	case isMessage:
		p.stack = append(p.stack, &frame{e: e})
		e.msg = p.newEntity(bodyStart, e.depth+1)
	}
}

// parseHeader parses collected header bytes; a line cut by maxPartHeader
// is dropped.
func parseHeader(raw []byte, cut bool) textproto.Header {
	if cut {
		raw = raw[:bytes.LastIndexByte(raw, '\n')+1]
	}
	if len(raw) == 0 {
		return textproto.Header{}
	}
	if raw[len(raw)-1] != '\n' {
		raw = append(raw, '\r', '\n')
	}
	raw = append(raw, '\r', '\n')
	h, _ := textproto.ReadHeader(lineReader(bytes.NewReader(raw)))
	return h
}

// contentType returns an entity's media type, lower case, and parameters:
// text/plain by default, message/rfc822 inside multipart/digest (RFC 2046
// §5.1.1 and §5.1.5), and text/plain for a value that does not parse.
func contentType(h textproto.Header, parent string) (string, map[string]string) {
	mh := gomessage.Header{Header: h}
	if !mh.Has("Content-Type") {
		if parent == "multipart/digest" {
			return "message/rfc822", nil
		}
		return "text/plain", nil
	}
	t, params, err := mh.ContentType()
	if err != nil {
		t, _, _ = strings.Cut(mh.Get("Content-Type"), ";")
		t = strings.ToLower(strings.TrimSpace(t))
		params = nil
	}
	if typ, sub, ok := strings.Cut(t, "/"); !ok || typ == "" || sub == "" || strings.ContainsAny(t, " \t\"()<>@,;:\\[]?=") {
		return "text/plain", nil
	}
	return t, params
}

// open returns the message inside a message/rfc822 entity, or e itself.
func (e *entity) open() *entity {
	if e.msg != nil {
		return e.msg
	}
	return e
}

// find returns the entity a section's part number names (RFC 9051
// §6.4.5), or nil: part 1 of a message that is not multipart is its body,
// and in an attached message the numbers go on inside it.
func (e *entity) find(path []int) *entity {
	cur := e
	if !cur.isMultipart() && len(path) > 0 && path[0] == 1 {
		path = path[1:]
	}
	for _, n := range path {
		cur = cur.open()
		if !cur.isMultipart() {
			if n != 1 {
				return nil
			}
			continue
		}
		if n < 1 || n > len(cur.children) {
			return nil
		}
		cur = cur.children[n-1]
	}
	return cur
}

// leaves calls f for the entities SEARCH reads as text, in message order:
// every entity without parts, an attached message as a whole.
func (e *entity) leaves(f func(*entity) bool) bool {
	if len(e.children) == 0 {
		return f(e)
	}
	for _, c := range e.children {
		if !c.leaves(f) {
			return false
		}
	}
	return true
}

// parseTop reads only the header section of a message of size bytes:
// enough for ENVELOPE, BODY[HEADER] and BODY[TEXT].
func parseTop(r io.Reader, size int64) *entity {
	p := &mimeParser{r: lineReader(r), bounds: map[string]int{}, budget: maxHeaderTotal, lineStart: true}
	root := p.newEntity(0, 0)
	for p.cur == root && p.inHeader {
		line, err := p.r.ReadSlice('\n')
		if len(line) > 0 {
			p.line(line, err == nil, err == io.EOF)
		}
		if err != nil && err != bufio.ErrBufferFull {
			break
		}
	}
	if p.cur == root && p.inHeader {
		p.endHeader(root, p.off, p.nl, true)
	}
	root.end, root.done = max(size, root.bodyStart), true
	return root
}

// bodyStructure is BODYSTRUCTURE (RFC 9051 §7.5.2) of e, with extension
// data, which imapserver leaves out for BODY.
func bodyStructure(e *entity) imap.BodyStructure {
	h := gomessage.Header{Header: e.header}
	typ, sub, _ := strings.Cut(e.mediaType, "/")
	if e.isMultipart() {
		bs := &imap.BodyStructureMultiPart{Subtype: sub}
		for _, c := range e.children {
			bs.Children = append(bs.Children, bodyStructure(c))
		}
		if len(bs.Children) == 0 {
			// body-type-mpart needs at least one body (RFC 9051 §9),
			// and imapserver panics without: an empty text part stands
			// in for the parts a broken multipart lacks.
			bs.Children = []imap.BodyStructure{&imap.BodyStructureSinglePart{
				Type: "text", Subtype: "plain", Text: &imap.BodyStructureText{},
				Extended: &imap.BodyStructureSinglePartExt{},
			}}
		}
		bs.Extended = &imap.BodyStructureMultiPartExt{
			Params:      e.params,
			Disposition: disposition(h),
			Language:    language(h),
			Location:    h.Get("Content-Location"),
		}
		return bs
	}
	bs := &imap.BodyStructureSinglePart{
		Type:        typ,
		Subtype:     sub,
		Params:      e.params,
		ID:          h.Get("Content-Id"),
		Description: h.Get("Content-Description"),
		Encoding:    h.Get("Content-Transfer-Encoding"),
		Size:        uint32(min(e.end-e.bodyStart, 1<<32-1)),
	}
	if e.msg != nil {
		bs.MessageRFC822 = &imap.BodyStructureMessageRFC822{
			Envelope:      envelope(e.msg.header),
			BodyStructure: bodyStructure(e.msg),
			NumLines:      e.lines,
		}
	}
	if typ == "text" {
		bs.Text = &imap.BodyStructureText{NumLines: e.lines}
	}
	bs.Extended = &imap.BodyStructureSinglePartExt{
		Disposition: disposition(h),
		Language:    language(h),
		Location:    h.Get("Content-Location"),
	}
	return bs
}

// disposition is the Content-Disposition (RFC 2183), or nil.
func disposition(h gomessage.Header) *imap.BodyStructureDisposition {
	d, params, err := h.ContentDisposition()
	if err != nil {
		d, _, _ = strings.Cut(h.Get("Content-Disposition"), ";")
		d, params = strings.ToLower(strings.TrimSpace(d)), nil
	}
	if d == "" {
		return nil
	}
	return &imap.BodyStructureDisposition{Value: d, Params: params}
}

// language is the Content-Language list (RFC 3282).
func language(h gomessage.Header) []string {
	v := h.Get("Content-Language")
	if v == "" {
		return nil
	}
	l := strings.Split(v, ",")
	for i := range l {
		l[i] = strings.TrimSpace(l[i])
	}
	return l
}
