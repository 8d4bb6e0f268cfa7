package imapd

import (
	"bufio"
	"bytes"
	"io"
	"slices"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-message/textproto"

	"github.com/relaymail/relay/mailbox"
)

// content gives the readers FETCH and SEARCH need on one message, reading a
// small message from the store once and a large one in chunks each time.
type content struct {
	boxes *mailbox.Store
	m     mailbox.Message
	data  []byte
}

// smallMessage is the size up to which a message is read into memory once
// per FETCH, since most items need all of it anyway.
const smallMessage = 256 << 10

func (c *content) reader() io.Reader {
	if c.m.Size > smallMessage {
		return c.boxes.Open(c.m)
	}
	if c.data == nil {
		b, err := io.ReadAll(c.boxes.Open(c.m))
		if err != nil {
			return &errReader{err}
		}
		c.data = b
	}
	return bytes.NewReader(c.data)
}

// header reads only the header section.
func (c *content) header() (textproto.Header, error) {
	return textproto.ReadHeader(bufio.NewReader(c.reader()))
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
	for _, m := range msgs {
		seq := v.seqOf(m.UID)
		if seq == 0 {
			continue
		}
		if err := s.fetchOne(w.CreateMessage(seq), m, options, setSeen); err != nil {
			return err
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
		h, err := c.header()
		if err != nil {
			h = textproto.Header{}
		}
		w.WriteEnvelope(imapserver.ExtractEnvelope(h))
	}
	if o.BodyStructure != nil {
		w.WriteBodyStructure(imapserver.ExtractBodyStructure(c.reader()))
	}
	for _, sec := range o.BodySection {
		if err := writeSection(w, c, sec); err != nil {
			return err
		}
	}
	for _, sec := range o.BinarySection {
		b := imapserver.ExtractBinarySection(c.reader(), sec)
		wc := w.WriteBinarySection(sec, int64(len(b)))
		if _, err := wc.Write(b); err != nil {
			return err
		}
		if err := wc.Close(); err != nil {
			return err
		}
	}
	for _, sec := range o.BinarySectionSize {
		w.WriteBinarySectionSize(sec, imapserver.ExtractBinarySectionSize(c.reader(), sec))
	}
	return w.Close()
}

// writeSection writes one BODY[...] item. The whole message (BODY[] with
// or without a partial range) streams from the store, so a 50 MiB message
// is never held in memory; other sections are cut out by the library.
func writeSection(w *imapserver.FetchResponseWriter, c *content, sec *imap.FetchItemBodySection) error {
	if sec.Specifier == imap.PartSpecifierNone && len(sec.Part) == 0 {
		off, n := int64(0), c.m.Size
		if p := sec.Partial; p != nil {
			off = min(p.Offset, c.m.Size)
			n = min(p.Size, c.m.Size-off)
		}
		r := c.reader()
		if _, err := io.CopyN(io.Discard, r, off); err != nil {
			return err
		}
		wc := w.WriteBodySection(sec, n)
		if _, err := io.CopyN(wc, r, n); err != nil {
			wc.Close()
			return err
		}
		return wc.Close()
	}
	b := imapserver.ExtractBodySection(c.reader(), sec)
	wc := w.WriteBodySection(sec, int64(len(b)))
	if _, err := wc.Write(b); err != nil {
		wc.Close()
		return err
	}
	return wc.Close()
}
