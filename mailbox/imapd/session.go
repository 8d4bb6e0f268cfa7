package imapd

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"

	"github.com/relaymail/relay/internal/store"
	"github.com/relaymail/relay/internal/throttle"
	"github.com/relaymail/relay/mailbox"
)

// session is one IMAP connection: authenticated state here, selected state
// in view.
type session struct {
	srv   *Server
	conn  *imapserver.Conn
	guard *guardConn // nil only for connections not made by Serve
	addr  netip.Addr
	ip    string

	user string
	sub  *mailbox.Subscription
	sel  *view
}

var (
	_ imapserver.SessionIMAP4rev2   = (*session)(nil)
	_ imapserver.SessionAppendLimit = (*session)(nil)
)

// imapError maps store errors to tagged NO responses with the RFC 5530
// response code a client can act on.
func imapError(err error) error {
	var code imap.ResponseCode
	switch {
	case err == nil:
		return nil
	case errors.Is(err, mailbox.ErrNoMailbox):
		code = imap.ResponseCodeNonExistent
	case errors.Is(err, mailbox.ErrMailboxExist):
		code = imap.ResponseCodeAlreadyExists
	case errors.Is(err, mailbox.ErrNotAllowed):
		code = imap.ResponseCodeCannot
	case errors.Is(err, store.ErrNoSpace):
		// The store's disk is full: the same reply as below
		// min-free-space.
		return errNoStorage
	case store.Temporary(err):
		// RFC 5530 UNAVAILABLE: the store is down, full or busy;
		// the same command may work later.
		return errUnavailable
	default:
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeServerBug, Text: "internal error, try again later"}
	}
	return &imap.Error{Type: imap.StatusResponseTypeNo, Code: code, Text: safeText(err.Error())}
}

// errUnavailable answers a command the store cannot serve now.
var errUnavailable = &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeUnavailable,
	Text: "the mail store is not available now, try again later"}

// serverError makes err an IMAP status: a store error through imapError,
// and a failed write to the client the same way (it reaches nobody then).
// Whatever fails in the session reaches imapserver as an *imap.Error, so
// that its own generic reply stays the sign of an argument it could not
// decode (see the guard's clientFault).
func serverError(err error) error {
	var ie *imap.Error
	if err == nil || errors.As(err, &ie) {
		return err
	}
	return imapError(err)
}

// safeText makes a reply text one line of printable characters: store
// errors name mailboxes, and a name sent as a literal may hold CR, LF or
// other controls, which imapserver writes as they are (RFC 9051 §4: text
// has no CR or LF).
func safeText(s string) string {
	const max = 300
	b := []byte(s)
	for i, c := range b {
		if c < ' ' || c == 0x7f {
			b[i] = ' '
		}
	}
	if len(b) > max {
		b = append(b[:max], "..."...)
	}
	return strings.ToValidUTF8(string(b), "?")
}

// maxNameLen bounds a mailbox name (bytes, in modified UTF-7 as sent).
const maxNameLen = 1024

// checkName refuses mailbox names with control characters, which RFC 9051
// §5.1 excludes, and overlong ones.
func checkName(name string) error {
	if len(name) > maxNameLen {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "mailbox name too long"}
	}
	if strings.IndexFunc(name, func(r rune) bool { return r < ' ' || r == 0x7f }) >= 0 {
		return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeCannot, Text: "control character in mailbox name"}
	}
	return nil
}

func (s *session) Close() error {
	if s.sub != nil {
		s.sub.Close()
	}
	return nil
}

// errLoginBlocked is the answer while the client's address or the account
// is blocked after too many failures (RFC 5530 UNAVAILABLE: try again
// later). It is the same for every user name, known or not, and comes
// before the password is looked at, so it tells a guesser nothing.
var errLoginBlocked = &imap.Error{
	Type: imap.StatusResponseTypeNo,
	Code: imap.ResponseCodeUnavailable,
	Text: "too many failed logins, try again later",
}

// Login checks the password. Failures are throttled per client address and
// per account with growing delays, and after the throttle's limit refused
// outright for a while; the reply never says which part was wrong
// (AUTHENTICATIONFAILED either way, RFC 5530).
func (s *session) Login(username, password string) error {
	t := s.srv.cfg.Throttle
	keys := []string{throttle.IPKey(s.addr), "user:" + mailbox.NormalizeUser(username)}
	if t != nil {
		if blocked, retry := t.Blocked(keys...); blocked {
			s.srv.cfg.Log.Warn("imap login refused", "client", s.ip, "user", username, "retry_after", retry.Round(time.Second))
			s.srv.cfg.Metrics.AuthFailure("imap")
			return errLoginBlocked
		}
	}
	user, err := s.srv.authenticate(username, password)
	if err != nil && !errors.Is(err, mailbox.ErrAuth) {
		// The store could not be asked: not the client's fault, and
		// no failure counted against it.
		s.srv.cfg.Log.Error("imap login: account lookup failed", "client", s.ip, "user", username, "error", err)
		return errUnavailable
	}
	if err != nil {
		s.srv.cfg.Log.Warn("imap login failed", "client", s.ip, "user", username)
		s.srv.cfg.Metrics.AuthFailure("imap")
		if t != nil {
			t.Fail(context.Background(), keys...)
		}
		return imapserver.ErrAuthFailed
	}
	// Only the account is forgiven: a guesser holding one valid account
	// must not be able to reset its address's count with it.
	if t != nil {
		t.Succeed("user:" + user)
	}
	if s.guard != nil {
		s.guard.authenticated.Store(true)
	}
	s.user = user
	s.sub = s.srv.boxes.Subscribe(user)
	s.srv.cfg.Log.Info("imap login", "client", s.ip, "user", user)
	return nil
}

func (s *session) AppendLimit() uint32 { return s.srv.cfg.AppendLimit }

func (s *session) Namespace() (*imap.NamespaceData, error) {
	return &imap.NamespaceData{Personal: []imap.NamespaceDescriptor{{Prefix: "", Delim: mailbox.Delimiter}}}, nil
}

// Select answers SELECT and EXAMINE (RFC 3501 §6.3.1-2, RFC 9051
// §6.3.2-3). imapserver sends RECENT and OK [UNSEEN n] to IMAP4rev1
// sessions only; IMAP4rev2 has neither.
func (s *session) Select(name string, options *imap.SelectOptions) (*imap.SelectData, error) {
	s.Unselect()
	v, err := openView(s, name, options.ReadOnly)
	if err != nil {
		return nil, imapError(err)
	}
	s.sel = v
	return &imap.SelectData{
		Flags:             v.flagList(),
		PermanentFlags:    v.permanentFlags(),
		NumMessages:       uint32(len(v.uids)),
		NumRecent:         uint32(len(v.recent)),
		FirstUnseenSeqNum: v.firstUnseen,
		UIDNext:           imap.UID(v.uidNext),
		UIDValidity:       v.uidValidity,
	}, nil
}

func (s *session) Unselect() error {
	s.sel = nil
	return nil
}

func (s *session) Create(name string, options *imap.CreateOptions) error {
	name = strings.TrimSuffix(name, string(mailbox.Delimiter))
	if name == "" {
		return imapError(mailbox.ErrNotAllowed)
	}
	if err := checkName(name); err != nil {
		return err
	}
	var use string
	if options != nil && len(options.SpecialUse) > 0 {
		use = string(options.SpecialUse[0])
		if !slices.Contains(specialUses, imap.MailboxAttr(use)) {
			// RFC 6154 §3: an unknown attribute is refused with USEATTR.
			return &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCode("USEATTR"), Text: "unsupported special-use attribute"}
		}
	}
	// RFC 3501 §6.3.3: create the superior names a new name needs.
	parts := strings.Split(name, string(mailbox.Delimiter))
	for i := 1; i < len(parts); i++ {
		parent := strings.Join(parts[:i], string(mailbox.Delimiter))
		if _, err := s.srv.boxes.CreateMailbox(s.user, parent, ""); err != nil && !errors.Is(err, mailbox.ErrMailboxExist) {
			return imapError(err)
		}
	}
	_, err := s.srv.boxes.CreateMailbox(s.user, name, use)
	return imapError(err)
}

var specialUses = []imap.MailboxAttr{imap.MailboxAttrAll, imap.MailboxAttrArchive, imap.MailboxAttrDrafts,
	imap.MailboxAttrFlagged, imap.MailboxAttrJunk, imap.MailboxAttrSent, imap.MailboxAttrTrash}

func (s *session) Delete(name string) error {
	return imapError(s.srv.boxes.DeleteMailbox(s.user, name))
}

func (s *session) Rename(old, new string, _ *imap.RenameOptions) error {
	if err := checkName(new); err != nil {
		return err
	}
	return imapError(s.srv.boxes.RenameMailbox(s.user, old, new))
}

func (s *session) Subscribe(name string) error {
	return imapError(s.srv.boxes.SetSubscribed(s.user, name, true))
}

func (s *session) Unsubscribe(name string) error {
	return imapError(s.srv.boxes.SetSubscribed(s.user, name, false))
}

// List answers LIST and LSUB, with the LIST-EXTENDED selection and return
// options (RFC 5258), special-use attributes and LIST-STATUS.
func (s *session) List(w *imapserver.ListWriter, ref string, patterns []string, options *imap.ListOptions) error {
	if len(patterns) == 0 {
		// RFC 3501 §6.3.8: an empty pattern asks for the delimiter.
		return serverError(w.WriteList(&imap.ListData{Attrs: []imap.MailboxAttr{imap.MailboxAttrNoSelect}, Delim: mailbox.Delimiter}))
	}
	mbs, err := s.srv.boxes.Mailboxes(s.user)
	if err != nil {
		return imapError(err)
	}
	byName := map[string]*mailbox.Mailbox{}
	var names []string
	for _, mb := range mbs {
		byName[mb.Name] = mb
		names = append(names, mb.Name)
	}
	// Parents that do not exist themselves still show, as \Noselect.
	for _, mb := range mbs {
		parts := strings.Split(mb.Name, string(mailbox.Delimiter))
		for i := 1; i < len(parts); i++ {
			p := strings.Join(parts[:i], string(mailbox.Delimiter))
			if !slices.Contains(names, p) {
				names = append(names, p)
			}
		}
	}
	slices.Sort(names)
	hasChildren := func(name string) bool {
		prefix := name + string(mailbox.Delimiter)
		for _, n := range names {
			if strings.HasPrefix(n, prefix) {
				return true
			}
		}
		return false
	}
	for _, name := range names {
		if !slices.ContainsFunc(patterns, func(p string) bool {
			return imapserver.MatchList(name, mailbox.Delimiter, ref, p)
		}) {
			continue
		}
		mb := byName[name]
		if options.SelectSubscribed && (mb == nil || !mb.Subscribed) {
			continue
		}
		if options.SelectSpecialUse && (mb == nil || mb.SpecialUse == "") {
			continue
		}
		data := &imap.ListData{Delim: mailbox.Delimiter, Mailbox: name}
		if mb == nil {
			data.Attrs = append(data.Attrs, imap.MailboxAttrNoSelect)
		} else if mb.SpecialUse != "" {
			data.Attrs = append(data.Attrs, imap.MailboxAttr(mb.SpecialUse))
		}
		if hasChildren(name) {
			data.Attrs = append(data.Attrs, imap.MailboxAttrHasChildren)
		} else {
			data.Attrs = append(data.Attrs, imap.MailboxAttrHasNoChildren)
		}
		if mb != nil && mb.Subscribed && (options.ReturnSubscribed || options.SelectSubscribed) {
			data.Attrs = append(data.Attrs, imap.MailboxAttrSubscribed)
		}
		if mb != nil && options.ReturnStatus != nil {
			st, err := s.status(mb, options.ReturnStatus)
			if err != nil {
				return imapError(err)
			}
			data.Status = st
		}
		if err := w.WriteList(data); err != nil {
			return serverError(err)
		}
	}
	return nil
}

func (s *session) Status(name string, options *imap.StatusOptions) (*imap.StatusData, error) {
	mb, err := s.srv.boxes.GetMailbox(s.user, name)
	if err != nil {
		return nil, imapError(err)
	}
	st, err := s.status(mb, options)
	return st, imapError(err)
}

// status answers from the counters kept on the mailbox record; only
// DELETED and RECENT look at messages, and RECENT only at the newest.
func (s *session) status(mb *mailbox.Mailbox, o *imap.StatusOptions) (*imap.StatusData, error) {
	st := &imap.StatusData{Mailbox: mb.Name}
	if o.NumMessages {
		st.NumMessages = ptr(mb.Messages)
	}
	if o.UIDNext {
		st.UIDNext = imap.UID(mb.UIDNext)
	}
	if o.UIDValidity {
		st.UIDValidity = mb.UIDValidity
	}
	if o.NumUnseen {
		st.NumUnseen = ptr(mb.Unseen)
	}
	if o.Size {
		st.Size = ptr(mb.Size)
	}
	if o.AppendLimit {
		st.AppendLimit = ptr(s.srv.cfg.AppendLimit)
	}
	if o.NumRecent {
		uids, err := s.srv.boxes.UIDsAfter(mb.ID, max(mb.FirstRecent, 1)-1)
		if err != nil {
			return nil, err
		}
		st.NumRecent = ptr(uint32(len(uids)))
	}
	if o.NumDeleted {
		var n uint32
		err := s.srv.boxes.ForEachMessage(mb.ID, func(m mailbox.Message) error {
			if slices.Contains(m.Flags, string(imap.FlagDeleted)) {
				n++
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		st.NumDeleted = ptr(n)
	}
	return st, nil
}

func ptr[T any](v T) *T { return &v }

func (s *session) Append(name string, r imap.LiteralReader, options *imap.AppendOptions) (*imap.AppendData, error) {
	if r.Size() > int64(s.srv.cfg.AppendLimit) {
		return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTooBig, Text: "message exceeds APPENDLIMIT"}
	}
	if err := s.srv.cfg.Space.Check(); err != nil {
		return nil, s.noSpace(err)
	}
	if _, err := s.srv.boxes.GetMailbox(s.user, name); err != nil {
		if errors.Is(err, mailbox.ErrNoMailbox) {
			// RFC 3501 §6.3.11: TRYCREATE tells the client to CREATE first.
			return nil, &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeTryCreate, Text: "no such mailbox"}
		}
		return nil, imapError(err)
	}
	date := options.Time
	if date.IsZero() {
		date = time.Now()
	}
	var flags []string
	for _, f := range options.Flags {
		// \Recent is the server's to give (RFC 3501 §2.3.2).
		if !strings.EqualFold(string(f), `\Recent`) {
			flags = append(flags, string(f))
		}
	}
	uv, uid, err := s.srv.boxes.Append(s.user, name, io.LimitReader(r, int64(s.srv.cfg.AppendLimit)), date, flags)
	if err != nil {
		return nil, imapError(err)
	}
	return &imap.AppendData{UID: imap.UID(uid), UIDValidity: uv}, nil
}

func (s *session) Poll(w *imapserver.UpdateWriter, allowExpunge bool) error {
	if s.sel == nil {
		return nil
	}
	select {
	case <-s.sub.C:
		return serverError(s.sel.sync(w, allowExpunge, true))
	default:
		return serverError(s.sel.sync(w, allowExpunge, false))
	}
}

// Idle waits for changes and reports them at once (RFC 2177).
func (s *session) Idle(w *imapserver.UpdateWriter, stop <-chan struct{}) error {
	if s.sel == nil {
		<-stop
		return nil
	}
	for {
		select {
		case <-stop:
			return nil
		case <-s.sub.C:
			if err := s.sel.sync(w, true, true); err != nil {
				return serverError(err)
			}
		}
	}
}
