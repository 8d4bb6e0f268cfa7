package imapd_test

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/relaymail/relay/mailbox/imapd"
)

// respNum finds the first response matching re (one number group) and
// returns the number, or -1.
func respNum(resps []string, re string) int64 {
	rx := regexp.MustCompile(re)
	for _, r := range resps {
		if m := rx.FindStringSubmatch(r); m != nil {
			n, _ := strconv.ParseInt(m[1], 10, 64)
			return n
		}
	}
	return -1
}

func hasResp(resps []string, want string) bool { return slices.Contains(resps, want) }

var listRE = regexp.MustCompile(`^\* (LIST|LSUB) \(([^)]*)\) (NIL|"[^"]*") (.*)$`)

// parseList maps mailbox names of LIST or LSUB responses to their
// attributes.
func parseList(t *testing.T, resps []string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, r := range resps {
		m := listRE.FindStringSubmatch(r)
		if m == nil {
			continue
		}
		if m[3] != `"/"` {
			t.Errorf("%q: delimiter %s, want \"/\"", r, m[3])
		}
		name, _ := strconv.Unquote(m[4])
		if name == "" {
			name = m[4]
		}
		out[name] = strings.Fields(m[2])
	}
	return out
}

func names(m map[string][]string) []string { return slices.Sorted(maps.Keys(m)) }

// RFC 3501 §6.3.1, RFC 9051 §6.3.2: SELECT and EXAMINE answers; \Recent as
// Dovecot has it (each new message is recent in exactly one session);
// UIDVALIDITY survives a restart.
func TestSelectExamine(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendSamples(t)

	a := rawLogin(t, ts.addr)
	u, st := a.run("SELECT INBOX")
	if !strings.HasPrefix(st, "OK [READ-WRITE]") {
		t.Fatalf("SELECT: %q, want OK [READ-WRITE]", st)
	}
	for _, want := range []string{"* 4 EXISTS", "* 4 RECENT", `* FLAGS (\Seen \Answered \Flagged \Deleted \Draft)`} {
		if !hasResp(u, want) {
			t.Errorf("SELECT lacks %q: %q", want, u)
		}
	}
	if n := respNum(u, `^\* OK \[UIDNEXT (\d+)\]`); n != 5 {
		t.Errorf("UIDNEXT %d, want 5", n)
	}
	if perm := find(u, "PERMANENTFLAGS"); len(perm) != 1 || !strings.Contains(perm[0], `\*`) || !strings.Contains(perm[0], `\Deleted`) {
		t.Errorf("PERMANENTFLAGS %q, want the system flags and \\*", perm)
	}
	uv := respNum(u, `^\* OK \[UIDVALIDITY (\d+)\]`)
	if uv <= 0 {
		t.Fatalf("no UIDVALIDITY in %q", u)
	}
	if got := find(a.ok("FETCH 1:* (FLAGS)"), `\Recent`); len(got) != 4 {
		t.Errorf("first session: %d messages \\Recent, want 4", len(got))
	}

	b := rawLogin(t, ts.addr)
	u = b.ok("SELECT INBOX")
	if !hasResp(u, "* 0 RECENT") || !hasResp(u, "* 4 EXISTS") {
		t.Errorf("second session SELECT %q: want 4 EXISTS, 0 RECENT", u)
	}
	if got := find(b.ok("FETCH 1:* (FLAGS)"), `\Recent`); len(got) != 0 {
		t.Errorf("second session sees \\Recent: %q", got)
	}
	if uv2 := respNum(u, `^\* OK \[UIDVALIDITY (\d+)\]`); uv2 != uv {
		t.Errorf("UIDVALIDITY %d in the second session, %d in the first", uv2, uv)
	}

	// EXAMINE closes the selected mailbox (RFC 7162 §3.2.11 CLOSED, sent
	// by the library) and opens read-only.
	u, st = b.run("EXAMINE INBOX")
	if !strings.HasPrefix(st, "OK [READ-ONLY]") {
		t.Errorf("EXAMINE: %q, want OK [READ-ONLY]", st)
	}
	if !hasResp(u, "* 4 EXISTS") || respNum(u, `^\* OK \[UIDVALIDITY (\d+)\]`) != uv {
		t.Errorf("EXAMINE %q: want 4 EXISTS and UIDVALIDITY %d", u, uv)
	}

	// A new message is recent in the session that sees it first.
	ts.deliver(t, sample(t, "plain.eml"))
	u = a.ok("NOOP")
	if !hasResp(u, "* 5 EXISTS") || !hasResp(u, "* 5 RECENT") {
		t.Errorf("NOOP after delivery in the first session %q: want 5 EXISTS, 5 RECENT", u)
	}
	if u := b.ok("NOOP"); !hasResp(u, "* 5 EXISTS") {
		t.Errorf("NOOP after delivery in the examining session %q: want 5 EXISTS", u)
	}

	// Restart: same UIDVALIDITY and UIDNEXT, nothing recent any more.
	ts.restart()
	c := rawLogin(t, ts.addr)
	u = c.ok("SELECT INBOX")
	if got := respNum(u, `^\* OK \[UIDVALIDITY (\d+)\]`); got != uv {
		t.Errorf("UIDVALIDITY after restart %d, want %d", got, uv)
	}
	if n := respNum(u, `^\* OK \[UIDNEXT (\d+)\]`); n != 6 {
		t.Errorf("UIDNEXT after restart %d, want 6", n)
	}
	if !hasResp(u, "* 5 EXISTS") || !hasResp(u, "* 0 RECENT") {
		t.Errorf("SELECT after restart %q: want 5 EXISTS, 0 RECENT", u)
	}
}

// RFC 3501 §6.3.1: a failed SELECT leaves no mailbox selected.
func TestSelectNonexistent(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendSamples(t)
	rc := rawLogin(t, ts.addr)
	rc.ok("SELECT INBOX")
	if _, st := rc.run("SELECT Nope"); !strings.HasPrefix(st, "NO [NONEXISTENT]") {
		t.Errorf("SELECT Nope: %q, want NO [NONEXISTENT]", st)
	}
	if _, st := rc.run("FETCH 1 (FLAGS)"); !strings.HasPrefix(st, "BAD") && !strings.HasPrefix(st, "NO") {
		t.Errorf("FETCH after a failed SELECT: %q, want BAD (no mailbox selected)", st)
	}
	// INBOX is case-insensitive (RFC 3501 §5.1).
	if u := rc.ok("SELECT inbox"); !hasResp(u, "* 4 EXISTS") {
		t.Errorf("SELECT inbox: %q", u)
	}
}

// RFC 3501 §6.3.8-9, RFC 5258 (LIST-EXTENDED), RFC 6154 (SPECIAL-USE),
// RFC 5819 (LIST-STATUS), RFC 3348 (CHILDREN).
func TestListAndLsub(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendSamples(t)
	rc := rawLogin(t, ts.addr)

	l := parseList(t, rc.ok(`LIST "" "*"`))
	want := map[string]string{"INBOX": "", "Sent": `\Sent`, "Drafts": `\Drafts`, "Trash": `\Trash`, "Junk": `\Junk`, "Archive": `\Archive`}
	if got := names(l); !slices.Equal(got, slices.Sorted(maps.Keys(want))) {
		t.Fatalf("LIST * names %q", got)
	}
	for name, use := range want {
		if use != "" && !slices.Contains(l[name], use) {
			t.Errorf("LIST %s attrs %q lack %s", name, l[name], use)
		}
		if !slices.Contains(l[name], `\HasNoChildren`) {
			t.Errorf("LIST %s attrs %q lack \\HasNoChildren", name, l[name])
		}
	}

	rc.ok("CREATE a/b")
	l = parseList(t, rc.ok(`LIST "" "*"`))
	if !slices.Contains(l["a"], `\HasChildren`) || slices.Contains(l["a"], `\Noselect`) {
		t.Errorf("LIST a after CREATE a/b: %q, want \\HasChildren (a was created too)", l["a"])
	}
	if !slices.Contains(l["a/b"], `\HasNoChildren`) {
		t.Errorf("LIST a/b: %q, want \\HasNoChildren", l["a/b"])
	}
	if got := names(parseList(t, rc.ok(`LIST "" "%"`))); slices.Contains(got, "a/b") || !slices.Contains(got, "a") {
		t.Errorf(`LIST "" "%%": %q, want a but not a/b`, got)
	}
	if got := names(parseList(t, rc.ok(`LIST "a/" "%"`))); !slices.Equal(got, []string{"a/b"}) {
		t.Errorf(`LIST "a/" "%%": %q, want [a/b]`, got)
	}

	// RFC 3501 §6.3.8: an empty pattern returns the delimiter and root.
	if u := rc.ok(`LIST "" ""`); !slices.Equal(u, []string{`* LIST (\Noselect) "/" ""`}) {
		t.Errorf(`LIST "" "": %q, want * LIST (\Noselect) "/" ""`, u)
	}

	// RFC 6154 §2: the SPECIAL-USE selection option.
	if got := names(parseList(t, rc.ok(`LIST (SPECIAL-USE) "" "*"`))); !slices.Equal(got, []string{"Archive", "Drafts", "Junk", "Sent", "Trash"}) {
		t.Errorf("LIST (SPECIAL-USE): %q", got)
	}

	// RFC 5819: STATUS after each LIST line.
	u := rc.ok(`LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN))`)
	for _, want := range []string{`* STATUS INBOX (MESSAGES 4 UNSEEN 4)`, `* STATUS "Sent" (MESSAGES 0 UNSEEN 0)`, `* STATUS "a/b" (MESSAGES 0 UNSEEN 0)`} {
		if !hasResp(u, want) {
			t.Errorf("LIST RETURN (STATUS) lacks %q: %q", want, u)
		}
	}
	if len(parseList(t, u)) != 8 {
		t.Errorf("LIST RETURN (STATUS): %d LIST lines, want 8: %q", len(parseList(t, u)), u)
	}

	// Subscriptions: LSUB and LIST (SUBSCRIBED) follow SUBSCRIBE and
	// UNSUBSCRIBE.
	rc.ok("UNSUBSCRIBE Junk")
	lsub := parseList(t, rc.ok(`LSUB "" "*"`))
	if _, ok := lsub["Junk"]; ok {
		t.Errorf("LSUB after UNSUBSCRIBE Junk: %q", names(lsub))
	}
	if _, ok := lsub["INBOX"]; !ok {
		t.Errorf("LSUB lacks INBOX: %q", names(lsub))
	}
	sub := parseList(t, rc.ok(`LIST (SUBSCRIBED) "" "*"`))
	if _, ok := sub["Junk"]; ok {
		t.Errorf("LIST (SUBSCRIBED) after UNSUBSCRIBE Junk: %q", names(sub))
	}
	if !slices.Contains(sub["Sent"], `\Subscribed`) {
		t.Errorf("LIST (SUBSCRIBED) Sent: %q, want \\Subscribed", sub["Sent"])
	}
	if _, ok := parseList(t, rc.ok(`LIST "" "*"`))["Junk"]; !ok {
		t.Errorf("LIST * lost Junk after UNSUBSCRIBE")
	}
	rc.ok("SUBSCRIBE Junk")
	if _, ok := parseList(t, rc.ok(`LSUB "" "*"`))["Junk"]; !ok {
		t.Errorf("LSUB after SUBSCRIBE Junk lacks it")
	}
	if _, st := rc.run("UNSUBSCRIBE Nope"); !strings.HasPrefix(st, "NO") && !strings.HasPrefix(st, "OK") {
		t.Errorf("UNSUBSCRIBE Nope: %q", st)
	}
}

// RFC 3501 §6.3.10, RFC 8438 (STATUS=SIZE), RFC 9051 §6.3.11 (DELETED).
func TestStatus(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	bodies := ts.appendSamples(t)
	var size int64
	for _, b := range bodies {
		size += int64(len(b))
	}
	c := ts.login(t, nil)
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	opts := &imap.StatusOptions{NumMessages: true, UIDNext: true, UIDValidity: true, NumUnseen: true, Size: true, NumDeleted: true}
	st, err := c.Status("INBOX", opts).Wait()
	if err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	if *st.NumMessages != 4 || st.UIDNext != 5 || st.UIDValidity != sel.UIDValidity || *st.NumUnseen != 4 || *st.Size != size || *st.NumDeleted != 0 {
		t.Errorf("STATUS INBOX = messages %d uidnext %d uidvalidity %d unseen %d size %d deleted %d; want 4 5 %d 4 %d 0",
			*st.NumMessages, st.UIDNext, st.UIDValidity, *st.NumUnseen, *st.Size, *st.NumDeleted, sel.UIDValidity, size)
	}
	if _, err := c.Store(imap.SeqSetNum(1), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagSeen}, Silent: true}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Store(imap.SeqSetNum(2), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Collect(); err != nil {
		t.Fatal(err)
	}
	st, err = c.Status("INBOX", opts).Wait()
	if err != nil {
		t.Fatal(err)
	}
	if *st.NumUnseen != 3 || *st.NumDeleted != 1 || *st.NumMessages != 4 {
		t.Errorf("STATUS after STORE: unseen %d deleted %d messages %d, want 3 1 4", *st.NumUnseen, *st.NumDeleted, *st.NumMessages)
	}
	st, err = c.Status("Sent", opts).Wait()
	if err != nil || *st.NumMessages != 0 || *st.Size != 0 || st.UIDNext != 1 {
		t.Errorf("STATUS Sent: %+v, %v", st, err)
	}
	if _, err := c.Status("Nope", opts).Wait(); imapCode(err) != imap.ResponseCodeNonExistent {
		t.Errorf("STATUS Nope: %v, want NO [NONEXISTENT]", err)
	}
}

// RFC 3501 §6.3.3-5: CREATE makes superiors, RENAME takes children along,
// renaming INBOX moves its messages, INBOX cannot be deleted.
func TestCreateDeleteRename(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendSamples(t)
	rc := rawLogin(t, ts.addr)
	status := func(name string) string {
		t.Helper()
		u, st := rc.run("STATUS " + name + " (MESSAGES UIDNEXT)")
		if !strings.HasPrefix(st, "OK") {
			return st
		}
		return strings.Join(u, "|")
	}
	expectNo := func(cmd, code string) {
		t.Helper()
		if _, st := rc.run(cmd); !strings.HasPrefix(st, "NO "+code) {
			t.Errorf("%s: %q, want NO %s", cmd, st, code)
		}
	}

	rc.ok("CREATE Projects/2024/Q1")
	l := parseList(t, rc.ok(`LIST "" "Projects*"`))
	if got := names(l); !slices.Equal(got, []string{"Projects", "Projects/2024", "Projects/2024/Q1"}) {
		t.Fatalf("after CREATE Projects/2024/Q1: %q", got)
	}
	for name, attrs := range l {
		if slices.Contains(attrs, `\Noselect`) {
			t.Errorf("%s is \\Noselect; CREATE should make superiors real mailboxes", name)
		}
	}
	expectNo("CREATE Projects", "[ALREADYEXISTS]")
	expectNo("CREATE INBOX", "[ALREADYEXISTS]")
	expectNo("CREATE inbox", "[ALREADYEXISTS]")

	if _, st := rc.appendLit("Projects/2024", "", sample(t, "plain.eml")); !strings.HasPrefix(st, "OK") {
		t.Fatalf("APPEND: %q", st)
	}
	rc.ok("RENAME Projects Work")
	if got := names(parseList(t, rc.ok(`LIST "" "*"`))); slices.ContainsFunc(got, func(n string) bool { return strings.HasPrefix(n, "Projects") }) ||
		!slices.Contains(got, "Work/2024/Q1") || !slices.Contains(got, "Work/2024") {
		t.Errorf("after RENAME Projects Work: %q", got)
	}
	if got := status("Work/2024"); got != `* STATUS "Work/2024" (MESSAGES 1 UIDNEXT 2)` {
		t.Errorf("STATUS Work/2024 after rename: %q, want the message along", got)
	}
	expectNo("RENAME Work Sent", "[ALREADYEXISTS]")
	expectNo("RENAME Nope Other", "[NONEXISTENT]")

	// RFC 3501 §6.3.5: renaming INBOX moves its messages to the new name
	// and leaves INBOX empty; UIDNEXT of INBOX does not go back.
	rc.ok("RENAME INBOX Old")
	if got := status("Old"); got != `* STATUS "Old" (MESSAGES 4 UIDNEXT 5)` {
		t.Errorf("STATUS Old: %q", got)
	}
	if got := status("INBOX"); got != "* STATUS INBOX (MESSAGES 0 UIDNEXT 5)" {
		t.Errorf("STATUS INBOX after RENAME INBOX: %q, want empty with UIDNEXT 5", got)
	}
	if u := rc.ok("SELECT INBOX"); !hasResp(u, "* 0 EXISTS") {
		t.Errorf("SELECT INBOX after RENAME INBOX: %q", u)
	}
	rc.ok("UNSELECT")

	expectNo("DELETE INBOX", "")
	expectNo("DELETE Nope", "[NONEXISTENT]")
	rc.ok("DELETE Work/2024/Q1")
	if _, ok := parseList(t, rc.ok(`LIST "" "*"`))["Work/2024/Q1"]; ok {
		t.Errorf("Work/2024/Q1 still listed after DELETE")
	}
	// RFC 3501 §6.3.4: deleting a mailbox with inferiors keeps the
	// inferiors; the name stays as \Noselect.
	rc.ok("DELETE Work")
	l = parseList(t, rc.ok(`LIST "" "Work*"`))
	if !slices.Contains(l["Work"], `\Noselect`) || l["Work/2024"] == nil {
		t.Errorf("after DELETE Work: %v, want Work \\Noselect and Work/2024 kept", l)
	}
	if got := status("Work/2024"); !strings.Contains(got, "MESSAGES 1") {
		t.Errorf("STATUS Work/2024 after DELETE Work: %q", got)
	}

	// A deleted and re-created mailbox gets a new UIDVALIDITY.
	u := rc.ok("STATUS Archive (UIDVALIDITY)")
	rc.ok("DELETE Archive")
	rc.ok("CREATE Archive")
	if u2 := rc.ok("STATUS Archive (UIDVALIDITY)"); slices.Equal(u, u2) {
		t.Errorf("UIDVALIDITY of a re-created mailbox unchanged: %q", u2)
	}
}

// RFC 6154 §3: CREATE-SPECIAL-USE; an unknown use is refused with USEATTR.
func TestCreateSpecialUse(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	rc := rawLogin(t, ts.addr)
	rc.ok(`CREATE Receipts (USE (\Archive))`)
	if l := parseList(t, rc.ok(`LIST "" "Receipts"`)); !slices.Contains(l["Receipts"], `\Archive`) {
		t.Errorf("LIST Receipts: %q, want \\Archive", l["Receipts"])
	}
	_, st := rc.run(`CREATE Odd (USE (\Bogus))`)
	if !strings.HasPrefix(st, "NO [USEATTR]") {
		t.Errorf(`CREATE Odd (USE (\Bogus)) answers %q, want NO [USEATTR]`, st)
	}
	if l := parseList(t, rc.ok(`LIST "" "Odd"`)); len(l) != 0 {
		t.Errorf("the refused CREATE Odd made %v", names(l))
	}
}

func TestNamespaceAndEnable(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendSamples(t)

	c := ts.login(t, nil)
	ns, err := c.Namespace().Wait()
	if err != nil {
		t.Fatalf("NAMESPACE: %v", err)
	}
	if len(ns.Personal) != 1 || ns.Personal[0].Prefix != "" || ns.Personal[0].Delim != '/' || ns.Other != nil || ns.Shared != nil {
		t.Errorf("NAMESPACE %+v, want ((\"\" \"/\")) NIL NIL", ns)
	}

	rc := rawLogin(t, ts.addr)
	if u := rc.ok("NAMESPACE"); !hasResp(u, `* NAMESPACE (("" "/")) NIL NIL`) {
		t.Errorf("NAMESPACE: %q", u)
	}
	if u := rc.ok("ENABLE IMAP4rev2"); !hasResp(u, "* ENABLED IMAP4rev2") {
		t.Errorf("ENABLE IMAP4rev2: %q", u)
	}
	// RFC 9051: no RECENT response, SEARCH answers with ESEARCH.
	u := rc.ok("SELECT INBOX")
	if len(find(u, "RECENT")) != 0 {
		t.Errorf("SELECT after ENABLE IMAP4rev2 sends RECENT: %q", u)
	}
	rc.n++
	tag := fmt.Sprintf("T%d", rc.n)
	rc.send(tag + " SEARCH ALL")
	u, st := rc.wait(tag)
	if !strings.HasPrefix(st, "OK") || !hasResp(u, `* ESEARCH (TAG "`+tag+`") ALL 1:4`) {
		t.Errorf("SEARCH ALL under IMAP4rev2: %q %q, want ESEARCH ALL 1:4", u, st)
	}
	// RFC 9051 §2.3.2 lists no \Recent flag; IMAP4rev2 clients never see it.
	if got := find(rc.ok("FETCH 1:* (FLAGS)"), `\Recent`); len(got) != 0 {
		t.Errorf(`after ENABLE IMAP4rev2, FETCH FLAGS carries \Recent: %q`, got)
	}
}

// A mailbox name or LIST pattern that is not modified UTF-7 (RFC 3501
// §5.1.3), or not even UTF-8, is the client's error: BAD [CLIENTBUG] with
// a text that says so, in every command that takes one, never the
// SERVERBUG that imapserver answers when it cannot decode an argument;
// and nothing is created. The same for a sequence set or a date that
// does not parse.
func TestInvalidMailboxNames(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendSamples(t)
	rc := rawLogin(t, ts.addr)
	rc.ok("SELECT INBOX")
	before := names(parseList(t, rc.ok(`LIST "" "*"`)))
	var cmds []string
	for _, name := range []string{
		`"&"`,                 // shift never ended
		`"a&Jjo"`,             // no "-" after the base64
		`"&AGE-"`,             // ASCII "a" in base64
		`"&2D0-"`,             // a lone surrogate
		"{2+}\r\n\xff\xfe",    // not UTF-8
		"{5+}\r\nEntw\xfcrfe", // Latin-1, as a careless client sends it
	} {
		for _, cmd := range []string{
			"CREATE %s", "SELECT %s", "EXAMINE %s", "RENAME Junk %s", "RENAME %s Other",
			"STATUS %s (MESSAGES)", "DELETE %s", "SUBSCRIBE %s", "UNSUBSCRIBE %s",
			"APPEND %s {1+}\r\nx", `LIST "" %s`, `LSUB "" %s`, `LIST %s "*"`, "COPY 1 %s", "MOVE 1 %s",
		} {
			cmds = append(cmds, strings.Replace(cmd, "%s", name, 1))
		}
	}
	cmds = append(cmds, "FETCH 1:x (FLAGS)", "UID STORE 1:a +FLAGS (x)", "SEARCH SINCE 32-Jan-2020",
		`APPEND INBOX "99-Xyz-2020 00:00:00 +0000" {1+}`+"\r\nx")
	for _, cmd := range cmds {
		u, st := rc.run(cmd)
		if !strings.HasPrefix(st, "BAD [CLIENTBUG] invalid argument") && !strings.HasPrefix(st, "NO [CANNOT]") || len(u) != 0 {
			t.Errorf("%q: %q %q, want BAD [CLIENTBUG] invalid argument (or NO [CANNOT]) alone", cmd, u, st)
		}
		rc.ok("NOOP") // ten BADs in a row would end the session
	}
	rc.ok("SELECT INBOX") // COPY and MOVE ran in INBOX
	if after := names(parseList(t, rc.ok(`LIST "" "*"`))); !slices.Equal(after, before) {
		t.Errorf("mailboxes after the refused commands: %q, before %q", after, before)
	}
	if n := respNum(rc.ok("STATUS INBOX (MESSAGES)"), `MESSAGES (\d+)`); n != 4 {
		t.Errorf("INBOX holds %d messages after the refused commands, want 4", n)
	}
}

// A real server fault still answers NO [SERVERBUG], with the server's
// own text: here the database is gone under the session.
func TestServerFaultStaysServerBug(t *testing.T) {
	t.Parallel()
	ts := startServer(t, imapd.Config{})
	ts.appendSamples(t)
	rc := rawLogin(t, ts.addr)
	rc.ok("SELECT INBOX")
	if err := ts.db.Close(); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"STATUS INBOX (MESSAGES)", "FETCH 1 (BODY.PEEK[])", `LIST "" "*"`, "SEARCH TEXT x"} {
		if _, st := rc.run(cmd); st != "NO [SERVERBUG] internal error, try again later" {
			t.Errorf("%s with the database closed: %q, want NO [SERVERBUG] internal error, try again later", cmd, st)
		}
	}
}
