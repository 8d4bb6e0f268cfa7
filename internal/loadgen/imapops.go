package loadgen

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// The IMAP operations of the load mix.
const (
	OpSelect        = "select"         // SELECT INBOX
	OpFetchHeaders  = "fetch-headers"  // FETCH of BODY.PEEK[HEADER] on a random range of 20
	OpFetchBody     = "fetch-body"     // FETCH of BODY.PEEK[] of a random message
	OpSearchSubject = "search-subject" // SEARCH SUBJECT topic
	OpSearchBody    = "search-body"    // SEARCH BODY marker
	OpSearchUnseen  = "search-unseen"  // SEARCH UNSEEN
	OpStore         = "store"          // STORE +FLAGS or -FLAGS (\Flagged) on a random message
	OpAppend        = "append"         // APPEND of a small message
	OpExpunge       = "expunge"        // UID STORE \Deleted and UID EXPUNGE of the message just appended
)

// allOps are the operations a mix may name; expunge follows append.
var allOps = []string{OpSelect, OpFetchHeaders, OpFetchBody, OpSearchSubject, OpSearchBody, OpSearchUnseen, OpStore, OpAppend}

// DefaultOpMix is the operation mix of relay-bench imap.
const DefaultOpMix = "select:5,fetch-headers:25,fetch-body:25,search-subject:5,search-body:5,search-unseen:5,store:20,append:10"

// headerRange is how many messages a FETCH of headers asks for.
const headerRange = 20

// OpMix is a weighted set of IMAP operations.
type OpMix struct {
	ops     []string
	weights []int
	total   int
}

// ParseOpMix parses "select:5,fetch-body:25,...": operation names with
// relative weights.
func ParseOpMix(s string) (OpMix, error) {
	var m OpMix
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, w, _ := strings.Cut(part, ":")
		if !isOp(name) {
			return OpMix{}, fmt.Errorf("op mix %q: unknown operation %q (want one of %s)", s, name, strings.Join(allOps, ", "))
		}
		weight, err := strconv.Atoi(w)
		if err != nil || weight < 0 {
			return OpMix{}, fmt.Errorf("op mix %q: weight of %s is not a whole number >= 0", s, name)
		}
		m.ops = append(m.ops, name)
		m.weights = append(m.weights, weight)
		m.total += weight
	}
	if m.total == 0 {
		return OpMix{}, fmt.Errorf("op mix %q: no operation with a weight above 0", s)
	}
	return m, nil
}

func isOp(name string) bool {
	for _, o := range allOps {
		if o == name {
			return true
		}
	}
	return false
}

// Pick returns an operation chosen at random by weight.
func (m OpMix) Pick(r *rand.Rand) string {
	n := r.IntN(m.total)
	for i, w := range m.weights {
		if n < w {
			return m.ops[i]
		}
		n -= w
	}
	return m.ops[len(m.ops)-1]
}

// imapClient is one load client: a logged-in connection with INBOX
// selected.
type imapClient struct {
	c       *imapclient.Client
	rnd     *rand.Rand
	gen     *Generator
	login   string
	margin  uint32 // messages at the end of the mailbox to stay clear of
	flagged bool   // whether the next STORE removes \Flagged
	seq     int64
}

// op runs one operation other than append and expunge.
func (ic *imapClient) op(name string) error {
	switch name {
	case OpSelect:
		_, err := ic.c.Select("INBOX", nil).Wait()
		return err
	case OpFetchHeaders:
		return ic.fetch(ic.randomRange(headerRange), &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, Peek: true})
	case OpFetchBody:
		return ic.fetch(ic.randomRange(1), &imap.FetchItemBodySection{Peek: true})
	case OpSearchSubject:
		topic := Topics[ic.rnd.IntN(len(Topics))]
		return ic.search(&imap.SearchCriteria{Header: []imap.SearchCriteriaHeaderField{{Key: "Subject", Value: topic}}})
	case OpSearchBody:
		return ic.search(&imap.SearchCriteria{Body: []string{Markers[ic.rnd.IntN(len(Markers))]}})
	case OpSearchUnseen:
		return ic.search(&imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagSeen}})
	case OpStore:
		return ic.store()
	}
	return fmt.Errorf("operation %q is not run by op", name)
}

// randomRange returns a range of up to n messages at a random place in the
// mailbox, or nil when the mailbox is empty.
func (ic *imapClient) randomRange(n uint32) imap.SeqSet {
	mb := ic.c.Mailbox()
	if mb == nil {
		return nil
	}
	count := mb.NumMessages
	if count > ic.margin+n {
		count -= ic.margin
	}
	if count == 0 {
		return nil
	}
	if n > count {
		n = count
	}
	lo := 1 + uint32(ic.rnd.IntN(int(count-n+1)))
	var set imap.SeqSet
	set.AddRange(lo, lo+n-1)
	return set
}

func (ic *imapClient) fetch(set imap.SeqSet, section *imap.FetchItemBodySection) error {
	if set == nil {
		return nil
	}
	_, err := ic.c.Fetch(set, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	return err
}

func (ic *imapClient) search(c *imap.SearchCriteria) error {
	_, err := ic.c.Search(c, nil).Wait()
	return err
}

// store sets \Flagged on a random message, or clears it, in turn.
func (ic *imapClient) store() error {
	set := ic.randomRange(1)
	if set == nil {
		return nil
	}
	op := imap.StoreFlagsAdd
	if ic.flagged {
		op = imap.StoreFlagsDel
	}
	ic.flagged = !ic.flagged
	return ic.c.Store(set, &imap.StoreFlags{Op: op, Silent: true, Flags: []imap.Flag{imap.FlagFlagged}}, nil).Close()
}

// appendMsg appends a small message and returns its UID (0 when the server
// does not say, without UIDPLUS).
func (ic *imapClient) appendMsg() (imap.UID, error) {
	ic.seq++
	m := ic.gen.Message(ic.rnd, ic.seq, "bench@relay-bench.test", []string{ic.login}).Bytes()
	cmd := ic.c.Append("INBOX", int64(len(m)), nil)
	if _, err := cmd.Write(m); err != nil {
		cmd.Close()
		return 0, fmt.Errorf("APPEND: %w", err)
	}
	if err := cmd.Close(); err != nil {
		return 0, fmt.Errorf("APPEND: %w", err)
	}
	data, err := cmd.Wait()
	if err != nil {
		return 0, err
	}
	return data.UID, nil
}

// expunge removes the message with uid: UID STORE +FLAGS (\Deleted), then
// UID EXPUNGE (RFC 4315), so that other messages marked \Deleted stay.
func (ic *imapClient) expunge(uid imap.UID) error {
	set := imap.UIDSetNum(uid)
	if err := ic.c.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		return err
	}
	return ic.c.UIDExpunge(set).Close()
}
