package imapd

import (
	"errors"
	"slices"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/relaymail/relay/mailbox"
)

// view is a selected mailbox as one session sees it: the UIDs it has
// announced, in sequence-number order, and its \Recent messages.
type view struct {
	s           *session
	name        string
	id          uint64
	readOnly    bool
	uidValidity uint32
	uidNext     uint32

	uids   []uint32 // sequence number n is uids[n-1]
	recent map[uint32]bool
	// firstUnseen is the sequence number of the first message without
	// \Seen when the mailbox was selected, or 0.
	firstUnseen uint32
	// keywords are the flags beyond the system flags that the client
	// has been told of in FLAGS.
	keywords keywordSet

	// Changes by other sessions not yet reported: expunges wait for a
	// command that allows them (not FETCH, STORE or SEARCH).
	pendingExpunge []uint32
	pendingFlags   map[uint32]bool

	searchRes []uint32 // SEARCHRES "$"
}

// openView selects a mailbox. One pass over its messages gives the
// sequence-number map, the first unseen message (RFC 3501 §6.3.1 UNSEEN)
// and the keywords in use, which FLAGS lists (RFC 3501 §7.2.6).
func openView(s *session, name string, readOnly bool) (*view, error) {
	boxes := s.srv.boxes
	mb, err := boxes.GetMailbox(s.user, name)
	if err != nil {
		return nil, err
	}
	// Events before this point describe a state the scan below already
	// includes.
	s.sub.Drain()
	v := &view{s: s, name: mb.Name, id: mb.ID, readOnly: readOnly, uidValidity: mb.UIDValidity,
		uidNext: mb.UIDNext, recent: map[uint32]bool{}, pendingFlags: map[uint32]bool{}}
	err = boxes.ForEachMessage(mb.ID, func(m mailbox.Message) error {
		v.uids = append(v.uids, m.UID)
		if v.firstUnseen == 0 && !mailbox.HasFlag(m.Flags, mailbox.FlagSeen) {
			v.firstUnseen = uint32(len(v.uids))
		}
		v.keywords.learn(m.Flags)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if n := len(v.uids); n > 0 && v.uids[n-1] >= v.uidNext {
		v.uidNext = v.uids[n-1] + 1
	}
	if readOnly {
		v.peekRecent(v.uids, mb.FirstRecent)
		return v, nil
	}
	if err := v.claimRecent(); err != nil {
		return nil, err
	}
	return v, nil
}

// claimRecent makes the messages no session has seen yet \Recent in this
// one, and only in this one.
func (v *view) claimRecent() error {
	first, next, err := v.s.srv.boxes.ClaimRecent(v.s.user, v.name)
	if err != nil {
		return err
	}
	for _, uid := range v.uids {
		if uid >= first && uid < next {
			v.recent[uid] = true
		}
	}
	return nil
}

// peekRecent marks as \Recent the given messages that no session has
// claimed, from firstRecent (the mailbox's FirstRecent) on, without
// claiming them: EXAMINE must not take \Recent away from the session that
// selects the mailbox next (RFC 3501 §6.3.2), and reports what STATUS
// RECENT counts.
func (v *view) peekRecent(uids []uint32, firstRecent uint32) {
	for _, uid := range uids {
		if uid >= firstRecent {
			v.recent[uid] = true
		}
	}
}

func (v *view) lastUID() uint32 {
	if len(v.uids) == 0 {
		return 0
	}
	return v.uids[len(v.uids)-1]
}

// seqOf returns the sequence number of uid, or 0.
func (v *view) seqOf(uid uint32) uint32 {
	i, ok := slices.BinarySearch(v.uids, uid)
	if !ok {
		return 0
	}
	return uint32(i + 1)
}

// sync reports other sessions' changes: expunges (when allowed), new
// messages and flag changes. changed says the subscription signalled.
func (v *view) sync(w *imapserver.UpdateWriter, allowExpunge, changed bool) error {
	boxes := v.s.srv.boxes
	newMsgs := false
	if changed {
		events, overflow := v.s.sub.Drain()
		if overflow {
			if err := v.resync(); err != nil {
				return err
			}
		}
		for _, ev := range events {
			if ev.Mailbox != v.id || ev.Source == v.s {
				continue
			}
			v.pendingExpunge = append(v.pendingExpunge, ev.Expunged...)
			for _, uid := range ev.Flags {
				v.pendingFlags[uid] = true
			}
		}
		newMsgs = true
	}
	if allowExpunge && len(v.pendingExpunge) > 0 {
		for _, uid := range v.pendingExpunge {
			delete(v.pendingFlags, uid)
		}
		seqs := v.removeUIDs(v.pendingExpunge)
		v.pendingExpunge = v.pendingExpunge[:0]
		for _, seq := range seqs {
			if err := w.WriteExpunge(seq); err != nil {
				return err
			}
		}
	}
	if newMsgs {
		added, err := boxes.UIDsAfter(v.id, v.lastUID())
		if err != nil {
			return err
		}
		if len(added) > 0 {
			v.uids = append(v.uids, added...)
			v.uidNext = max(v.uidNext, added[len(added)-1]+1)
			if err := v.newRecent(added); err != nil {
				return err
			}
			if err := w.WriteNumMessages(uint32(len(v.uids))); err != nil {
				return err
			}
			if err := w.WriteNumRecent(uint32(len(v.recent))); err != nil {
				return err
			}
		}
	}
	if len(v.pendingFlags) > 0 {
		uids := make([]uint32, 0, len(v.pendingFlags))
		for uid := range v.pendingFlags {
			uids = append(uids, uid)
		}
		slices.Sort(uids)
		clear(v.pendingFlags)
		msgs, err := boxes.GetMessages(v.id, uids)
		if err != nil {
			return err
		}
		if err := announceKeywords(v, msgs, messageFlags); err != nil {
			return err
		}
		for _, m := range msgs {
			if seq := v.seqOf(m.UID); seq != 0 {
				if err := w.WriteMessageFlags(seq, imap.UID(m.UID), v.flags(m)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// newRecent gives new arrivals \Recent: claimed in a read-write session,
// peeked at in a read-only one.
func (v *view) newRecent(added []uint32) error {
	if !v.readOnly {
		return v.claimRecent()
	}
	mb, err := v.s.srv.boxes.GetMailbox(v.s.user, v.name)
	if err != nil {
		return err
	}
	v.peekRecent(added, mb.FirstRecent)
	return nil
}

// resync rebuilds pending changes from the store after the subscription
// lost events: every UID that vanished is an expunge, every message's flags
// are re-sent.
func (v *view) resync() error {
	now, err := v.s.srv.boxes.UIDs(v.id)
	if err != nil {
		return err
	}
	for _, uid := range v.uids {
		if _, ok := slices.BinarySearch(now, uid); ok {
			v.pendingFlags[uid] = true
		} else {
			v.pendingExpunge = append(v.pendingExpunge, uid)
		}
	}
	return nil
}

// removeUIDs takes the given UIDs out of the view and returns the sequence
// numbers to announce them with, in order: each EXPUNGE renumbers the
// messages after it (RFC 3501 §7.4.1), so the k-th removal counts k fewer
// messages before it. One pass over the view, however many go: removing
// them one at a time moved the rest of the view each time, and expunging
// 100,000 messages took seconds.
func (v *view) removeUIDs(uids []uint32) []uint32 {
	gone := slices.Clone(uids)
	slices.Sort(gone)
	gone = slices.Compact(gone)
	var seqs []uint32
	kept := v.uids[:0]
	g := 0
	for i, uid := range v.uids {
		for g < len(gone) && gone[g] < uid {
			g++
		}
		if g < len(gone) && gone[g] == uid {
			seqs = append(seqs, uint32(i+1-len(seqs)))
			delete(v.recent, uid)
			continue
		}
		kept = append(kept, uid)
	}
	v.uids = kept
	return seqs
}

// flags are a message's stored flags plus \Recent when this session holds it.
func (v *view) flags(m mailbox.Message) []imap.Flag {
	out := make([]imap.Flag, 0, len(m.Flags)+1)
	for _, f := range m.Flags {
		out = append(out, imap.Flag(f))
	}
	// IMAP4rev2 has no \Recent (RFC 9051 appendix E).
	if v.recent[m.UID] && !v.s.conn.EnabledCaps().Has(imap.CapIMAP4rev2) {
		out = append(out, imap.Flag(`\Recent`))
	}
	return out
}

// resolve turns a sequence set, UID set or "$" into UIDs of this view, in
// ascending order. "*" is the last message (RFC 3501 §6.4.8: n:* includes
// the highest UID even when n is above it). Numbers outside the view are
// ignored.
func (v *view) resolve(numSet imap.NumSet) []uint32 {
	if imap.IsSearchRes(numSet) {
		var out []uint32
		for _, uid := range v.searchRes {
			if v.seqOf(uid) != 0 {
				out = append(out, uid)
			}
		}
		return out
	}
	n := uint32(len(v.uids))
	var out []uint32
	switch set := numSet.(type) {
	case imap.SeqSet:
		for _, r := range set {
			lo, hi := span(r.Start, r.Stop, n)
			for seq := max(lo, 1); seq <= min(hi, n); seq++ {
				out = append(out, v.uids[seq-1])
			}
		}
	case imap.UIDSet:
		last := v.lastUID()
		for _, r := range set {
			lo, hi := span(uint32(r.Start), uint32(r.Stop), last)
			i, _ := slices.BinarySearch(v.uids, lo)
			for ; i < len(v.uids) && v.uids[i] <= hi; i++ {
				out = append(out, v.uids[i])
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// span orders a range and gives "*" (stored as 0) the value last.
func span(start, stop, last uint32) (lo, hi uint32) {
	if start == 0 {
		start = last
	}
	if stop == 0 {
		stop = last
	}
	return min(start, stop), max(start, stop)
}

// checkSeq refuses sequence numbers beyond the mailbox (RFC 3501 §9:
// seq-number is 1 to the number of messages); UIDs may name anything.
func (v *view) checkSeq(numSet imap.NumSet) error {
	set, ok := numSet.(imap.SeqSet)
	if !ok {
		return nil
	}
	n := uint32(len(v.uids))
	for _, r := range set {
		if r.Start > n || r.Stop > n {
			return &imap.Error{Type: imap.StatusResponseTypeBad, Text: "invalid message sequence number"}
		}
	}
	return nil
}

var errReadOnly = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCode("READ-ONLY"), Text: "mailbox is read-only (EXAMINE)"}

func (s *session) Store(w *imapserver.FetchWriter, numSet imap.NumSet, flags *imap.StoreFlags, options *imap.StoreOptions) error {
	v := s.sel
	if v.readOnly {
		return errReadOnly
	}
	if err := v.checkSeq(numSet); err != nil {
		return err
	}
	uids := v.resolve(numSet)
	if len(uids) == 0 {
		return nil
	}
	fl := make([]string, len(flags.Flags))
	for i, f := range flags.Flags {
		fl[i] = string(f)
	}
	op := map[imap.StoreFlagsOp]mailbox.FlagOp{
		imap.StoreFlagsSet: mailbox.FlagsReplace, imap.StoreFlagsAdd: mailbox.FlagsAdd, imap.StoreFlagsDel: mailbox.FlagsRemove,
	}[flags.Op]
	changes, err := s.srv.boxes.SetFlags(s.user, v.name, uids, op, fl, s)
	if err != nil {
		return imapError(err)
	}
	// Even for .SILENT: a new keyword is in use in the mailbox now.
	if err := announceKeywords(v, changes, func(c mailbox.FlagChange) []string { return c.Flags }); err != nil {
		return serverError(err)
	}
	if flags.Silent {
		return nil
	}
	_, byUID := numSet.(imap.UIDSet)
	for _, c := range changes {
		seq := v.seqOf(c.UID)
		if seq == 0 {
			continue
		}
		rw := w.CreateMessage(seq)
		if byUID {
			rw.WriteUID(imap.UID(c.UID))
		}
		rw.WriteFlags(v.flags(mailbox.Message{UID: c.UID, Flags: c.Flags}))
		if err := rw.Close(); err != nil {
			return serverError(err)
		}
	}
	return nil
}

func (s *session) Expunge(w *imapserver.ExpungeWriter, uids *imap.UIDSet) error {
	v := s.sel
	if v.readOnly {
		// CLOSE on an EXAMINEd mailbox must not expunge (RFC 3501
		// §6.4.2); the library calls Expunge for it all the same.
		return nil
	}
	var only []uint32
	if uids != nil {
		only = v.resolve(*uids)
		if len(only) == 0 {
			return nil
		}
	}
	gone, err := s.srv.boxes.Expunge(s.user, v.name, only, s)
	if err != nil {
		return imapError(err)
	}
	for _, seq := range v.removeUIDs(gone) {
		if err := w.WriteExpunge(seq); err != nil {
			return serverError(err)
		}
	}
	return nil
}

func (s *session) Copy(numSet imap.NumSet, dest string) (*imap.CopyData, error) {
	res, err := s.copy(numSet, dest, false)
	if err != nil {
		return nil, err
	}
	return copyData(res), nil
}

func copyData(res *mailbox.CopyResult) *imap.CopyData {
	d := &imap.CopyData{UIDValidity: res.UIDValidity}
	for i := range res.SrcUIDs {
		d.SourceUIDs.AddNum(imap.UID(res.SrcUIDs[i]))
		d.DestUIDs.AddNum(imap.UID(res.DstUIDs[i]))
	}
	return d
}

func (s *session) copy(numSet imap.NumSet, dest string, move bool) (*mailbox.CopyResult, error) {
	v := s.sel
	if move && v.readOnly {
		return nil, errReadOnly
	}
	if err := v.checkSeq(numSet); err != nil {
		return nil, err
	}
	if _, err := s.srv.boxes.GetMailbox(s.user, dest); err != nil {
		if errorsIsNoMailbox(err) {
			return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTryCreate, Text: "no such mailbox"}
		}
		return nil, imapError(err)
	}
	uids := v.resolve(numSet)
	if len(uids) == 0 {
		return &mailbox.CopyResult{}, nil
	}
	res, err := s.srv.boxes.Copy(s.user, v.name, dest, uids, move, s)
	if err != nil {
		return nil, imapError(err)
	}
	return res, nil
}

func (s *session) Move(w *imapserver.MoveWriter, numSet imap.NumSet, dest string) error {
	res, err := s.copy(numSet, dest, true)
	if err != nil {
		return err
	}
	if len(res.SrcUIDs) > 0 {
		if err := w.WriteCopyData(copyData(res)); err != nil {
			return serverError(err)
		}
	}
	v := s.sel
	for _, seq := range v.removeUIDs(res.SrcUIDs) {
		if err := w.WriteExpunge(seq); err != nil {
			return serverError(err)
		}
	}
	return nil
}

func errorsIsNoMailbox(err error) bool { return errors.Is(err, mailbox.ErrNoMailbox) }
