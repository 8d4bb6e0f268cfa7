package imapd

import (
	"bytes"
	"io"
	"mime"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	gomessage "github.com/emersion/go-message"
	// Importing charset registers its decoders with go-message, so SEARCH
	// and ENVELOPE read ISO-8859-x, Windows-125x and the other charsets
	// mail still uses.
	"github.com/emersion/go-message/charset"
	"github.com/emersion/go-message/textproto"

	"github.com/relaymail/relay/mailbox"
)

// candidate is one message under evaluation, with its text parsed only when
// a criterion needs it.
type candidate struct {
	seq        uint32
	m          mailbox.Message
	v          *view
	c          *content
	hdrParsed  bool
	bodyParsed bool
	hdr        textproto.Header
	body       string // decoded text of the text parts, lower-cased
	hdrTxt     string // decoded header fields, lower-cased
	hdrTxtDone bool
	q          *query
	// plain is the stored header section lower-cased, when there is one
	// without encoded words; plainDone says it was looked for.
	plain     string
	plainOK   bool
	plainDone bool
}

// query is what one SEARCH works out once for all its candidates.
type query struct {
	values map[string]*searchValue // header criteria's values, by value
	cache  *fieldCache
	box    uint64
	fields map[string]*fieldSearch // by field name as the criterion gives it
}

// field returns the search's use of the field cache for key.
func (q *query) field(key string) *fieldSearch {
	fs, ok := q.fields[key]
	if !ok {
		fs = q.cache.begin(q.box, key)
		q.fields[key] = fs
	}
	return fs
}

// end finishes the search's use of the field cache; messages is how many
// the mailbox held.
func (q *query) end(messages int) {
	for _, fs := range q.fields {
		fs.end(messages)
	}
}

// searchValue is a header criterion's value as every candidate compares
// it: lower-cased, and split into words for headerLacks.
type searchValue struct {
	lower  string
	words  []string
	hasNUL bool
}

func (q *query) value(v string) *searchValue {
	sv, ok := q.values[v]
	if !ok {
		lower := strings.ToLower(v)
		sv = &searchValue{lower: lower, words: strings.Fields(lower), hasNUL: strings.IndexByte(lower, 0) >= 0}
		q.values[v] = sv
	}
	return sv
}

func (s *session) Search(kind imapserver.NumKind, criteria *imap.SearchCriteria, options *imap.SearchOptions) (*imap.SearchData, error) {
	v := s.sel
	var hits []uint32 // UIDs
	seqOf := map[uint32]uint32{}
	q := &query{values: map[string]*searchValue{}, cache: s.srv.fields, box: v.id, fields: map[string]*fieldSearch{}}
	messages := 0
	err := s.srv.boxes.ForEachMessageIn(v.id, func(m mailbox.Message, r *mailbox.TxnReader) error {
		messages++
		seq := v.seqOf(m.UID)
		if seq == 0 {
			return nil // not announced to this session yet
		}
		c := &candidate{seq: seq, m: m, v: v, q: q, c: &content{boxes: s.srv.boxes, m: m, in: r}}
		if c.match(criteria) {
			hits = append(hits, m.UID)
			seqOf[m.UID] = seq
		}
		return nil
	})
	if err != nil {
		return nil, imapError(err)
	}
	q.end(messages)
	if options.ReturnSave {
		v.searchRes = saved(hits, options)
	}
	data := &imap.SearchData{Count: uint32(len(hits))}
	if kind == imapserver.NumKindUID {
		var set imap.UIDSet
		for _, uid := range hits {
			set.AddNum(imap.UID(uid))
		}
		data.All = set
		if len(hits) > 0 {
			data.Min, data.Max = hits[0], hits[len(hits)-1]
		}
	} else {
		var set imap.SeqSet
		for _, uid := range hits {
			set.AddNum(seqOf[uid])
		}
		data.All = set
		if len(hits) > 0 {
			data.Min, data.Max = seqOf[hits[0]], seqOf[hits[len(hits)-1]]
		}
	}
	return data, nil
}

// saved is what SEARCH RETURN (... SAVE) keeps for "$": with MIN and/or MAX
// only those messages, otherwise every hit (RFC 5182 §2.1).
func saved(hits []uint32, o *imap.SearchOptions) []uint32 {
	if len(hits) == 0 || !o.ReturnMin && !o.ReturnMax || o.ReturnAll || o.ReturnCount {
		return hits
	}
	var out []uint32
	if o.ReturnMin {
		out = append(out, hits[0])
	}
	if o.ReturnMax && (!o.ReturnMin || len(hits) > 1) {
		out = append(out, hits[len(hits)-1])
	}
	return out
}

// match evaluates all of c's criteria (RFC 3501 §6.4.4), cheapest first.
func (c *candidate) match(cr *imap.SearchCriteria) bool {
	n := uint32(len(c.v.uids))
	for _, set := range cr.SeqNum {
		if !seqSetHas(set, c.seq, n) {
			return false
		}
	}
	for _, set := range cr.UID {
		if imap.IsSearchRes(set) {
			if !slices.Contains(c.v.searchRes, c.m.UID) {
				return false
			}
			continue
		}
		if !uidSetHas(set, c.m.UID, c.v.lastUID()) {
			return false
		}
	}
	for _, f := range cr.Flag {
		if !c.hasFlag(f) {
			return false
		}
	}
	for _, f := range cr.NotFlag {
		if c.hasFlag(f) {
			return false
		}
	}
	if cr.Larger > 0 && c.m.Size <= cr.Larger {
		return false
	}
	if cr.Smaller > 0 && c.m.Size >= cr.Smaller {
		return false
	}
	if !dateIn(c.m.Date, cr.Since, cr.Before) {
		return false
	}
	if !cr.SentSince.IsZero() || !cr.SentBefore.IsZero() {
		c.parseHeader()
		sent, err := headerDate(c.hdr.Get("Date"))
		if err != nil || !dateIn(sent, cr.SentSince, cr.SentBefore) {
			return false
		}
	}
	for _, h := range cr.Header {
		if !c.headerMatch(h.Key, h.Value) {
			return false
		}
	}
	for _, b := range cr.Body {
		c.parseBody()
		if !strings.Contains(c.body, strings.ToLower(b)) {
			return false
		}
	}
	for _, t := range cr.Text {
		c.parseHeaderText()
		c.parseBody()
		t = strings.ToLower(t)
		if !strings.Contains(c.hdrTxt, t) && !strings.Contains(c.body, t) {
			return false
		}
	}
	for _, not := range cr.Not {
		if c.match(&not) {
			return false
		}
	}
	for _, or := range cr.Or {
		if !c.match(&or[0]) && !c.match(&or[1]) {
			return false
		}
	}
	return true
}

func (c *candidate) hasFlag(f imap.Flag) bool {
	if strings.EqualFold(string(f), `\Recent`) {
		return c.v.recent[c.m.UID]
	}
	for _, x := range c.m.Flags {
		if strings.EqualFold(x, string(f)) {
			return true
		}
	}
	return false
}

// dateIn compares dates only, ignoring time and zone (RFC 3501 §6.4.4).
func dateIn(t, since, before time.Time) bool {
	day := func(t time.Time) time.Time { return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC) }
	if !since.IsZero() && day(t).Before(day(since)) {
		return false
	}
	if !before.IsZero() && !day(t).Before(day(before)) {
		return false
	}
	return true
}

func seqSetHas(set imap.SeqSet, seq, n uint32) bool {
	for _, r := range set {
		if lo, hi := span(r.Start, r.Stop, n); seq >= lo && seq <= hi {
			return true
		}
	}
	return false
}

func uidSetHas(set imap.UIDSet, uid, last uint32) bool {
	for _, r := range set {
		if lo, hi := span(uint32(r.Start), uint32(r.Stop), last); uid >= lo && uid <= hi {
			return true
		}
	}
	return false
}

// headerMatch evaluates a header field criterion: from the field cache
// when the message's value is there, else from the header, which the
// cache then learns when it is learning the field.
func (c *candidate) headerMatch(key, value string) bool {
	sv := c.q.value(value)
	if sv.hasNUL {
		// NUL separates the cached values; no IMAP string holds it,
		// but the parser is not ours to trust.
		c.parseHeader()
		return c.headerHas(key, value)
	}
	fs := c.q.field(key)
	if v, ok := fs.get(c.m.UID); ok {
		return v.has(sv.lower)
	}
	if !fs.learning() {
		if c.headerLacks(value) {
			return false
		}
		c.parseHeader()
		return c.headerHas(key, value)
	}
	c.parseHeader()
	v := fieldValueOf(c, key)
	fs.put(c.m.UID, v)
	return v.has(sv.lower)
}

// headerHas: an empty value asks whether the field exists; otherwise a
// case-insensitive substring of the decoded field value.
func (c *candidate) headerHas(key, value string) bool {
	fields := c.hdr.FieldsByKey(key)
	value = strings.ToLower(value)
	for fields.Next() {
		if value == "" {
			return true
		}
		raw := fields.Value()
		if strings.Contains(strings.ToLower(decodeWords(raw)), value) || strings.Contains(strings.ToLower(raw), value) {
			return true
		}
	}
	return false
}

// headerLacks reports, without parsing the header, that no header field can
// contain value, because some word of it is nowhere in the stored header
// section, in any case. That is exact where headerHas compares the raw
// bytes: unfolding only joins lines with a space, so a run of the value
// without white space lies within one line of the header; and a header
// without encoded words decodes to its own bytes. SEARCH SUBJECT on 10,000
// messages spent most of its time parsing headers that could not match.
func (c *candidate) headerLacks(value string) bool {
	words := c.q.value(value).words
	if len(words) == 0 {
		return false
	}
	head, ok := c.plainHead()
	if !ok {
		return false
	}
	for _, w := range words {
		if !strings.Contains(head, w) {
			return true
		}
	}
	return false
}

// plainHead returns the stored header section lower-cased, and false when
// there is none or it holds encoded words.
func (c *candidate) plainHead() (string, bool) {
	if !c.plainDone {
		c.plainDone = true
		if head := c.c.storedHead(); head != nil && !bytes.Contains(head, []byte("=?")) {
			c.plain, c.plainOK = strings.ToLower(string(head)), true
		}
	}
	return c.plain, c.plainOK
}

// maxSearchText bounds how much decoded text of one message SEARCH looks
// at, so a huge attachment-like text part cannot stall the server.
const maxSearchText = 4 << 20

// parseHeader parses the header section once.
func (c *candidate) parseHeader() {
	if c.hdrParsed {
		return
	}
	c.hdrParsed = true
	c.hdr = c.c.headerFields()
}

// parseHeaderText decodes every header field once, for TEXT. SUBJECT,
// FROM and the other field criteria decode only the fields they name: on
// 10,000 messages, decoding them all took a third of a SEARCH SUBJECT.
func (c *candidate) parseHeaderText() {
	if c.hdrTxtDone {
		return
	}
	c.hdrTxtDone = true
	c.parseHeader()
	var ht strings.Builder
	fields := c.hdr.Fields()
	for fields.Next() {
		ht.WriteString(fields.Key())
		ht.WriteString(": ")
		ht.WriteString(decodeWords(fields.Value()))
		ht.WriteString("\n")
	}
	c.hdrTxt = strings.ToLower(ht.String())
}

// parseBody decodes the text parts once, in one pass over the message, up
// to maxSearchText.
func (c *candidate) parseBody() {
	if c.bodyParsed {
		return
	}
	c.bodyParsed = true
	tree := c.c.mime()
	seq := &seqReader{r: c.c.reader()}
	var body strings.Builder
	tree.leaves(func(e *entity) bool {
		// An attached message is searched as text too (RFC 3501
		// §6.4.4 searches the whole body), as it is.
		if !strings.HasPrefix(e.mediaType, "text/") && e.msg == nil {
			return true
		}
		var r io.Reader = seq.section(e.bodyStart, e.end-e.bodyStart)
		if e.msg == nil {
			if ent, _ := gomessage.New(gomessage.Header{Header: e.header}, r); ent != nil {
				r = ent.Body
			}
		}
		b, _ := io.ReadAll(io.LimitReader(r, int64(maxSearchText-body.Len())))
		body.Write(b)
		body.WriteByte('\n')
		return body.Len() < maxSearchText
	})
	c.body = strings.ToLower(body.String())
}

// seqReader reads sections of a message in increasing order from one
// stream, so a message in many parts is read once, not once per part.
type seqReader struct {
	r   io.Reader
	pos int64
}

func (s *seqReader) section(off, n int64) io.Reader {
	if off > s.pos {
		k, _ := io.CopyN(io.Discard, s.r, off-s.pos)
		s.pos += k
	}
	if off < s.pos {
		return bytes.NewReader(nil) // sections never overlap
	}
	return &seqSection{s: s, left: n}
}

type seqSection struct {
	s    *seqReader
	left int64
}

func (r *seqSection) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.s.r.Read(p)
	r.s.pos += int64(n)
	r.left -= int64(n)
	return n, err
}

var wordDecoder = &mime.WordDecoder{CharsetReader: charset.Reader}

// decodeWords decodes RFC 2047 encoded words; a value that does not decode
// is searched as it is.
func decodeWords(v string) string {
	d, err := wordDecoder.DecodeHeader(v)
	if err != nil {
		return v
	}
	return d
}
