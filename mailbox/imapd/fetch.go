package imapd

import (
	"bytes"
	"io"
	"slices"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	gomessage "github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"

	"github.com/relaymail/relay/mailbox"
)

// content gives the readers FETCH and SEARCH need on one message, reading a
// small message from the store once and a large one in chunks each time.
// What needs only the header (ENVELOPE, BODY[HEADER...], SEARCH on header
// fields) reads the header section the store keeps apart, not the body.
type content struct {
	boxes  *mailbox.Store
	m      mailbox.Message
	data   []byte
	head   []byte // the stored header section, when read instead of data
	noHead bool   // the store has no header section for the message
	// in, when set, reads the stored header section in a transaction
	// that visits many messages.
	in   *mailbox.TxnReader
	tree *entity // the MIME structure, parsed on first use
	top  *entity // the header section only, if tree is not parsed
	// fields is the top-level header alone, parsed from head without
	// the MIME parser, for what needs no offsets or media type.
	fields *textproto.Header
}

// smallMessage is the size up to which a message is read into memory once
// per FETCH, since most items need all of it anyway.
const smallMessage = 256 << 10

func (c *content) reader() io.Reader {
	if c.data != nil {
		return bytes.NewReader(c.data)
	}
	if c.m.Size > smallMessage {
		return c.boxes.Open(c.m)
	}
	// The size is known: one allocation instead of ReadAll's doublings.
	var buf bytes.Buffer
	buf.Grow(int(c.m.Size) + bytes.MinRead)
	if _, err := buf.ReadFrom(c.boxes.Open(c.m)); err != nil {
		return &errReader{err}
	}
	c.data = buf.Bytes()
	return bytes.NewReader(c.data)
}

// section returns the bytes [off, off+n) of the message.
func (c *content) section(off, n int64) io.Reader {
	if c.data == nil && off+n <= int64(len(c.head)) {
		return bytes.NewReader(c.head[off : off+n])
	}
	r := c.reader()
	if br, ok := r.(*bytes.Reader); ok {
		br.Seek(off, io.SeekStart)
		return io.LimitReader(br, n)
	}
	if _, err := io.CopyN(io.Discard, r, off); err != nil {
		return &errReader{err}
	}
	return io.LimitReader(r, n)
}

// mime returns the message's MIME structure.
func (c *content) mime() *entity {
	if c.tree == nil {
		c.tree = parseMIME(c.reader())
		c.top = c.tree
	}
	return c.tree
}

// header returns the top-level entity with its header parsed and its
// body's extent, reading only the header section when the structure is
// not needed otherwise.
func (c *content) header() *entity {
	if c.top != nil {
		return c.top
	}
	if c.data == nil && c.storedHead() != nil {
		// Parsing the stored header section ends where parsing the
		// message would: at the same empty line, or at the end of a
		// message that is all header.
		c.top = parseTop(bytes.NewReader(c.head), c.m.Size)
		return c.top
	}
	c.top = parseTop(c.reader(), c.m.Size)
	return c.top
}

// storedHead returns the header section the store keeps apart, or nil when
// there is none or the message was read already.
func (c *content) storedHead() []byte {
	if c.data == nil && c.head == nil && !c.noHead {
		read := c.boxes.Head
		if c.in != nil {
			read = c.in.Head
		}
		head, ok, err := read(c.m)
		c.head, c.noHead = head, err != nil || !ok
	}
	return c.head
}

// headerFields returns the top-level header fields. It parses the stored
// header section directly when nothing else is parsed yet: SEARCH on 10,000
// messages spent most of its time in the MIME parser otherwise.
func (c *content) headerFields() textproto.Header {
	switch {
	case c.top != nil:
		return c.top.header
	case c.fields != nil:
		return *c.fields
	}
	if c.storedHead() == nil {
		return c.header().header
	}
	// As the MIME parser would for a header section of this size (under
	// maxPartHeader): the same bytes, to the same empty line.
	h := parseHeader(c.head, false)
	c.fields = &h
	return h
}

type errReader struct{ err error }

func (e *errReader) Read([]byte) (int, error) { return 0, e.err }

// needsSeen reports whether FETCH sets \Seen: a non-PEEK body or binary item
// (RFC 3501 §6.4.5).
func needsSeen(o *imap.FetchOptions) bool {
	for _, s := range o.BodySection {
		if !s.Peek {
			return true
		}
	}
	for _, s := range o.BinarySection {
		if !s.Peek {
			return true
		}
	}
	return false
}

func (s *session) Fetch(w *imapserver.FetchWriter, numSet imap.NumSet, options *imap.FetchOptions) error {
	v := s.sel
	if err := v.checkSeq(numSet); err != nil {
		return err
	}
	uids := v.resolve(numSet)
	if len(uids) == 0 {
		return nil
	}
	boxes := s.srv.boxes
	msgs, err := boxes.GetMessages(v.id, uids)
	if err != nil {
		return imapError(err)
	}
	setSeen := !v.readOnly && needsSeen(options)
	if setSeen {
		var unseen []uint32
		for _, m := range msgs {
			if !slices.Contains(m.Flags, string(imap.FlagSeen)) {
				unseen = append(unseen, m.UID)
			}
		}
		if len(unseen) > 0 {
			changes, err := boxes.SetFlags(s.user, v.name, unseen, mailbox.FlagsAdd, []string{string(imap.FlagSeen)}, s)
			if err != nil {
				return imapError(err)
			}
			byUID := map[uint32][]string{}
			for _, c := range changes {
				byUID[c.UID] = c.Flags
			}
			for i := range msgs {
				if f, ok := byUID[msgs[i].UID]; ok {
					msgs[i].Flags = f
				}
			}
		}
	}
	if options.Flags || setSeen {
		// Another session may have set a keyword this one has not been
		// told of yet.
		if err := announceKeywords(v, msgs, messageFlags); err != nil {
			return serverError(err)
		}
	}
	for _, m := range msgs {
		seq := v.seqOf(m.UID)
		if seq == 0 {
			continue
		}
		if err := s.fetchOne(w.CreateMessage(seq), m, options, setSeen); err != nil {
			return serverError(err)
		}
	}
	return nil
}

func (s *session) fetchOne(w *imapserver.FetchResponseWriter, m mailbox.Message, o *imap.FetchOptions, sawSeen bool) error {
	v := s.sel
	c := &content{boxes: s.srv.boxes, m: m}
	// The library sets o.UID for UID FETCH, which always reports the UID
	// (RFC 3501 §6.4.8).
	if o.UID {
		w.WriteUID(imap.UID(m.UID))
	}
	if o.Flags || sawSeen {
		w.WriteFlags(v.flags(m))
	}
	if o.InternalDate {
		w.WriteInternalDate(m.Date)
	}
	if o.RFC822Size {
		w.WriteRFC822Size(m.Size)
	}
	if o.Envelope {
		w.WriteEnvelope(envelope(c.headerFields()))
	}
	if o.BodyStructure != nil {
		w.WriteBodyStructure(bodyStructure(c.mime()))
	}
	for _, sec := range o.BodySection {
		if err := writeSection(w, c, sec); err != nil {
			return err
		}
	}
	if items := binaryItems(o.BinarySection); items != nil && s.guard != nil {
		s.guard.expectBinary(items)
		defer s.guard.expectBinary(nil)
	}
	for _, sec := range o.BinarySection {
		if err := writeBinary(w, c, sec); err != nil {
			return err
		}
	}
	for _, sec := range o.BinarySectionSize {
		w.WriteBinarySectionSize(sec, uint32(min(binarySize(c, sec.Part), 1<<32-1)))
	}
	return w.Close()
}

// writeSection writes one BODY[...] item (RFC 9051 §6.4.5), RFC822,
// RFC822.HEADER or RFC822.TEXT. These are sent as a plain literal, which
// cannot hold NUL (RFC 9051 §4.3, RFC 3501 §9: CHAR8 is %x01-ff); only
// BINARY's literal8 can (RFC 3516 §4.2). A message may still hold NUL:
// SMTP refuses it, APPEND takes it. As Dovecot does, each NUL is sent as
// 0x80, which keeps every size and partial offset the same; BINARY[]
// sends the message's own octets.
func writeSection(w *imapserver.FetchResponseWriter, c *content, sec *imap.FetchItemBodySection) error {
	r, n := bodySection(c, sec)
	r = noNUL{r}
	wc := w.WriteBodySection(sec, n)
	if _, err := io.CopyN(wc, r, n); err != nil {
		wc.Close()
		return err
	}
	return wc.Close()
}

// bodySection returns the bytes of a BODY[...] item and their number. The
// whole message (BODY[] with or without a partial range) and every part
// stream from the store, so a 50 MiB message is never held in memory;
// only a header with some fields picked is rebuilt.
func bodySection(c *content, sec *imap.FetchItemBodySection) (io.Reader, int64) {
	if sec.Specifier == imap.PartSpecifierNone && len(sec.Part) == 0 {
		off, n := window(c.m.Size, sec.Partial)
		return c.section(off, n), n
	}
	var e *entity
	switch {
	case len(sec.Part) == 0 && sec.Specifier == imap.PartSpecifierHeader && (len(sec.HeaderFields) > 0 || len(sec.HeaderFieldsNot) > 0):
		// Fields picked from the top-level header (how Thunderbird
		// and others list a mailbox) need nothing but the fields.
		e = &entity{header: c.headerFields()}
	case len(sec.Part) == 0:
		e = c.header()
	default:
		e = c.mime().find(sec.Part)
	}
	if e == nil {
		return bytes.NewReader(nil), 0
	}
	if len(sec.Part) > 0 && (sec.Specifier == imap.PartSpecifierHeader || sec.Specifier == imap.PartSpecifierText) {
		// HEADER and TEXT of a part are those of the message inside it.
		e = e.open()
	}
	var hdr []byte
	if sec.Specifier == imap.PartSpecifierHeader || sec.Specifier == imap.PartSpecifierMIME {
		hdr = c.headerBytes(e, sec)
	}
	var bodyLen int64
	if sec.Specifier == imap.PartSpecifierNone || sec.Specifier == imap.PartSpecifierText {
		bodyLen = e.end - e.bodyStart
	}
	off, n := window(int64(len(hdr))+bodyLen, sec.Partial)
	hpart := hdr[min(off, int64(len(hdr))):min(int64(len(hdr)), off+n)]
	rest := n - int64(len(hpart))
	if rest == 0 {
		return bytes.NewReader(hpart), n
	}
	boff := max(off-int64(len(hdr)), 0)
	return io.MultiReader(bytes.NewReader(hpart), c.section(e.bodyStart+boff, rest)), n
}

// noNUL replaces NUL octets with 0x80 (see writeSection).
type noNUL struct{ r io.Reader }

func (z noNUL) Read(p []byte) (int, error) {
	n, err := z.r.Read(p)
	for b := p[:n]; ; {
		i := bytes.IndexByte(b, 0)
		if i < 0 {
			break
		}
		b[i] = 0x80
		b = b[i+1:]
	}
	return n, err
}

// headerBytes is e's header section as BODY[HEADER], BODY[HEADER.FIELDS
// (...)] or BODY[part.MIME] return it: the raw bytes with the blank line,
// or the fields picked.
func (c *content) headerBytes(e *entity, sec *imap.FetchItemBodySection) []byte {
	if len(sec.HeaderFields) == 0 && len(sec.HeaderFieldsNot) == 0 {
		b, err := io.ReadAll(c.section(e.hdrStart, e.bodyStart-e.hdrStart))
		if err != nil {
			return nil
		}
		// A header section cut off by the end of its part still ends
		// with a line ending and a blank line, as RFC 9051 §6.4.5 has it.
		if len(b) > 0 && b[len(b)-1] != '\n' {
			b = append(b, '\r', '\n')
		}
		if !bytes.HasSuffix(b, []byte("\n\n")) && !bytes.HasSuffix(b, []byte("\n\r\n")) && string(b) != "\r\n" && string(b) != "\n" {
			b = append(b, '\r', '\n')
		}
		return b
	}
	h := e.header.Copy()
	if len(sec.HeaderFields) > 0 {
		keep := map[string]bool{}
		for _, k := range sec.HeaderFields {
			keep[strings.ToLower(k)] = true
		}
		for f := h.Fields(); f.Next(); {
			if !keep[strings.ToLower(f.Key())] {
				f.Del()
			}
		}
	}
	for _, k := range sec.HeaderFieldsNot {
		h.Del(k)
	}
	var buf bytes.Buffer
	textproto.WriteHeader(&buf, h)
	return buf.Bytes()
}

// window applies a <offset.size> partial range to a section of size n.
func window(size int64, p *imap.SectionPartial) (off, n int64) {
	if p == nil {
		return 0, size
	}
	off = min(max(p.Offset, 0), size)
	return off, min(max(p.Size, 0), size-off)
}

// binaryReader decodes the part a BINARY item names (RFC 3516): its body
// without the content transfer encoding, after the header for the whole
// message. ok is false for a part that does not exist.
func binaryReader(c *content, part []int) (r io.Reader, ok bool) {
	var e *entity
	if len(part) == 0 {
		e = c.header()
	} else if e = c.mime().find(part); e == nil {
		return nil, false
	}
	body := c.section(e.bodyStart, e.end-e.bodyStart)
	ent, err := gomessage.New(gomessage.Header{Header: e.header}, body)
	if ent == nil {
		return &errReader{err}, true
	}
	if len(part) > 0 {
		return ent.Body, true
	}
	var buf bytes.Buffer
	textproto.WriteHeader(&buf, e.header)
	return io.MultiReader(&buf, ent.Body), true
}

// binarySize is the decoded size of a part, counted without keeping it.
func binarySize(c *content, part []int) int64 {
	r, ok := binaryReader(c, part)
	if !ok {
		return 0
	}
	n, _ := io.Copy(io.Discard, r)
	return n
}

// writeBinary writes one BINARY[...] item.
func writeBinary(w *imapserver.FetchResponseWriter, c *content, sec *imap.FetchItemBinarySection) error {
	r, n := binarySection(c, sec)
	wc := w.WriteBinarySection(sec, n)
	if _, err := io.CopyN(wc, r, n); err != nil {
		wc.Close()
		return err
	}
	return wc.Close()
}

// binarySection returns the decoded bytes of a BINARY[...] item and their
// number: the size is counted in a first pass, since the literal
// announces it, and the bytes stream in a second one, so a large
// attachment is never held in memory.
func binarySection(c *content, sec *imap.FetchItemBinarySection) (io.Reader, int64) {
	off, n := window(binarySize(c, sec.Part), sec.Partial)
	r, ok := binaryReader(c, sec.Part)
	if !ok {
		return bytes.NewReader(nil), 0
	}
	if _, err := io.CopyN(io.Discard, r, off); err != nil {
		return bytes.NewReader(nil), 0
	}
	return r, n
}
